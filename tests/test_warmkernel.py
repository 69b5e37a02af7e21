"""Warm kernels: forked from a server with the libraries imported, yet each one a fresh, separate kernel."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import add_stage, wait_for_warm_kernels

from stagebook import warmkernel
from stagebook.errors import StagebookError
from stagebook.execute import run_stage

PROBE = ("import json, os, random, sys\n"
         "from stagebook import stage\n"
         "ctx = stage.init(0)\n"
         "parent = open(f'/proc/{os.getppid()}/cmdline').read().replace(chr(0), ' ')\n"
         "import numpy\n"
         "seen = getattr(numpy, '_stagebook_mark', None)\n"
         "numpy._stagebook_mark = tag  # a later kernel must not see this\n"
         "draw = random.Random().random() + random.random()\n"
         "json.dump({'parent': parent, 'seen': seen, 'draw': draw, 'argv': sys.argv, 'cwd': os.getcwd(),\n"
         "           'var': os.environ.get('STAGEBOOK_PROBE_VAR'), 'jpy': os.environ.get('JPY_PARENT_PID')},\n"
         "          open(f'probe-{tag}.json', 'w'))",
         "import matplotlib.pyplot as plt\nfig, ax = plt.subplots(); ax.plot([1, 2]); fig")


def _probe(root: Path, tag: str, monkeypatch) -> dict:
    monkeypatch.setenv("STAGEBOOK_PROBE_VAR", f"value-{tag}")  # a STAGEBOOK_ variable: not part of the key
    run_stage("01", overrides=[f"tag={tag}"], root=root, track=False)
    return json.loads((root / f"probe-{tag}.json").read_text())


def _figures_are_images(root: Path) -> bool:
    nb = json.loads((root / "reports" / "executed" / "01_probe.ipynb").read_text())
    return any("image/png" in out.get("data", {}) for cell in nb["cells"] for out in cell.get("outputs", []))


def test_kernels_fork_from_the_server_yet_are_fresh_and_separate(project: Path, monkeypatch):
    monkeypatch.delenv(warmkernel.ENABLE_VAR, raising=False)
    root = add_stage(project, "01_probe", "tag: a\n", "tag = 'a'", *PROBE)
    first = _probe(root, "a", monkeypatch)  # starts the server, unless another test has (its kernel starts cold)
    wait_for_warm_kernels(root)
    second, third = _probe(root, "b", monkeypatch), _probe(root, "c", monkeypatch)
    for found, tag in ((second, "b"), (third, "c")):
        assert "stagebook.warmkernel" in found["parent"]  # forked by the server
        assert found["seen"] is None  # nothing one kernel did to a preloaded module reaches the next
        assert found["argv"][0].endswith("stagebook/kernel.py") and "-f" in found["argv"]
        assert Path(found["cwd"]) == root.resolve() and found["var"] == f"value-{tag}"
    assert len({first["draw"], second["draw"], third["draw"]}) == 3  # each kernel draws afresh
    assert _figures_are_images(root)  # matplotlib's inline backend is hooked up in a forked kernel too


def test_turned_off_every_kernel_starts_cold(project: Path, monkeypatch):
    monkeypatch.setenv(warmkernel.ENABLE_VAR, "0")
    # a variable of the key's own, so a server that another test module runs (same environment) is not this one's
    monkeypatch.setenv("WARMKERNEL_TEST_OWN_KEY", str(project))
    root = add_stage(project, "01_probe", "tag: a\n", "tag = 'a'", *PROBE)
    _probe(root, "a", monkeypatch)
    time.sleep(1)
    assert "stagebook.warmkernel" not in _probe(root, "b", monkeypatch)["parent"]
    assert not warmkernel.socket_path({**os.environ, "STAGEBOOK_PROBE_VAR": "x"}, str(root)).exists()


def test_a_kernel_that_times_out_is_gone_with_its_launcher(project: Path, monkeypatch):
    monkeypatch.delenv(warmkernel.ENABLE_VAR, raising=False)
    root = add_stage(project, "01_slow", "nap: 0\n", "nap = 0",
                     "import os, time\nfrom stagebook import stage\nctx = stage.init(0)\n"
                     "open(f'kernel-{nap}.pid', 'w').write(str(os.getpid()))\n"
                     "open(f'parent-{nap}.txt', 'w').write(open(f'/proc/{os.getppid()}/cmdline').read())\n"
                     "time.sleep(nap)")
    run_stage("01", root=root, track=False)  # starts the server
    wait_for_warm_kernels(root)
    with pytest.raises(StagebookError):
        run_stage("01", overrides=["nap=600"], root=root, track=False, timeout=3)
    pid = int((root / "kernel-600.pid").read_text())
    assert "stagebook.warmkernel" in (root / "parent-600.txt").read_text()
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_key_follows_what_changes_an_import_but_not_what_changes_each_run(tmp_path: Path):
    base = {"PATH": "/usr/bin", "OMP_NUM_THREADS": "1"}
    key = warmkernel.socket_path(base, str(tmp_path))
    assert warmkernel.socket_path({**base, "STAGEBOOK_STAGE": "01", "JPY_PARENT_PID": "7", "PWD": "/x"},
                                  str(tmp_path)) == key
    ray_worker = {"RAY_JOB_ID": "01000000", "RAY_RAYLET_PID": "7", "SPT_NOENV": "1",
                  "PYTHONBREAKPOINT": "ray.util.rpdb.set_trace"}  # what a Ray worker adds (seen with ray 2.x)
    assert warmkernel.socket_path({**base, **ray_worker}, str(tmp_path)) == key
    assert warmkernel.socket_path({**base, "OMP_NUM_THREADS": "2"}, str(tmp_path)) != key
    assert warmkernel.socket_path({**base, "PYTHONPATH": "src", "PYTEST_CURRENT_TEST": "t"}, str(tmp_path)) == key
    other = tmp_path / "other"
    other.mkdir()
    assert warmkernel.socket_path(base, str(other)) == key  # another project, the same libraries
    (other / "matplotlibrc").write_text("lines.linewidth: 3\n")
    assert warmkernel.socket_path(base, str(other)) != key  # matplotlib reads it at import


def test_the_server_stays_while_a_kernel_it_forked_runs(project: Path, monkeypatch):
    monkeypatch.delenv(warmkernel.ENABLE_VAR, raising=False)
    monkeypatch.setenv("WARMKERNEL_TEST_SERVER", "own")  # a server of this test's own (the key includes it) ...
    monkeypatch.setenv(warmkernel.IDLE_VAR, "5")  # ... that would leave after 5 s without a request
    root = add_stage(project, "01_slow", "nap: 0\n", "nap = 0",
                     "import os, time\nfrom stagebook import stage\nctx = stage.init(0)\n"
                     "open(f'parent-{nap}.txt', 'w').write(open(f'/proc/{os.getppid()}/cmdline').read())\n"
                     "time.sleep(nap)\nstage.log_metrics({'slept': nap})")
    run_stage("01", root=root, track=False)
    wait_for_warm_kernels(root)
    result = run_stage("01", overrides=["nap=10"], root=root, track=False)  # IPython's poller would end it if not
    assert "stagebook.warmkernel" in (root / "parent-10.txt").read_text()
    assert result.metrics["slept"] == 10


def test_a_sweeps_variants_fork_from_the_server_it_starts(project: Path, monkeypatch):
    from stagebook.sweep import run_sweep

    monkeypatch.delenv(warmkernel.ENABLE_VAR, raising=False)
    monkeypatch.setenv("WARMKERNEL_TEST_SERVER", "sweep")  # no server of another test's: this sweep starts its own
    root = add_stage(project, "01_slow", "nap: 0\n", "nap = 0",
                     "import os, time\nfrom stagebook import stage\nctx = stage.init(0)\n"
                     "time.sleep(nap)\n"
                     "stage.log_metrics({'warm': float('stagebook.warmkernel' in "
                     "open(f'/proc/{os.getppid()}/cmdline').read())})")
    summary = run_sweep("01", {"nap": [0, 1]}, jobs=1, root=root, out_dir=root / "sweep", track=False,
                        backend="local")
    assert summary["warm"].max() == 1.0  # the second, at least: the server answers between two of its imports


def test_each_kernel_imports_from_its_own_pythonpath(project: Path, monkeypatch):
    "PYTHONPATH is not in the key (projects put their own src/ there): a forked kernel has its own on sys.path."
    monkeypatch.delenv(warmkernel.ENABLE_VAR, raising=False)
    monkeypatch.setenv("WARMKERNEL_TEST_SERVER", "pythonpath")
    for name in ("src_a", "src_b"):
        (project / name).mkdir()
        (project / name / "project_mark.py").write_text(f"VALUE = {name!r}\n")
    root = add_stage(project, "01_which", "tag: a\n", "tag = 'a'",
                     "import json, os, sys\nfrom stagebook import stage\nctx = stage.init(0)\n"
                     "import project_mark\n"
                     "json.dump({'value': project_mark.VALUE, 'path': sys.path,\n"
                     "           'parent': open(f'/proc/{os.getppid()}/cmdline').read()}, open(f'which-{tag}.json', 'w'))")
    monkeypatch.setenv("PYTHONPATH", "src_a")  # relative, as a Makefile would put it: the kernel's folder counts
    run_stage("01", root=root, track=False)  # starts the server with src_a on its own path
    wait_for_warm_kernels(root)
    for tag, folder in (("b", "src_b"), ("a", "src_a")):
        monkeypatch.setenv("PYTHONPATH", folder)
        run_stage("01", overrides=[f"tag={tag}"], root=root, track=False)
        found = json.loads((root / f"which-{tag}.json").read_text())
        assert "stagebook.warmkernel" in found["parent"] and found["value"] == folder
        assert str(root / folder) in found["path"] and str(root / ({"src_a", "src_b"} - {folder}).pop()) not in found["path"]
