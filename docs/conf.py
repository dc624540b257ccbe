"""Sphinx configuration of the nbscale documentation (MyST Markdown, pydata-sphinx-theme).

Build: ``python -m sphinx -W --keep-going -b html docs build/docs``.
The build reads nothing from the network: no intersphinx, and theme options that
need no external icons, version switcher or analytics.
"""

from __future__ import annotations

project = "nbscale"
author = "the nbscale authors"
copyright = "the nbscale authors"
release = "0.1.0"

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# headings up to ### get anchors, so pages can link to each other's sections
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

html_theme = "pydata_sphinx_theme"
html_title = "nbscale"
html_theme_options = {
    # nothing fetched at build or view time: no icon links, no switcher, no analytics
    "icon_links": [],
    "navbar_end": ["theme-switcher", "navbar-icon-links"],
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "use_edit_page_button": False,
    "footer_start": ["copyright"],
    "footer_end": [],
}
html_sidebars = {"index": []}
html_show_sourcelink = False
