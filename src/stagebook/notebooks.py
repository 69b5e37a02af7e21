"""Stage notebooks on disk: one stored form (nbdev-clean, no outputs), kept by every writer and by JupyterLab's save.

A stage notebook is an input of the pipeline: DVC hashes its bytes. Outputs, execution counts and the metadata a
front end adds (kernel display name, language_info) are not the notebook's content, so they never reach the file;
the executed copy with outputs lives in `reports/executed/`.
"""
from __future__ import annotations

from pathlib import Path


def clean(nb: dict, path: Path | str | None = None) -> dict:
    "`nb` in place in nbdev-clean form (the project's [tool.nbdev] settings), with outputs and counts cleared."
    from nbdev.clean import clean_nb
    from nbdev.config import get_config

    cfg = get_config(path=path)
    clean_nb(nb, allowed_metadata_keys=cfg.get("allowed_metadata_keys") or [],
             allowed_cell_metadata_keys=cfg.get("allowed_cell_metadata_keys") or [], clean_ids=cfg.clean_ids,
             allowed_out_metadata_keys=cfg.get("allowed_out_metadata_keys") or [])
    for cell in nb["cells"]:
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return nb


def write_clean(nb: dict, path: Path) -> Path:
    "Write `nb` in the stored form, byte for byte what `nbdev-clean` would leave."
    from fastcore.nbio import write_nb

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_nb(clean(nb, path.parent), path)
    return path


def read(path: Path) -> dict:
    "A notebook as plain dicts (what nbdev's cleaner and nbdime's merge work on)."
    import json
    return json.loads(Path(path).read_text(encoding="utf-8"))


def pre_save_hook(model: dict, path: str, contents_manager=None, **kwargs) -> None:
    """JupyterLab's pre-save hook (`make lab` sets it): a stage notebook is saved in its stored form.

    Opening and saving a notebook without editing it then changes no byte, so neither git nor DVC sees a change.
    """
    if model.get("type") != "notebook" or model.get("content", {}).get("nbformat") != 4:
        return
    os_path = Path(getattr(contents_manager, "root_dir", ".")) / path.lstrip("/")
    if os_path.parent.name == "nbs" and (os_path.parent.parent / "pyproject.toml").is_file():
        clean(model["content"], os_path.parent)
