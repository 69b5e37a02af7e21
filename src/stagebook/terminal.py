"""What a person at a terminal sees while `stagebook run` works: one line, rewritten in place, saying which phase the
stage is in and how far along it is.

The kernel's output goes into the executed notebook, not to the terminal. So the runner watches the staging folder
instead: the nested runs the notebook opens (`stage.child_run`: "phase 4 regularise", "search v01") and the line it
writes with `stage.progress` (an epoch, variants finished, images audited). Nothing is shown when stderr is not a
terminal (CI, `dvc repro` in a log), so logs stay clean.
"""
from __future__ import annotations

import shutil
import sys
import threading
import time

from .protocol import ChildStaging, Staging


def _read(path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def describe(staging: Staging) -> str:
    "The phase(s) running now and the latest progress line, e.g. 'phase 4 regularise: epoch 7/20'."
    running, last = [], ""
    if staging.children.is_dir():
        for folder in sorted(staging.children.iterdir()):
            child = ChildStaging(folder)
            last = _read(child.name) or last
            if _read(child.status) == "RUNNING":
                running.append(_read(child.name))
    where = ", ".join(running[:2]) + (f" (+{len(running) - 2} more)" if len(running) > 2 else "")
    where = where or (f"after {last}" if last else "")  # between phases
    detail = _read(staging.progress)
    return ": ".join(part for part in (where, detail) if part)


class StageProgress:
    "A background thread that rewrites one terminal line with `describe` twice a second, while a stage runs."

    def __init__(self, stage: str, staging: Staging, stream=None, interval: float = 0.5):
        self.stage, self.staging, self.stream, self.interval = stage, staging, stream or sys.stderr, interval
        self.shown = self.stream.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._started = time.monotonic()

    def __enter__(self) -> "StageProgress":
        if self.shown:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.shown:
            self._stop.set()
            self._thread.join(timeout=2)
            self.stream.write("\r\033[K")  # leave the terminal as it was; the runner prints the outcome
            self.stream.flush()

    def line(self) -> str:
        elapsed = int(time.monotonic() - self._started)
        what = describe(self.staging) or "starting the kernel"
        text = f"stagebook: {self.stage} [{elapsed // 60}:{elapsed % 60:02d}] {what}"
        return text[:max(20, shutil.get_terminal_size((100, 20)).columns - 1)]

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.stream.write("\r\033[K" + self.line())
                self.stream.flush()
            except (OSError, ValueError):
                return
