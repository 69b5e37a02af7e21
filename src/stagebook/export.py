"""Export a registered version for runtimes beyond eager PyTorch: TorchScript and ONNX (run by onnxruntime).

Each export is the model with its softmax, so every runtime answers probabilities. An export is recorded only after
its parity check: on the valid split, the largest absolute difference from the eager model's probabilities must be
at most `PARITY_TOLERANCE`. The file then becomes an artifact of the version's registry run, tagged with its sha256
and parity, so `stagebook predict --runtime onnx` and `stagebook serve --runtime onnx` load verified bytes.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import registry
from .errors import StagebookError
from .lineage import file_sha256

RUNTIMES = ("torch", "torchscript", "onnx")
EXPORTED = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}
PARITY_TOLERANCE = 1e-5
EXPORT_DIR = Path("models") / "export"
ONNX_OPSET = 17


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise StagebookError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}; pick one of those.")
    return runtime


def with_softmax(model):
    "The eager model followed by a softmax over classes: what every export computes."
    import torch
    return torch.nn.Sequential(model, torch.nn.Softmax(dim=1)).eval()


def eager(model) -> Callable[[np.ndarray], np.ndarray]:
    import torch
    net = with_softmax(model)

    def run(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(pixels)).numpy()
    return run


def write_export(model, meta: dict, runtime: str, path: Path) -> Path:
    "Write `model` (with its softmax) as a TorchScript or ONNX file; the batch dimension stays free."
    import torch

    net = with_softmax(model)
    example = torch.zeros(2, meta.get("channels", 1), meta["image_size"], meta["image_size"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # both exporters are marked deprecated in favour of torch.export; both still work
        warnings.simplefilter("ignore")
        if runtime == "torchscript":
            with torch.inference_mode():
                torch.jit.trace(net, example).save(str(path))
        elif runtime == "onnx":
            torch.onnx.export(net, (example,), str(path), input_names=["pixels"], output_names=["probabilities"],
                              dynamic_axes={"pixels": {0: "batch"}, "probabilities": {0: "batch"}},
                              opset_version=ONNX_OPSET, dynamo=False)
        else:
            raise StagebookError(f"runtime {runtime!r} has no export; exports are {', '.join(EXPORTED)}.")
    return path


def session(runtime: str, path: Path | None, model=None) -> Callable[[np.ndarray], np.ndarray]:
    "A function from a pixel batch (float32, N×C×H×W) to probabilities, in the given runtime."
    if runtime == "torch":
        return eager(model)
    if runtime == "torchscript":
        import torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.load(str(path), map_location="cpu").eval()

        def run(pixels: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return scripted(torch.from_numpy(pixels)).numpy()
        return run
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    onnx = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda pixels: onnx.run(None, {"pixels": pixels})[0]


def valid_pixels(root: Path, meta: dict, limit: int | None = None) -> np.ndarray:
    "The valid split's images as the model reads them (the data config's root; the model's size and channels)."
    from PIL import Image

    from .data import load_splits
    from .dataconfig import data_root, to_pixels

    splits = load_splits(root)
    valid = splits[splits.split == "valid"].path.tolist()[:limit]
    if not valid:
        raise StagebookError("data/splits.csv has no valid items to check an export on; run stage 01 first.")
    base = data_root(root)
    pixels = []
    for item in valid:
        with Image.open(base / item) as img:
            img.load()
            pixels.append(to_pixels(img, meta["image_size"], meta.get("channels", 1)))
    return np.stack(pixels)


def parity(reference: Callable, candidate: Callable, pixels: np.ndarray, batch: int = 256) -> float:
    "The largest absolute difference in probability between two runtimes over `pixels`."
    worst = 0.0
    for start in range(0, len(pixels), batch):
        chunk = pixels[start:start + batch]
        worst = max(worst, float(np.abs(reference(chunk) - candidate(chunk)).max()))
    return worst


@dataclass
class Exported:
    runtime: str
    path: Path
    sha256: str
    max_abs_diff: float
    items: int


def export_version(root: Path, version: int | None = None, runtimes: tuple[str, ...] = ("torchscript", "onnx"),
                   tolerance: float = PARITY_TOLERANCE) -> tuple[object, list[Exported]]:
    """Export a registered version (default: the champion) to each runtime, check parity on the valid split, and
    record each file that passes in the registry. An export that misses parity is removed and reported in one line."""
    from .predictor import load_checkpoint, resolve_version

    root = Path(root).resolve()
    found = resolve_version(root, version)
    model, meta = load_checkpoint(registry.weights(root, found))
    reference = eager(model)
    pixels = valid_pixels(root, meta)
    done = []
    for runtime in runtimes:
        if runtime == "torch":
            continue
        path = write_export(model, meta, check_runtime(runtime), root / EXPORT_DIR / f"v{found.version}{EXPORTED[runtime]}")
        diff = parity(reference, session(runtime, path), pixels)
        if not diff <= tolerance:
            path.unlink()
            raise StagebookError(f"the {runtime} export of version {found.version} differs from the model by {diff:.2e}"
                                 f" in probability on the valid split (tolerance {tolerance:.0e}); it was not recorded.")
        sha = file_sha256(path)
        registry.attach(root, found, path, "export")
        registry.tag(root, found, f"{runtime}_sha256", sha)
        registry.tag(root, found, f"{runtime}_parity", f"{diff:.3e} over {len(pixels)} valid items")
        done.append(Exported(runtime, path, sha, diff, len(pixels)))
    return found, done


def exported_file(root: Path, version, runtime: str) -> Path:
    "The version's export for `runtime` on local disk (fetched from the registry if need be), sha256-checked."
    sha = version.tags.get(f"{runtime}_sha256")
    if not sha:
        raise StagebookError(f"version {version.version} has no {runtime} export; run `stagebook export --version"
                             f" {version.version}` first.")
    name = f"v{version.version}{EXPORTED[runtime]}"
    return registry.fetch(root, version, f"export/{name}", root / EXPORT_DIR / name, sha)
