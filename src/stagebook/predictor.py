"""One predictor for `stagebook predict` and `stagebook serve`: a registered version (the champion, or a number),
its weights verified by sha256 before loading, and every answer carrying the model version, its sha256, the code
commit and the data version. Every prediction is appended to a JSONL log that rotates by size; a broken image is an
answer with its reason, never a crash.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import registry
from .errors import StagebookError

LOG = Path("logs") / "predictions.jsonl"
LOG_MAX_BYTES = 10 * 1024 * 1024  # then predictions.jsonl.1, .2, ... (at most LOG_KEEP)
LOG_KEEP = 5
KEPT_INPUTS = Path("logs") / "inputs"  # `--keep-inputs`: each usable input's bytes, by sha256 (stagebook harvest)


def load_checkpoint(path: Path):
    "The model saved by stage 04 (weights plus meta: arch, classes, image size, width, channels), in eval mode."
    import warnings

    import torch

    from .zoo import build

    saved = torch.load(path, map_location="cpu", weights_only=True)
    meta = saved["meta"]
    with warnings.catch_warnings():  # fastai's first import scripts a function with the deprecated torch.jit
        warnings.simplefilter("ignore", FutureWarning)
        model = build(meta.get("arch", "small_cnn"), len(meta["classes"]), meta.get("channels", 1), meta["width"],
                      meta.get("dropout", 0.0))
    model.load_state_dict(saved["state_dict"])
    return model.eval(), meta


class ImageRefused(StagebookError):
    "An input that is not a usable image: the caller answers with the reason (HTTP 422), and carries on."


def resolve_version(root: Path, version: int | None = None):
    "A registered version by number, or the champion when `version` is None; one line when there is none."
    if version is not None:
        found = next((v for v in registry.versions(root) if int(v.version) == int(version)), None)
        if found is None:
            raise StagebookError(f"model version {version} is not registered for {registry.model_name(root)};"
                                 " `stagebook promote` registers and promotes models after stage 06.")
        return found
    found = registry.by_alias(root, registry.CHAMPION)
    if found is None:
        raise StagebookError(f"{registry.model_name(root)} has no champion yet: submit a model, run stage 06,"
                             " then `stagebook promote`.")
    return found


@dataclass
class Loaded:
    version: object
    model: object
    meta: dict
    infer: object  # pixel batch -> probabilities, in the predictor's runtime
    runtime: str = "torch"

    @property
    def about(self) -> dict:
        return {**registry.describe(self.version), "runtime": self.runtime}


class Predictor:
    """Predictions from a registered version: `version` None follows the champion alias (re-checked at most every
    `refresh` seconds, so a promotion is served without a restart). `runtime` is torch, torchscript or onnx; the last
    two load the version's recorded export (`stagebook export`)."""

    def __init__(self, root: Path, version: int | None = None, refresh: float = 2.0, log: bool = True,
                 runtime: str = "torch", keep_inputs: bool = False):
        from .export import check_runtime

        self.root, self.pinned, self.refresh, self.log = Path(root).resolve(), version, refresh, log
        self.keep_inputs = keep_inputs
        self.runtime = check_runtime(runtime)
        self._loaded: Loaded | None = None
        self._checked = 0.0

    def current(self) -> Loaded:
        now = time.monotonic()
        if self._loaded is not None and (self.pinned is not None or now - self._checked < self.refresh):
            return self._loaded
        self._checked = now
        version = resolve_version(self.root, self.pinned)
        if self._loaded is None or self._loaded.version.version != version.version:
            from .export import exported_file, session

            model, meta = load_checkpoint(registry.weights(self.root, version))
            path = None if self.runtime == "torch" else exported_file(self.root, version, self.runtime)
            self._loaded = Loaded(version, model, meta, session(self.runtime, path, model), self.runtime)
        return self._loaded

    def predict_bytes(self, items: list[tuple[str, bytes]]) -> list[dict]:
        "One answer per (name, bytes): label, probabilities and versions; or `error` with the reason."
        from PIL import Image, UnidentifiedImageError

        from .dataconfig import to_pixels

        loaded = self.current()
        meta, about = loaded.meta, loaded.about
        out, pixels, where = [], [], []
        for name, data in items:
            answer = {"input": name, "input_sha256": hashlib.sha256(data).hexdigest(), **about}
            try:
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
                    pixels.append(to_pixels(img, meta["image_size"], meta.get("channels", 1)))
                    kind = (img.format or "bin").lower()
                where.append(len(out))
                if self.keep_inputs:
                    answer["kept"] = keep_input(self.root, answer["input_sha256"], kind, data)
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                text = str(err).split(" <_io.")[0].strip() or "unreadable"  # PIL names the in-memory buffer
                answer["error"] = f"not a usable image ({type(err).__name__}: {text.splitlines()[0]})"
            out.append(answer)
        if pixels:
            proba = loaded.infer(np.stack(pixels))
            for row, p in zip(where, proba):
                out[row]["label"] = meta["classes"][int(p.argmax())]
                out[row]["confidence"] = float(p.max())
                out[row]["probabilities"] = {c: round(float(v), 6) for c, v in zip(meta["classes"], p)}
        if self.log:
            append_log(self.root / LOG, out)
        return out

    def predict_paths(self, paths: list[Path]) -> list[dict]:
        "Files, or every file in the folders given (sorted)."
        files = []
        for path in map(Path, paths):
            if path.is_dir():
                files += sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            elif path.is_file():
                files.append(path)
            else:
                raise StagebookError(f"{path}: no such file or folder; give image files or folders of them.")
        return self.predict_bytes([(str(p), p.read_bytes()) for p in files])


def keep_input(root: Path, sha256: str, kind: str, data: bytes) -> str:
    "Store an input's bytes once under logs/inputs/ (named by sha256), so its prediction can be harvested later."
    relative = KEPT_INPUTS / f"{sha256}.{kind}"
    path = root / relative
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return relative.as_posix()


def append_log(path: Path, answers: list[dict]) -> None:
    """Append one JSON line per answer with one write on an O_APPEND descriptor, then fsync: a crash leaves at most a
    torn last line, which readers skip. Rotates to `.1` ... when the file passes LOG_MAX_BYTES."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.stat().st_size > LOG_MAX_BYTES:
        for k in range(LOG_KEEP - 1, 0, -1):
            older = path.with_name(f"{path.name}.{k}")
            if older.is_file():
                older.replace(path.with_name(f"{path.name}.{k + 1}"))
        path.replace(path.with_name(f"{path.name}.1"))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    blob = "".join(json.dumps({"time": stamp, **a}, sort_keys=True) + "\n" for a in answers).encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn line from a crash: ours starts on a line of its own
            blob = b"\n" + blob
        os.write(fd, blob)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_log(path: Path) -> list[dict]:
    "The logged predictions; a torn last line (a crash mid-write) is skipped."
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines() if Path(path).is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
