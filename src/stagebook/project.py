"""Where the project is and what it holds: the root, the stage notebooks and the `[tool.stagebook]` settings."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import StagebookError
from .protocol import ROOT_VAR

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

STAGE_NAME = re.compile(r"^(\d\d)_[A-Za-z0-9_]+$")
DEFAULTS = {"experiment": "stagebook", "sealed_test_stage": "06_sealed_test",
            "tracking_uri": "sqlite:///mlflow.db", "artifact_root": "mlartifacts",
            "splits_file": "data/splits.csv", "model_file": "models/model.pth"}


ENV_OVERRIDES = {"tracking_uri": "STAGEBOOK_TRACKING_URI", "artifact_root": "STAGEBOOK_ARTIFACT_ROOT"}


# Records the pipeline keeps beside the split manifest (paths derive from `splits_file`); commit them with the project.
DATA_RECORDS = {"split_policy": "split_policy.json", "seal": "test.seal.json", "ledger": "test_ledger.jsonl",
                "test_results": "test_results", "submission": "submission.json"}


def data_record(root: Path, name: str) -> Path:
    "Where the data record `name` (a key of DATA_RECORDS) lives in this project."
    return root / Path(settings(root)["splits_file"]).parent / DATA_RECORDS[name]


ANSWERS_FILE = ".copier-answers.yml"  # written by `stagebook new`: the template source and version a project came from


def template_version(root: Path) -> str:
    "The template version this project was rendered from; for the template itself, its own `git describe`."
    answers = root / ANSWERS_FILE
    if answers.is_file():
        import yaml
        return str((yaml.safe_load(answers.read_text(encoding="utf-8")) or {}).get("_commit", "unknown"))
    from .lineage import git
    described = git(root, "describe", "--tags", "--always")
    return f"template@{described}" if described else "unknown"


def find_root(start: Path | str | None = None) -> Path:
    "The nearest folder, from `start` (or $STAGEBOOK_ROOT, or cwd) upwards, whose pyproject.toml has [tool.stagebook]."
    here = Path(start or os.environ.get(ROOT_VAR) or Path.cwd()).resolve()
    for folder in [here, *here.parents]:
        cfg = folder / "pyproject.toml"
        if cfg.is_file() and "[tool.stagebook]" in cfg.read_text(encoding="utf-8"):
            return folder
    raise StagebookError(f"{here}: not inside a stagebook project (no pyproject.toml with a [tool.stagebook] table above it);"
                         " cd into the project or set STAGEBOOK_ROOT.")


def settings(root: Path) -> dict:
    "`[tool.stagebook]` from the project's pyproject.toml over the defaults, and the environment's overrides over both."
    # The Colab set-up cell moves the tracking store to Drive through these, and a sweep on several machines points
    # at a tracking server (STAGEBOOK_TRACKING_URI): read at every call, so a change during a process takes effect.
    overrides = {key: os.environ[var] for key, var in ENV_OVERRIDES.items() if os.environ.get(var)}
    return {**DEFAULTS, **_file_settings(root), **overrides}


@lru_cache(maxsize=None)
def _file_settings(root: Path) -> dict:
    cfg = root / "pyproject.toml"
    try:
        table = tomllib.loads(cfg.read_text(encoding="utf-8")).get("tool", {}).get("stagebook", {})
    except tomllib.TOMLDecodeError as err:
        raise StagebookError(f"{cfg}: not valid TOML ({err}); fix the syntax.") from None
    unknown = sorted(set(table) - set(DEFAULTS))
    if unknown:
        raise StagebookError(f"{cfg}: unknown key(s) {unknown} in [tool.stagebook]; known keys are {sorted(DEFAULTS)}.")
    return table


@dataclass(frozen=True)
class Stage:
    "One numbered stage: its notebook and its params file."
    name: str
    root: Path

    @property
    def notebook(self) -> Path: return self.root / "nbs" / f"{self.name}.ipynb"

    @property
    def params_file(self) -> Path: return self.root / "params" / f"{self.name}.yaml"

    @property
    def executed_notebook(self) -> Path: return self.root / "reports" / "executed" / f"{self.name}.ipynb"

    @property
    def artifacts_dir(self) -> Path: return self.root / "reports" / self.name

    @property
    def metrics_file(self) -> Path: return self.root / "metrics" / f"{self.name}.json"

    @property
    def headline_file(self) -> Path: return self.root / "metrics" / "headline" / f"{self.name}.json"

    @property
    def lineage_file(self) -> Path: return self.root / "lineage" / f"{self.name}.json"

    @property
    def report_template(self) -> Path: return self.root / "reports" / "templates" / f"{self.name}.texw"

    @property
    def report_pdf(self) -> Path: return self.root / "reports" / f"{self.name}.pdf"


def stages(root: Path) -> list[Stage]:
    "The project's stages, in order: every `nbs/NN_name.ipynb`."
    return [Stage(p.stem, root) for p in sorted((root / "nbs").glob("*.ipynb")) if STAGE_NAME.match(p.stem)]


def stages_before_test(root: Path) -> list[str]:
    "Every stage before the sealed-test stage, in order: what may run before the team decides to take the test."
    sealed = settings(root)["sealed_test_stage"]
    return [s.name for s in stages(root) if s.name < sealed]


def resolve_stage(root: Path, ref: str) -> Stage:
    "A stage from `04`, `04_tuning` or `nbs/04_tuning.ipynb`."
    key = Path(ref).stem
    found = [s for s in stages(root) if s.name == key or s.name.split("_", 1)[0] == key]
    if len(found) != 1:
        names = ", ".join(s.name for s in stages(root)) or "none"
        raise StagebookError(f"{root / 'nbs'}: no stage notebook matches '{ref}'; stages are: {names}.")
    return found[0]
