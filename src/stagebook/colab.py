"""The set-up cell every stage notebook opens with: a no-op outside Colab; under Colab it fetches and installs the project.

The cell cannot import stagebook (under Colab stagebook is not installed yet), so its source is kept here, once,
and written into notebooks by `stagebook new` and `stagebook stage new`; a test checks every notebook carries it.
"""
from __future__ import annotations

import re

MARKER = "# Colab set-up"
URL_LINE = re.compile(r'^REPO_URL = ".*"', re.M)

SETUP_CELL = '''\
# Colab set-up: does nothing outside Colab (under 50 ms). Under Colab it clones the project (REPO_URL), installs
# stagebook without touching Colab's torch and torchvision, and with USE_DRIVE keeps MLflow's store and DVC's cache
# on Google Drive, so runs survive the session.
REPO_URL = ""  # the project's git URL: `stagebook new --repo-url URL` fills it in
USE_DRIVE = False
import importlib.util as _u
if _u.find_spec("google") and _u.find_spec("google.colab"):
    import importlib, importlib.metadata as _m, os, subprocess, sys
    from pathlib import Path
    _has = lambda p: (p / "pyproject.toml").is_file() and "[tool.stagebook]" in (p / "pyproject.toml").read_text()
    _root = next((p for p in [Path.cwd(), *Path.cwd().parents] if _has(p)), None)
    if _root is None:
        if not REPO_URL:
            raise SystemExit("Colab set-up: set REPO_URL in this cell to the project's git URL, then run it again.")
        _root = Path(os.environ.get("STAGEBOOK_COLAB_DIR", "/content")) / Path(REPO_URL.rstrip("/")).stem
        if not _root.is_dir():
            subprocess.run(["git", "clone", "--quiet", REPO_URL, str(_root)], check=True)
    os.chdir(_root)
    _pins = _root / ".colab-constraints.txt"  # Colab's own CUDA builds stay as they are
    _pins.write_text("".join(f"{p}=={_m.version(p)}\\n" for p in ("torch", "torchvision") if _u.find_spec(p)))
    _wheels = sorted((_root / "wheels").glob("stagebook-*.whl"))
    _toolkit = [str(_wheels[-1])] if _wheels else ["-e", str(_root)]  # the template itself carries the source
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", str(_pins), *_toolkit], check=True)
    sys.path.insert(0, str(_root / "src"))  # the project's nbdev package, importable without a restart
    importlib.invalidate_caches()
    if USE_DRIVE:
        from google.colab import drive
        _drive = Path(os.environ.get("STAGEBOOK_DRIVE", "/content/drive"))
        drive.mount(str(_drive))
        _store = _drive / "MyDrive" / "stagebook" / _root.name
        _store.mkdir(parents=True, exist_ok=True)
        os.environ["STAGEBOOK_TRACKING_URI"] = f"sqlite:///{_store / 'mlflow.db'}"
        os.environ["STAGEBOOK_ARTIFACT_ROOT"] = str(_store / "mlartifacts")
        subprocess.run([sys.executable, "-m", "dvc", "cache", "dir", "--local", str(_store / "dvc-cache")], check=True)
    print(f"Colab set-up: project at {_root}" + (f", runs and DVC cache on Drive ({_store})" if USE_DRIVE else ""))'''


def setup_cell(repo_url: str = "") -> str:
    "The set-up cell's source with the project's git URL filled in."
    return URL_LINE.sub(f"REPO_URL = {repo_url!r}".replace("'", '"'), SETUP_CELL, count=1)


def is_setup_cell(source: str) -> bool:
    return source.startswith(MARKER)


def repo_url_of(source: str) -> str:
    "The URL a set-up cell carries (\"\" when unset)."
    found = URL_LINE.search(source)
    return found.group(0).split("=", 1)[1].strip().strip('"') if found else ""
