"""Helpers the faces share (the CLI, the magics, the server extension): option parsing and
text formatting. Engine-level; nothing here imports a face."""
