from pathlib import Path

import pytest

from stagebook import StagebookError
from stagebook.params import load_params, params_hash, parse_overrides


def test_overrides_are_typed_like_yaml(tmp_path: Path):
    f = tmp_path / "p.yaml"
    f.write_text("epochs: 3\nlr: 0.01\nname: run\nflag: false\n")
    known = load_params(f)
    got = parse_overrides(["epochs=5", "lr=1e-3", "name=007", "flag=true"], known, f)
    assert got == {"epochs": 5, "lr": 0.001, "name": "007", "flag": True}


def test_unknown_override_names_the_file_and_the_known_keys(tmp_path: Path):
    f = tmp_path / "p.yaml"
    f.write_text("epochs: 3\n")
    with pytest.raises(StagebookError, match=r"--set epoch: not a parameter in .*p\.yaml; known: epochs"):
        parse_overrides(["epoch=4"], load_params(f), f)


@pytest.mark.parametrize("pair", ["epochs", "=3"])
def test_malformed_override_is_refused(tmp_path: Path, pair: str):
    with pytest.raises(StagebookError, match="expected key=value"):
        parse_overrides([pair], {"epochs": 1}, tmp_path / "p.yaml")


@pytest.mark.parametrize("text, message", [("epochs: [1,\n", "not valid YAML at line"),
                                           ("- 1\n- 2\n", "must be a mapping"),
                                           ("bad key: 1\n", "must be a mapping")])
def test_bad_params_file_is_one_clear_line(tmp_path: Path, text: str, message: str):
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(StagebookError, match=message) as err:
        load_params(f)
    assert str(f) in str(err.value) and "\n" not in str(err.value)


def test_missing_params_file(tmp_path: Path):
    with pytest.raises(StagebookError, match="params file missing"):
        load_params(tmp_path / "nope.yaml")


def test_params_hash_ignores_order_and_sees_values():
    assert params_hash({"a": 1, "b": 2}) == params_hash({"b": 2, "a": 1})
    assert params_hash({"a": 1}) != params_hash({"a": 2})


def test_a_number_set_over_a_word_default_is_a_number(tmp_path):
    "near_threshold defaults to 'auto' but its schema says number: --set near_threshold=0.005 must arrive as 0.005."
    from stagebook.params import parse_overrides

    source = tmp_path / "01_x.yaml"
    source.write_text("near_threshold: auto\nsource: data/raw\n")
    (tmp_path / "01_x.schema.yaml").write_text("near_threshold: {type: number, min: 0, lt: 1, also: [auto]}\nsource: {type: path}\n")
    known = {"near_threshold": "auto", "source": "data/raw"}
    assert parse_overrides(["near_threshold=0.005", "source=2024"], known, source) == {"near_threshold": 0.005, "source": "2024"}
    assert parse_overrides(["near_threshold=auto"], known, source) == {"near_threshold": "auto"}
