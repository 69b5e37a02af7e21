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


def quick_exit(code: int = 0) -> None:
    """End this process without tearing its modules down (with torch and fastai loaded that alone takes about 1.5 s
    on 2 cores): exit handlers run (logging, IPython's history, `atexit` registrations, finalizers), files left open
    in the `__main__` namespace (a notebook's) are flushed as teardown would, then the process ends with `code`."""
    import atexit
    import io
    import os

    atexit._run_exitfuncs()
    namespace = vars(sys.modules["__main__"]) if "__main__" in sys.modules else {}
    for value in list(namespace.values()):
        for item in (value if isinstance(value, (list, tuple, set)) else value.values() if isinstance(value, dict)
                     else (value,)):
            if isinstance(item, io.IOBase) and not item.closed:
                try:
                    item.flush()
                except (OSError, ValueError):
                    pass
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(code)
