"""The data every stage reads, declared once: `params/data.yaml` (written by `stagebook data use PATH`).

    source: data/raw/digits   # an image folder (one sub-folder per class) or a CSV manifest
    root: data/raw/digits     # item paths in splits.csv, the seal, the PDFs and the queues are relative to it
    image_size: 8             # every stage (audit aside) reads images at image_size x image_size
    channels: 1               # 1: grayscale (colour images are converted, and the data document says so); 3: RGB

Image size and channels are properties of the data, not of a stage: baselines, training, error analysis and the
sealed test all read them from here (a model's own checkpoint records what it was trained on). Relative paths are
from the project root; `root` may lie outside the project.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import StagebookError

DATA_FILE = "params/data.yaml"
MODES = {1: "L", 3: "RGB"}


@dataclass(frozen=True)
class DataConfig:
    source: str
    root: str
    image_size: int
    channels: int
    project: Path

    @property
    def source_path(self) -> Path: return (self.project / self.source).resolve()

    @property
    def root_path(self) -> Path: return (self.project / self.root).resolve()

    @property
    def mode(self) -> str: return MODES[self.channels]

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "project"}

    def file(self, item_path: str) -> Path:
        "The file of a manifest row's path (relative to the data root)."
        return self.root_path / item_path


def data_file(project: Path) -> Path:
    return project / DATA_FILE


def load_data_config(project: Path | None = None) -> DataConfig:
    "The project's data config, validated against `params/data.schema.yaml`: one line naming key and value if not."
    from .params import load_params
    from .project import find_root
    from .schema import load_schema, validate

    project = Path(project or find_root()).resolve()
    path = data_file(project)
    if not path.is_file():
        raise StagebookError(f"{path}: data config missing; run `stagebook data use PATH` (an image folder or a CSV"
                             " manifest) to write it.")
    values = load_params(path)
    schema = load_schema(path)
    if schema is not None:
        validate(values, schema, Path(DATA_FILE))
    missing = [k for k in ("source", "image_size", "channels") if k not in values]
    if missing:
        raise StagebookError(f"{DATA_FILE}: lacks {missing}; `stagebook data use PATH` writes every key.")
    source = str(values["source"])
    root = values.get("root") or default_root(project, source)
    return DataConfig(source, str(root), int(values["image_size"]), int(values["channels"]), project)


def default_root(project: Path, source: str) -> str:
    "A folder source is its own root; a CSV manifest's root is the folder it lies in."
    path = Path(source)
    return path.parent.as_posix() if path.suffix.lower() == ".csv" else path.as_posix()


def flatten_alpha(rgba):
    "An RGBA image over white, as RGB: what a viewer shows for transparent pixels."
    from PIL import Image

    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def to_pixels(img, size: int, channels: int) -> np.ndarray:
    "A decoded PIL image as float32 (channels, size, size) in [0, 1]: converted to the configured mode, then resized."
    from PIL import Image

    mode = MODES[channels]
    if img.mode != mode:
        if img.mode in ("RGBA", "LA", "P", "PA"):  # transparent pixels read as white, as the audit reads them
            img = flatten_alpha(img.convert("RGBA"))
        img = img.convert(mode)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    pixels = np.asarray(img, dtype=np.float32) / 255.0
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def data_root(project: Path) -> Path:
    "The folder item paths are relative to: the data config's `root`, or the project itself when it has no config."
    return load_data_config(project).root_path if data_file(project).is_file() else Path(project).resolve()


def describe_images(items, config: DataConfig) -> str:
    """One sentence for the data document: the images' colour and size distribution, and what the stages do to them
    (conversion to the configured channels, resizing to the configured size). `items` is the audit's table."""
    usable = items[items.status == "ok"]
    if not len(usable):
        return "no usable images"
    colour = usable.colour.value_counts()
    grey, rgb = int(colour.get("grey", 0)), int(colour.get("RGB", 0))
    sides = usable.width.astype(int).astype(str) + "×" + usable.height.astype(int).astype(str)
    common = sides.value_counts()
    if len(common) == 1:
        sizes = f"all {common.index[0]} px"
    else:
        w, h = usable.width.astype(int), usable.height.astype(int)
        sizes = (f"{len(common)} sizes, median {int(w.median())}×{int(h.median())} px, from {w.min()}×{h.min()} to"
                 f" {w.max()}×{h.max()}")
    n = config.image_size
    resized = int(((usable.width != n) | (usable.height != n)).sum())
    if config.channels == 1:
        conversion = (f"{rgb} colour image(s) are converted to grayscale (`channels: 1` in {DATA_FILE}; set 3 to keep"
                      " colour)" if rgb else "no colour conversion")
    else:
        conversion = (f"{grey} grayscale image(s) are repeated into 3 channels" if grey else "no colour conversion")
    return (f"{grey} grayscale and {rgb} colour images ({sizes}); every stage reads them at {n}×{n} px with"
            f" {config.channels} channel(s) ({DATA_FILE}): {conversion}, {resized} resized")
