"""Fixtures: a minimal stagebook project in a temp folder, with tiny real notebooks (no fake tools)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
os.environ.setdefault("STAGEBOOK_TRACKING_AGENT_IDLE", "15")  # the tracking agent outlives the suite by 15 s at most
os.environ.setdefault("STAGEBOOK_WARM_KERNEL_IDLE", "15")  # so does the warm-kernel server
# Kernels start cold in the suite, except where a test turns warm kernels on (test_warmkernel, test_kernel, and the
# end-to-end modules through `warm_kernels`): a server imports for 7 s of CPU, more than it saves a module that starts
# a few tiny kernels.
os.environ.setdefault("STAGEBOOK_WARM_KERNELS", "0")
# The xdist workers share the cores: each one's torch, faiss and BLAS threads would spin-wait against the other's
# (the end-to-end tests ran 2-3x slower in the suite than alone). One thread per process; processes stay parallel.
for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(key, "1")
for key, value in {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                   "GIT_COMMITTER_EMAIL": "t@t"}.items():
    os.environ.setdefault(key, value)
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"


def write_notebook(path: Path, params: str, *cells: str) -> Path:
    "A notebook with a `parameters` cell and code cells."
    first = new_code_cell(params)
    first.metadata["tags"] = ["parameters"]
    book = new_notebook(cells=[first, *(new_code_cell(c) for c in cells)],
                        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(book, path)
    return path


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def project(tmp_path: Path) -> Path:
    "An empty stagebook project (pyproject with [tool.stagebook], nbs/, params/) under git."
    root = tmp_path / "proj"
    (root / "nbs").mkdir(parents=True)
    (root / "params").mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "demo"\n\n[tool.stagebook]\nexperiment = "demo"\n')
    git(root, "init", "-q")
    return root


def add_stage(project: Path, name: str, params_yaml: str, params: str, *cells: str) -> Path:
    "Commit stage `name` to `project`: its notebook (parameters cell plus code cells) and its params file."
    write_notebook(project / "nbs" / f"{name}.ipynb", params, *cells)
    (project / "params" / f"{name}.yaml").write_text(params_yaml)
    git(project, "add", "-A")
    git(project, "commit", "-qm", name)
    return project


@pytest.fixture
def toy_stage(project: Path) -> Path:
    "Stage 01_toy: logs a metric from its params, a figure and a table."
    return add_stage(project, "01_toy", "scale: 2\nfail: false\n", "scale = 2\nfail = False",
                     "from stagebook import stage\nimport pandas as pd\nimport matplotlib\nmatplotlib.use('Agg')\n"
                     "import matplotlib.pyplot as plt\nctx = stage.init(0)",
                     "assert not fail, 'asked to fail'\nstage.log_metrics({'score': 0.5 * scale, 'count': 3})",
                     "fig, ax = plt.subplots(); ax.plot([1, 2]); stage.log_figure(fig, 'curve')\n"
                     "stage.log_table(pd.DataFrame({'a': [1]}), 'tiny')")


# What a browser's JupyterLab adds to a notebook it opened and ran (kernel metadata, counts, outputs).
FRONT_END = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
             "language_info": {"codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py",
                               "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
                               "pygments_lexer": "ipython3", "version": "3.11.7"}}


@contextmanager
def jupyter_lab(root: Path):
    "A real JupyterLab server on `root/nbs`, started as `make lab` starts it; yields `call(method, path, body)`."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "stagebook-test"
    server = subprocess.Popen([str(BIN / "jupyter"), "lab", "--ip", "127.0.0.1", f"--port={port}", "--no-browser",
                               "--allow-root", f"--IdentityProvider.token={token}",
                               "--ContentsManager.pre_save_hook=stagebook.notebooks.pre_save_hook", "nbs/"],
                              cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def call(method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/contents/{path}", method=method,
                                         headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
                                         data=json.dumps(body).encode() if body is not None else None)
        with urllib.request.urlopen(request, timeout=30) as reply:
            return json.load(reply)

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                call("GET", "")
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("JupyterLab did not start within 60 s") from None
                time.sleep(0.3)
        yield call
    finally:
        server.terminate()
        server.wait(timeout=30)


def save_as_a_browser_would(call, name: str) -> None:
    "GET a notebook, add what the front end adds when it runs every cell, and PUT it back (JupyterLab's save)."
    content = call("GET", f"{name}?content=1&type=notebook")["content"]
    content["metadata"].update(FRONT_END)
    for cell in content["cells"]:
        if cell["cell_type"] == "code":
            cell["execution_count"] = 7
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "ran\n"}]
    call("PUT", name, {"type": "notebook", "format": "json", "content": content})


def mixed_images(folder: Path, classes: int = 6, per_class: int = 20, seed: int = 0) -> Path:
    """A folder-per-class tree of 32-64 px PNGs, two thirds colour and one third grayscale, where a class is a hue
    and a stripe frequency (so colour carries signal, and grayscale still some). Not made by stagebook itself."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k in range(classes):
        (folder / f"kind_{k}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            side = int(rng.choice([32, 40, 48, 56, 64]))
            y, x = np.mgrid[0:side, 0:side] / side
            stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (k + 1) * (x + rng.random()))
            hue = np.array([np.cos(2 * np.pi * k / classes), np.cos(2 * np.pi * (k / classes + 1 / 3)),
                            np.cos(2 * np.pi * (k / classes + 2 / 3))]) * 0.5 + 0.5
            rgb = (0.6 * hue[None, None, :] + 0.4 * stripes[..., None]) * 255 + rng.normal(0, 12, (side, side, 3))
            img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
            if i % 3 == 2:
                img = img.convert("L")
            img.save(folder / f"kind_{k}" / f"{i:03d}.png")
    return folder


@pytest.fixture
def dvc_stages(project: Path) -> Path:
    "Three scaffolded stages under DVC (`stagebook stage new`): 01_data, 05_check and the sealed test 06_sealed_test."
    from stagebook.scaffold import new_stage

    with (project / "pyproject.toml").open("a") as f:  # as the template's: nbdev-clean keeps papermill's tag
        f.write('\n[tool.nbdev]\nnbs_path = "nbs"\nallowed_cell_metadata_keys = ["tags"]\n')
    (project / "dvc.yaml").write_text("stages: {}\n")
    subprocess.run(["dvc", "init", "-q"], cwd=project, check=True)
    for name in ("01_data", "05_check", "06_sealed_test"):
        new_stage(project, name)
    (project / ".gitignore").write_text("mlflow.db\nmlartifacts/\nreports/.staging/\nreports/.locks/\n")
    git(project, "add", "-A")
    git(project, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "three stages")
    return project


@pytest.fixture(scope="module")
def warm_kernels():
    """Warm kernels on for a whole module, as users have them (the default): the end-to-end modules run dozens of
    stage kernels in projects that share one environment, so one server serves them all (kept 120 s between runs)."""
    saved = {k: os.environ.get(k) for k in ("STAGEBOOK_WARM_KERNELS", "STAGEBOOK_WARM_KERNEL_IDLE")}
    os.environ.update({"STAGEBOOK_WARM_KERNELS": "1", "STAGEBOOK_WARM_KERNEL_IDLE": "120"})
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def wait_for_warm_kernels(root: Path, timeout: float = 90.0) -> None:
    "Wait until the warm-kernel server for kernels run in `root` has imported all it preloads (it answers meanwhile)."
    import time

    from stagebook import warmkernel
    ready = Path(f"{warmkernel.socket_path(dict(os.environ), str(root))}.ready")
    deadline = time.monotonic() + timeout
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ready.exists(), "the warm-kernel server never got ready"
