"""The toolkit's own processes: a quick start (optional imports that cost seconds are skipped), a quick end (no
teardown of loaded modules), and forks that cannot hang on the parent's garbage.

jsonschema, which nbformat, papermill and Pweave import, loads `rfc3987_syntax` when it is installed (jupyter-events
pulls it in) to check the `iri` string format; building its grammar takes about 1.3 s at every import, a third of a
short stage's run. Notebooks never pass through `trim_imports`: a kernel, and a user's own process, import as usual.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager

SKIPPED = ("rfc3987_syntax",)  # optional to every importer; the formats they check are not in any schema we validate


def trim_imports() -> None:
    "Make the optional imports in SKIPPED fail fast (ImportError), before anything imports jsonschema."
    if "jsonschema" in sys.modules:
        return  # too late to change what it found; and not ours to undo
    for name in SKIPPED:
        sys.modules.setdefault(name, None)


def quick_exit(code: int = 0, last=None) -> None:
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
    if last is not None:  # e.g. a warm kernel tells its launcher it has ended, now that nothing is left to write
        last()
    os._exit(code)


@contextmanager
def forking_safely():
    """Processes forked inside this block never collect the objects this one holds now, garbage included. A
    collection in a child runs destructors of the parent's garbage there, and one that joins a thread the child does
    not have (a Ray client's, say) waits for ever: a search variant hung in `Module.__init__` that way, forked from a
    process that had used Ray. The parent collects as before once the block ends."""
    import gc

    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
