"""Run one stage: papermill executes its notebook with its params, the run is tracked, outputs are promoted.

Everything a run writes lands first in `reports/.staging/NN_name/`; only a successful run replaces the stage's
executed notebook, artifacts, metrics file and PDF, so a failure leaves the last good outputs in place.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import lineage as lineage_mod
from . import runlock
from .errors import StagebookError
from .iorw import atomic_write_text, replace_tree
from .params import load_params, params_hash, parse_overrides
from .project import Stage, find_root, resolve_stage
from .startup import trim_imports
from .protocol import (LINEAGE_VAR, OWNER_PID_VAR, PARAMS_VAR, ROOT_VAR, RUN_DIR_VAR, STAGE_VAR, TRACKED_VAR, VARIANT_VAR,
                       Staging)
from .terminal import StageProgress


class StageFailed(StagebookError):
    "The notebook (or its report) failed; the message names the stage, the cell and the error."


@dataclass
class RunResult:
    stage: Stage
    params: dict
    metrics: dict
    lineage: lineage_mod.Lineage
    run_id: str | None
    notices: list[str] = field(default_factory=list)  # `stage.notice` lines, for the terminal


@contextmanager
def _environment(values: dict):
    "Set variables for the kernel papermill starts (it inherits ours), and restore them afterwards."
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def run_stage(ref: str, overrides: list[str] = (), root: Path | None = None, track: bool = True,
              log_output: bool = False, variant_dir: Path | None = None, parent_run_id: str | None = None,
              run_name: str | None = None, timeout: int | None = None) -> RunResult:
    """Execute stage `ref` (`04`, `04_tuning`) with its params file plus `key=value` overrides.

    With `variant_dir` (one variant of a sweep) everything the run writes stays in that folder: no report, and the
    stage's own outputs, metrics and PDF are left alone. `parent_run_id` nests its MLflow run under the sweep's run.
    """
    trim_imports()  # a runner in a sweep's worker does not pass through the CLI
    root = (root or find_root()).resolve()
    stage = resolve_stage(root, ref)
    defaults = load_params(stage.params_file)
    _check_params_match_notebook(stage, defaults)
    overridden = parse_overrides(list(overrides), defaults, stage.params_file)
    params = {**defaults, **overridden}
    check_params(stage, params, set(overridden))  # before a kernel starts: one line naming file, key and value
    data = _data_params(root)  # params/data.yaml, validated too: every stage reads it
    world_size = int(params.get("world_size", 1)) if params.get("trainer") == "ddp" else 1
    lineage = lineage_mod.compute(root, params_hash({**params, **data}), str(params.get("device", "auto")), world_size)

    staging = Path(variant_dir) if variant_dir else root / "reports" / ".staging" / stage.name
    runlock.reap_dead(root)  # runs killed earlier: KILLED in MLflow, their folders removed
    lock = None if variant_dir else runlock.acquire(root, stage.name, staging)  # one run per stage at a time
    try:
        return _run_locked(root, stage, params, lineage, staging, track, log_output, variant_dir, parent_run_id,
                           run_name, data, timeout)
    finally:
        if lock is not None:
            runlock.release(lock)


def _run_locked(root: Path, stage: Stage, params: dict, lineage, staging: Path, track: bool, log_output: bool,
                variant_dir: Path | None, parent_run_id: str | None, run_name: str | None,
                data: dict | None = None, timeout: int | None = None) -> RunResult:
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    layout = Staging(staging)
    executed = layout.notebook(stage.name)

    tracker = None
    if track:
        from .tracking import Tracker
        tracker = Tracker(root, stage.name, {**params, **(data or {})}, lineage, run_name=run_name, run_dir=staging)
        tracker.start_in_background()  # MLflow's start-up runs in its own process, beside the kernel
        threading.Thread(target=_publish_run_id, args=(tracker, staging), daemon=True).start()

    env = {STAGE_VAR: stage.name, RUN_DIR_VAR: str(staging), ROOT_VAR: str(root),
           LINEAGE_VAR: json.dumps(lineage.as_dict()), TRACKED_VAR: "1" if track else "",
           PARAMS_VAR: json.dumps(params, default=str),
           VARIANT_VAR: "1" if variant_dir else "",
           **({} if variant_dir else {OWNER_PID_VAR: str(os.getpid())}),  # variants inherit the stage run's
           "PYDEVD_DISABLE_FILE_VALIDATION": "1"}  # silences a debugger warning every kernel prints
    from . import warmkernel
    if not variant_dir:  # a sweep's variants use the stage run's server; a Ray worker's start cold
        warmkernel.start_in_background({**os.environ, **env}, str(root))  # kernels fork from it once it is up
    watch = StageProgress(stage.name, layout) if not variant_dir and not log_output else nullcontext()
    try:
        with _environment(env), watch:  # at a terminal: the phase and how far along it is, on one line
            _execute(stage, executed, params, root, log_output, timeout)
            metrics = _read_json(layout.metrics)
            lineage = _after_run(root, lineage, layout)  # the data and model this run produced or used
            ended = layout.ended.read_text() if layout.ended.is_file() else None
            notices = layout.notices.read_text(encoding="utf-8").splitlines() if layout.notices.is_file() else []
            if stage.report_template.is_file() and not variant_dir:
                from .report import render_pdf
                layout.progress.write_text("rendering the PDF report", encoding="utf-8")
                context = {"stage": stage.name, "params": params, "metrics": metrics, "lineage": lineage.as_dict(),
                           "artifacts_dir": str(staging), "root": str(root), "ended": ended,
                           "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
                render_pdf(stage.report_template, layout.report_pdf, context, layout.latex)
    except BaseException as err:
        failed = root / "reports" / ".failed" / f"{stage.name}.ipynb"
        if executed.is_file() and not variant_dir:
            failed.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(executed, failed)
        if tracker is not None:
            try:
                tracker.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED",
                               files=[executed if variant_dir else failed], run_dir=staging, parent_run_id=parent_run_id)
            except StagebookError:
                pass  # the stage's own failure is the message that matters
        if isinstance(err, StagebookError) or not isinstance(err, Exception):
            raise
        raise StageFailed(f"stage {stage.name} failed: {type(err).__name__}: {_first_line(err)}") from err

    run_id = tracker.wait_started() if tracker is not None else None  # a broken store stops us before promotion
    if variant_dir:
        if tracker is not None:
            tracker.finish("FINISHED", metrics, files=[executed, layout.metrics],  # outputs: a winner can be fetched
                           folders=[layout.figures, layout.tables, layout.outputs], run_dir=staging,
                           parent_run_id=parent_run_id,
                           tags=_final_tags(lineage, ended))
        return RunResult(stage, params, metrics, lineage, run_id, notices)
    _promote(stage, layout, metrics, lineage, root)
    if tracker is not None:
        tracker.finish("FINISHED", metrics, files=[stage.executed_notebook, stage.metrics_file, stage.headline_file,
                                                   stage.lineage_file, stage.report_pdf],
                       folders=[stage.artifacts_dir / "figures", stage.artifacts_dir / "tables"], run_dir=staging,
                       parent_run_id=parent_run_id, tags=_final_tags(lineage, ended))
    shutil.rmtree(staging, ignore_errors=True)
    return RunResult(stage, params, metrics, lineage, run_id, notices)


def _after_run(root: Path, lineage: lineage_mod.Lineage, layout: Staging) -> lineage_mod.Lineage:
    "The lineage as the run leaves it: the data version on disk now (stage 01 writes it), the model it logged."
    from dataclasses import replace
    model = _read_json(layout.model)
    return replace(lineage, data_version=lineage_mod.data_version(root), model_sha256=model.get("sha256", "none"),
                   model_role=model.get("role", ""))


def _final_tags(lineage: lineage_mod.Lineage, ended: str | None) -> dict[str, str]:
    return {**lineage.as_tags(), **({"stagebook.ended": ended[:5000]} if ended else {})}


def check_params(stage: Stage, params: dict, overridden: set[str] = frozenset()) -> None:
    "The stage's params against its schema (`params/NN_name.schema.yaml`), when it declares one."
    from .schema import load_schema, validate

    schema = load_schema(stage.params_file)
    if schema is not None:
        validate(params, schema, stage.params_file.relative_to(stage.root), overridden)


def _data_params(root: Path) -> dict:
    "The data config as `data.<key>` params for tracking and the params hash; {} for a project without one."
    from .dataconfig import data_file, load_data_config

    if not data_file(root).is_file():
        return {}
    return {f"data.{k}": v for k, v in load_data_config(root).as_dict().items()}


def _publish_run_id(tracker, staging: Path) -> None:
    "Write the run id where the notebook can read it (`stage.run_id()`), once MLflow has created the run."
    try:
        run_id = tracker.wait_started()
    except StagebookError:
        return  # reported by the runner itself
    if staging.is_dir():
        atomic_write_text(Staging(staging).run_id, run_id)


def _check_params_match_notebook(stage: Stage, params: dict) -> None:
    "The params file and the notebook's `parameters` cell must name the same variables: a typo never passes silently."
    import ast

    import nbformat

    if not stage.notebook.is_file():
        raise StagebookError(f"{stage.notebook}: notebook missing; restore it (git checkout -- {stage.notebook}).")
    cells = nbformat.read(stage.notebook, as_version=4).cells
    tagged = _parameters_cells(cells)
    if len(tagged) != 1:
        raise StagebookError(f"{stage.notebook}: needs exactly one cell tagged 'parameters' (found {len(tagged)});"
                             " tag the cell holding the defaults in JupyterLab's property inspector.")
    try:
        tree = ast.parse(cells[tagged[0]].source)
    except SyntaxError as err:
        raise StagebookError(f"{stage.notebook}: the parameters cell is not valid Python (line {err.lineno}).") from None
    names = {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
             for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}
    unknown, absent = sorted(set(params) - names), sorted(names - set(params))
    if unknown:
        raise StagebookError(f"{stage.params_file}: unknown key(s) {unknown}: the notebook's parameters cell defines"
                             f" {sorted(names)}; fix the spelling, or add the variable to the cell.")
    if absent:
        raise StagebookError(f"{stage.params_file}: lacks {absent}, which the notebook's parameters cell defines;"
                             " add them so the run (and DVC) records every parameter.")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"


def _execute(stage: Stage, executed: Path, params: dict, root: Path, log_output: bool, timeout: int | None = None) -> None:
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    try:
        pm.execute_notebook(str(stage.notebook), str(executed), parameters=params, cwd=str(root),
                            progress_bar=False, log_output=log_output, kernel_name="python3", execution_timeout=timeout,
                            kernel_manager_class=_local_kernel_manager())
    except PapermillExecutionError as err:
        from .stage import StageEnded
        ended = Staging(executed.parent).ended
        if err.ename == StageEnded.__name__ and ended.is_file():
            _tidy_ended(executed, ended.read_text())
            return  # `stage.end(reason)`: a success that skips the cells that do not apply
        kept = root / "reports" / ".failed" / f"{stage.name}.ipynb"
        cell = _source_cell_number(stage.notebook, err.cell_index)
        detail = _first_line(err.evalue).rstrip(".") if err.evalue else ""
        if err.ename != StagebookError.__name__:  # a user-facing message needs no class name in front
            detail = f"{err.ename}: {detail}" if detail else err.ename
        raise StageFailed(f"stage {stage.name} failed in cell {cell} of {stage.notebook.relative_to(root)}: {detail};"
                          f" executed notebook kept at {kept.relative_to(root)}") from None


def _tidy_ended(executed: Path, reason: str) -> None:
    "An executed notebook that ended on purpose reads as such: no papermill error banner, no traceback."
    import nbformat

    from .stage import StageEnded
    ended_name = StageEnded.__name__
    book = nbformat.read(executed, as_version=4)
    book.cells = [c for c in book.cells if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]
    for cell in book.cells:
        if any(o.get("output_type") == "error" and o.get("ename") == ended_name for o in cell.get("outputs", [])):
            cell.outputs = [o for o in cell.outputs if o.get("output_type") != "error"] + [
                nbformat.v4.new_output("stream", name="stdout", text=f"stagebook: the stage ends here: {reason}\n")]
    nbformat.write(book, executed)


def _parameters_cells(cells: list) -> list[int]:
    "Indices of the cells tagged `parameters` (papermill's convention)."
    return [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]


def _source_cell_number(notebook: Path, executed_index: int) -> int:
    "1-based position, in the notebook people edit, of a cell papermill reports by its index in the executed copy."
    import nbformat

    tagged = _parameters_cells(nbformat.read(notebook, as_version=4).cells)
    injected_at = tagged[0] + 1 if tagged else 0  # papermill inserts its cell after `parameters`, else first
    return executed_index + (0 if executed_index < injected_at else -1) + 1


def _local_kernel_manager():
    """Kernels on unix sockets (the kernel never listens on TCP, and stops warning that it does so unencrypted),
    started through `stagebook.kernel`, which ends without the interpreter's teardown."""
    from jupyter_client.manager import AsyncKernelManager

    class LocalSocketKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            # Each kernel's sockets in a private folder: with the default prefix in the working directory, kernels
            # started at the same moment (a parallel sweep) raced for the same socket names and hung.
            prefix = Path(tempfile.mkdtemp(prefix=f"{runlock.SOCKET_PREFIX}{os.getpid()}-")) / "k"
            super().__init__(transport="ipc", ip=str(prefix), **kwargs)
            self._socket_dir = prefix.parent

        def format_kernel_cmd(self, extra_arguments=None) -> list[str]:
            # IPython's own launcher becomes ours (`stagebook.kernel`): the same kernel, which ends without teardown
            cmd = super().format_kernel_cmd(extra_arguments)
            return [("stagebook.kernel" if part == "ipykernel_launcher" else part) for part in cmd]

        async def _async_interrupt_kernel(self) -> None:
            # jupyter_client sends SIGINT before every shutdown request; an idle kernel then logs "KeyboardInterrupt
            # caught in kernel" on a successful run. The shutdown request alone stops an idle kernel, and a busy one
            # is still terminated, then killed, after shutdown_wait_time.
            if not self.shutting_down:
                await super()._async_interrupt_kernel()

        async def _async_cleanup_resources(self, restart: bool = False) -> None:
            await super()._async_cleanup_resources(restart)
            if not restart:
                shutil.rmtree(self._socket_dir, ignore_errors=True)

    return LocalSocketKernelManager


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _promote(stage: Stage, layout: Staging, metrics: dict, lineage: lineage_mod.Lineage, root: Path) -> None:
    "Move a successful run's outputs into place; each replacement is whole or not at all."
    staging, outputs = layout.dir, layout.outputs
    if outputs.is_dir():  # files the notebook wrote through `stage.output_path`, e.g. models and checkpoints
        for path in sorted(p for p in outputs.rglob("*") if p.is_file()):
            target = root / path.relative_to(outputs)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    artifacts = staging / "artifacts"
    artifacts.mkdir()
    for folder in (layout.figures, layout.tables):
        if folder.is_dir():
            folder.rename(artifacts / folder.name)
    if (layout.latex / "report.log").is_file():  # kept, so a layout check can read what LaTeX said
        os.replace(layout.latex / "report.log", artifacts / "report.log")
    replace_tree(artifacts, stage.artifacts_dir)
    # Numbers only in metrics/; the few a reader compares first in metrics/headline/ (what `dvc metrics show` and
    # `dvc exp show` tabulate, narrow enough for a 120-column terminal); the run's identity in lineage/.
    atomic_write_text(stage.metrics_file, json.dumps(metrics, indent=2, sort_keys=True, default=str) + "\n")
    stage.headline_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stage.headline_file, json.dumps(_read_json(layout.headline), indent=2, sort_keys=True) + "\n")
    atomic_write_text(stage.lineage_file, json.dumps({"stage": stage.name, **lineage.as_dict()}, indent=2,
                                                     sort_keys=True) + "\n")
    stage.executed_notebook.parent.mkdir(parents=True, exist_ok=True)
    os.replace(layout.notebook(stage.name), stage.executed_notebook)
    if layout.report_pdf.is_file():
        os.replace(layout.report_pdf, stage.report_pdf)
