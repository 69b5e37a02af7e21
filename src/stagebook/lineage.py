"""Lineage: one record per run (code commit, dirty flag, data version, params hash, versions, model hash).

Computed once by the runner, then carried onto MLflow tags, metrics files, PDFs and predictions.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from . import __version__
from .project import DATA_RECORDS, data_record, settings
from .protocol import LINEAGE_VAR

# Files the pipeline itself rewrites: a run that touched them has not changed the code.
PIPELINE_WRITTEN = ("dvc.lock", "data_doc.md", "metrics", "lineage")
ENV_VAR = LINEAGE_VAR


@dataclass(frozen=True)
class Lineage:
    code_commit: str
    code_dirty: bool
    data_version: str
    params_hash: str
    model_sha256: str  # the model this run produced or used (`stage.log_model`), else "none"
    stagebook_version: str = __version__
    template_version: str = "unknown"
    device: str = "cpu"
    gpu: str = ""
    torch_version: str = ""
    cuda_version: str = ""
    model_role: str = ""  # produced or used
    world_size: int = 1  # processes training together (torch DDP, `trainer: ddp`)

    def as_tags(self) -> dict[str, str]:
        "MLflow tag names and string values."
        return {f"stagebook.{k}": str(v) for k, v in asdict(self).items()}

    def as_dict(self) -> dict:
        return asdict(self)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    "sha256 of a file's bytes, streamed."
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_state(root: Path) -> tuple[str, bool]:
    "HEAD's commit and whether tracked files differ from it (pipeline-written files excepted)."
    commit = git(root, "rev-parse", "HEAD") or "uncommitted"
    records = [data_record(root, name).relative_to(root).as_posix() for name in DATA_RECORDS]
    excludes = [f":(exclude){p}" for p in [*PIPELINE_WRITTEN, *records]]
    status = git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", *excludes)
    return commit, bool(status) if status is not None else True


def data_version(root: Path) -> str:
    "Hash of the split manifest (paths, content hashes, labels, splits): changes whenever the data or its split does."
    splits = root / settings(root)["splits_file"]
    return file_sha256(splits)[:12] if splits.is_file() else "none"


def model_sha256(root: Path) -> str:
    model = root / settings(root)["model_file"]
    return file_sha256(model) if model.is_file() else "none"


def compute(root: Path, params_digest: str, device_spec: str = "auto", world_size: int = 1) -> Lineage:
    from .device import describe
    from .project import template_version

    commit, dirty = code_state(root)
    return Lineage(commit, dirty, data_version(root), params_digest, "none",
                   template_version=template_version(root), world_size=int(world_size), **describe(device_spec))


def current() -> dict:
    "The lineage the runner handed to this kernel, or {} when a person runs the notebook by hand."
    raw = os.environ.get(ENV_VAR)
    return json.loads(raw) if raw else {}
