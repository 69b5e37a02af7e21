"""The data config: one file every stage reads for source, data root, image size and channels."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stagebook import StagebookError
from stagebook.dataconfig import data_root, describe_images, load_data_config, to_pixels


def _config(project: Path, text: str) -> None:
    (project / "params").mkdir(parents=True, exist_ok=True)
    (project / "params" / "data.yaml").write_text(text)
    (project / "params" / "data.schema.yaml").write_text(
        (Path(__file__).resolve().parents[1] / "params" / "data.schema.yaml").read_text())


def test_the_config_resolves_root_and_defaults_it_from_the_source(tmp_path: Path):
    _config(tmp_path, "source: data/list.csv\nroot: null\nimage_size: 32\nchannels: 3\n")
    cfg = load_data_config(tmp_path)
    assert cfg.root == "data" and cfg.root_path == (tmp_path / "data").resolve() and cfg.mode == "RGB"
    assert data_root(tmp_path) == (tmp_path / "data").resolve()
    assert cfg.file("cat/1.png") == (tmp_path / "data" / "cat" / "1.png").resolve()


def test_a_project_without_a_config_reads_paths_from_its_root(tmp_path: Path):
    assert data_root(tmp_path) == tmp_path.resolve()
    with pytest.raises(StagebookError, match="data config missing; run `stagebook data use PATH`"):
        load_data_config(tmp_path)


@pytest.mark.parametrize("text, message", [
    ("source: d\nimage_size: 2\nchannels: 1\n", "params/data.yaml: image_size = 2 is below 4"),
    ("source: d\nimage_size: 8\nchannels: 4\n", "channels = 4 is not one of the choices"),
    ("image_size: 8\nchannels: 1\n", "lacks ['source']"),
])
def test_a_bad_config_is_one_line_naming_key_and_value(tmp_path: Path, text: str, message: str):
    _config(tmp_path, text)
    with pytest.raises(StagebookError) as refused:
        load_data_config(tmp_path)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_colour_is_kept_with_three_channels_and_grey_is_repeated():
    rgb = Image.fromarray(np.dstack([np.full((10, 12), v, np.uint8) for v in (255, 0, 0)]), "RGB")
    kept = to_pixels(rgb, 8, 3)
    assert kept.shape == (3, 8, 8) and kept[0].min() == 1.0 and kept[1].max() == 0.0  # red stays red
    grey = to_pixels(Image.new("L", (8, 8), 128), 8, 3)
    assert grey.shape == (3, 8, 8) and np.allclose(grey[0], grey[2])
    assert to_pixels(rgb, 8, 1).shape == (1, 8, 8)  # converted only when the config says 1


def test_transparent_pixels_read_as_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_pixels(rgba, 4, 1).min() == 1.0


def test_the_data_document_names_sizes_and_the_conversion(tmp_path: Path):
    _config(tmp_path, "source: d\nimage_size: 48\nchannels: 1\n")
    items = pd.DataFrame({"status": ["ok"] * 4 + ["quarantined: x"], "colour": ["RGB", "RGB", "grey", "grey", ""],
                          "width": [32, 64, 48, 48, 0], "height": [32, 64, 48, 40, 0]})
    text = describe_images(items, load_data_config(tmp_path))
    assert text.startswith("2 grayscale and 2 colour images (4 sizes, median 48×44 px, from 32×32 to 64×64)")
    assert "2 colour image(s) are converted to grayscale" in text and "3 resized" in text
