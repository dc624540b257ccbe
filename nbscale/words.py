"""Counts in words, as every face shows them: "1 node", "2 nodes", "1 process".

The panel does the same with JupyterLab's translator (``trans._n``); this is the Python
side for the CLI, the magics and messages. English plurals only: the words nbscale counts
are few, and an irregular one names its plural.
"""

from __future__ import annotations

#: the plurals that are not the word plus "s"
IRREGULAR = {
    "process": "processes",
    "is": "are",
    "was": "were",
    "has": "have",
    "entry": "entries",
    "retry": "retries",
    "this": "these",
}


def plural(word: str, count: int | float) -> str:
    """``word`` as it reads after ``count``: "node" for 1, "nodes" otherwise (also 0)."""
    if count == 1:
        return word
    return IRREGULAR.get(word) or word + "s"


def count(n: int | float, word: str) -> str:
    """``"1 node"``, ``"2 nodes"``, ``"0 GPUs"``, ``"3 processes"``."""
    return f"{n} {plural(word, n)}"
