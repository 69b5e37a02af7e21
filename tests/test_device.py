"""`device: auto|cpu|cuda`: resolution, one-line refusals, and the lineage record (read without importing torch)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from stagebook import StagebookError, device


def test_auto_is_the_cpu_here_and_cpu_is_always_allowed():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert device.resolve("auto").type == expected
    assert device.resolve("cpu").type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_is_one_clear_error():
    with pytest.raises(StagebookError, match=r"params/04_tuning.yaml: device 'cuda' asked for, but torch sees no CUDA GPU"):
        device.resolve("cuda", "params/04_tuning.yaml")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "tpu"])
def test_unknown_devices_are_refused_naming_the_value(bad):
    with pytest.raises(StagebookError, match=f"device '{bad}' is not one of auto, cpu, cuda"):
        device.resolve(bad, "params/04_tuning.yaml")


def test_describe_reads_versions_without_importing_torch():
    code = ("import json, sys; from stagebook.device import describe; d = describe('auto');"
            " print(json.dumps([d, 'torch' in sys.modules]))")
    described, imported = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                    check=True).stdout)
    assert not imported
    assert described["torch_version"] == torch.__version__.split("+")[0]
    assert described["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert described["gpu"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")


def test_describe_cpu_spec_never_reports_a_gpu():
    assert device.describe("cpu")["device"] == "cpu" and device.describe("cpu")["gpu"] == ""


def test_make_deterministic_on_the_cpu_turns_deterministic_algorithms_on():
    before = torch.are_deterministic_algorithms_enabled()
    try:
        device.make_deterministic(torch.device("cpu"))
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)
