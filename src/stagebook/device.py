"""Where models train and predict: `device: auto|cpu|cuda` in a stage's params, and the determinism that goes with it.

Determinism policy: on the CPU every run is byte-identical (deterministic algorithms, seeded shuffles and
augmentation). On CUDA, deterministic algorithms are asked for with `warn_only`, so an operation torch has no
deterministic kernel for (AdaptiveAvgPool2d's backward, for one) warns instead of failing; cuDNN autotuning is off
and cuBLAS gets a fixed workspace. Same-GPU, same-driver reruns then agree to float tolerance, not to the byte, and
mixed precision (`mixed_precision: true`, CUDA only) changes the numbers against fp32.
"""
from __future__ import annotations

import os
import re
from importlib import metadata, util
from pathlib import Path

from .errors import StagebookError

CHOICES = ("auto", "cpu", "cuda")


def _check(spec: str, source: str) -> str:
    spec = str(spec).lower()
    if spec not in CHOICES and not re.fullmatch(r"cuda:\d+", spec):
        raise StagebookError(f"{source}: device {spec!r} is not one of auto, cpu, cuda, cuda:N; fix `device`.")
    return spec


def resolve(spec: str = "auto", source: str = "params"):
    "The torch.device for `spec`; asking for CUDA where there is none is one clear error, never a silent CPU run."
    import torch

    spec = _check(spec, source)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise StagebookError(f"{source}: device {spec!r} asked for, but torch sees no CUDA GPU"
                             f" (torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); set device: auto or cpu.")
    return torch.device(spec)


def make_deterministic(device) -> None:
    "The policy in this module's docstring, applied before the first CUDA call of the run."
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(True)


def _torch_cuda_build() -> str:
    "The CUDA version torch was built for, read from its version file (importing torch costs seconds)."
    spec = util.find_spec("torch")
    version_file = Path(spec.origin).parent / "version.py" if spec and spec.origin else None
    if not version_file or not version_file.is_file():
        return ""
    found = re.search(r"^cuda\s*(?::\s*[^=]+)?=\s*['\"]([^'\"]+)['\"]", version_file.read_text(), re.M)
    return found.group(1) if found else ""


def gpu_names() -> list[str]:
    "NVIDIA GPUs the driver reports (no torch import); respects CUDA_VISIBLE_DEVICES=\"\" (none)."
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return []
    names = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        model = re.search(r"^Model:\s*(.+)$", info.read_text(errors="replace"), re.M)
        names.append(model.group(1).strip() if model else "NVIDIA GPU")
    return names


def describe(spec: str = "auto") -> dict:
    "For lineage, cheaply: the device a run with `spec` will use, the GPU's name, and the torch and CUDA versions."
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = ""
    cuda = _torch_cuda_build()
    gpus = gpu_names() if cuda else []
    spec = str(spec).lower()
    uses_gpu = bool(gpus) and spec != "cpu"
    return {"device": ("cuda" if spec == "auto" else spec) if uses_gpu else "cpu",
            "gpu": gpus[0] if uses_gpu else "", "torch_version": torch_version, "cuda_version": cuda if uses_gpu else ""}
