"""A quick start for the toolkit's own processes (the CLI, the stage runner): skip optional imports that cost seconds.

jsonschema, which nbformat, papermill and Pweave import, loads `rfc3987_syntax` when it is installed (jupyter-events
pulls it in) to check the `iri` string format; building its grammar takes about 1.3 s at every import, a third of a
short stage's run. Notebooks never pass through here: a kernel, and a user's own process, import it as usual.
"""
from __future__ import annotations

import sys

SKIPPED = ("rfc3987_syntax",)  # optional to every importer; the formats they check are not in any schema we validate


def trim_imports() -> None:
    "Make the optional imports in SKIPPED fail fast (ImportError), before anything imports jsonschema."
    if "jsonschema" in sys.modules:
        return  # too late to change what it found; and not ours to undo
    for name in SKIPPED:
        sys.modules.setdefault(name, None)
