"""A corpus of bad inputs: each is refused before a kernel starts, in one line naming the file or --set, the key, the
value and what is expected, and nothing already written changes. Run against the template's real params and
schemas (a copy of its tracked files)."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, git
from stagebook import StagebookError
from stagebook.augment import BOUNDS
from stagebook.execute import run_stage
from stagebook.literature import load_literature
from stagebook.schema import describe, validate

# (stage, --set override, what the message must say)
OVERRIDES = [
    ("04", "epochs=ten", "--set epochs: epochs = 'ten' is not an integer; expected an integer >= 1."),
    ("04", "epochs=0", "epochs = 0 is below 1"),
    ("04", "epochs=-3", "epochs = -3 is below 1"),
    ("04", "epochs=2.5", "epochs = 2.5 is not an integer"),
    ("04", "lr=-0.01", "lr = -0.01 is not above 0"),
    ("04", "lr=0", "lr = 0 is not above 0"),
    ("04", "lr=abc", "lr = 'abc' is not a number"),
    ("04", "batch_size=0", "batch_size = 0 is below 1"),
    ("04", "batch_size=-1", "batch_size = -1 is below 1"),
    ("04", "phases=regularise", "phases = 'regularise' is not a list"),
    ("04", "phases=[regularise,typo]", "phases[1] = 'typo' is not one of the choices"),
    ("04", "phases=[]", "phases = [] is empty"),
    ("04", "arch=resnet99", "arch = 'resnet99' is not one of the choices; expected one of small_cnn, resnet18"),
    ("04", "width=0", "width = 0 is below 1"),
    ("04", "dropout=1.0", "dropout = 1.0 is not below 1"),
    ("04", "dropout=-0.1", "dropout = -0.1 is below 0"),
    ("04", "weight_decay=-1", "weight_decay = -1 is below 0"),
    ("04", "augment={rotate: 90}", "augment.rotate = 90 is above 45.0"),
    ("04", "augment={spin: 5}", "augment = {'spin': 5} has unknown key(s) ['spin']"),
    ("04", "augment=[1]", "augment = [1] is not a mapping"),
    ("04", "search_jobs=0", "search_jobs = 0 is below 1"),
    ("04", "search_jobs=-3", "search_jobs = -3 is below 1"),
    ("04", "search_samples=0", "search_samples = 0 is below 1"),
    ("04", "device=gpu", "device = 'gpu' does not match"),
    ("04", "mixed_precision=maybe", "mixed_precision = 'maybe' is not true or false"),
    ("04", "train_accuracy_target=1.5", "train_accuracy_target = 1.5 is above 1"),
    ("04", "onebatch_steps=0", "onebatch_steps = 0 is below 1"),
    ("04", "init_loss_tolerance=0", "init_loss_tolerance = 0 is not above 0"),
    ("04", "early_stopping_patience=0", "early_stopping_patience = 0 is below 1"),
    ("04", "model_path=/tmp/elsewhere.pth", "model_path = '/tmp/elsewhere.pth' leaves the project"),
    ("04", "model_path=../../x.pth", "model_path = '../../x.pth' leaves the project"),
    ("04", "search_grid={dropout: []}", "search_grid.dropout = [] is empty"),
    ("04", "search_grid=[1]", "search_grid = [1] is not a mapping"),
    ("04", "search_grid={dropuot: [0.1, 0.3]}", "--set search_grid: search_grid = {'dropuot': [0.1, 0.3]} varies"
                                                " ['dropuot'], which is not a param of this stage"),
    ("04", "search_grid={seed: [0, 1]}", "varies ['seed'], which cannot vary while search_backend is inline; expected"
                                         " keys among arch, width, dropout"),
    ("04", "pretrained_path=3", "pretrained_path = 3 is not a path"),
    ("01", "near_threshold=abc", "near_threshold = 'abc' is not a number"),
    ("01", "near_threshold=-0.1", "near_threshold = -0.1 is below 0"),
    ("01", "train=1.5", "train = 1.5 is not below 1"),
    ("01", "valid=0", "valid = 0 is not above 0"),
    ("01", "test=-0.1", "test = -0.1 is not above 0"),
    ("01", "neighbours=0", "neighbours = 0 is below 1"),
    ("01", "workers=-1", "workers = -1 is below 0"),
    ("01", "min_class_items=0", "min_class_items = 0 is below 1"),
    ("01", "allow_split_change=maybe", "allow_split_change = 'maybe' is not true or false"),
    ("01", "seed=-1", "seed = -1 is below 0"),
    ("01", "relabels=/etc/passwd", "relabels = '/etc/passwd' leaves the project"),
    ("01", "data_doc=../x.md", "data_doc = '../x.md' leaves the project"),
    ("02", "models=[]", "models = [] is empty"),
    ("02", "models=[knn,transformer]", "models[1] = 'transformer' is not one of the choices"),
    ("02", "models=knn", "models = 'knn' is not a list"),
    ("02", "knn_k=0", "knn_k = 0 is below 1"),
    ("02", "forest_trees=0", "forest_trees = 0 is below 1"),
    ("02", "svm_C=0", "svm_C = 0 is not above 0"),
    ("02", "logreg_C=-1", "logreg_C = -1 is not above 0"),
    ("05", "top_losses=-1", "top_losses = -1 is below 0"),
    ("05", "relabel_min_confidence=2", "relabel_min_confidence = 2 is above 1"),
    ("05", "gradcam_items=1000", "gradcam_items = 1000 is above 200"),
    ("05", "relabel_limit=-5", "relabel_limit = -5 is below 0"),
    ("06", "ci_level=1.5", "ci_level = 1.5 is not below 1"),
    ("06", "ci_level=0.3", "ci_level = 0.3 is not above 0.5"),
    ("06", "latency_repeats=0", "latency_repeats = 0 is below 1"),
    ("06", "seed=x", "seed = 'x' is not an integer"),
    ("00", "page=/etc/project.md", "page = '/etc/project.md' leaves the project"),
    ("03", "literature=../other.csv", "literature = '../other.csv' leaves the project"),
    ("04", "nonsense=1", "--set nonsense: not a parameter in"),
    ("04", "epochs", "--set 'epochs': expected key=value"),
]

# (params file, its new text, what the message must say)
FILES = [
    ("04_tuning", {"epochs": "ten"}, "params/04_tuning.yaml: epochs = 'ten' is not an integer"),
    ("04_tuning", {"batch_size": 0}, "params/04_tuning.yaml: batch_size = 0 is below 1"),
    ("04_tuning", {"phases": "regularise"}, "params/04_tuning.yaml: phases = 'regularise' is not a list"),
    ("01_data_document", {"near_threshold": "abc"}, "near_threshold = 'abc' is not a number"),
    ("04_tuning", "epochs: [1,\n", "params/04_tuning.yaml: not valid YAML at line 2"),
    ("04_tuning", "- epochs\n- lr\n", "must be a mapping of Python-identifier keys"),
    ("04_tuning", {"epochz": 3}, "unknown key(s) ['epochz']"),
]


# (new lines for params/data.yaml, the project's data config every stage reads, what the message must say)
DATA_FILES = [
    ({"image_size": 2}, "params/data.yaml: image_size = 2 is below 4"),
    ({"image_size": "big"}, "params/data.yaml: image_size = 'big' is not an integer"),
    ({"channels": 2}, "params/data.yaml: channels = 2 is not one of the choices; expected one of 1, 3"),
    ({"channels": "rgb"}, "params/data.yaml: channels = 'rgb' is not an integer"),
    ({"source": None}, "params/data.yaml: source = None is empty"),
    ({"colour": True}, "no rules for ['colour']"),
]


def _tree_digest(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".git" not in p.parts}


@pytest.fixture(scope="module")
def template_copy(tmp_path_factory) -> Path:
    "The template's tracked files under git, plus stand-ins for outputs a bad input must not touch."
    root = tmp_path_factory.mktemp("schema") / "project"
    for rel in git(REPO, "ls-files").splitlines():
        if (REPO / rel).is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, root / rel)
    for rel in ("metrics/04_tuning.json", "models/model.pth", "reports/04_tuning.pdf", "data/splits.csv"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"last good {rel}\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "copy")
    return root


@pytest.mark.parametrize("stage, override, message", OVERRIDES, ids=[f"{s}:{o}" for s, o, _ in OVERRIDES])
def test_a_bad_override_is_refused_before_a_kernel_starts(template_copy: Path, stage: str, override: str, message: str):
    before = _tree_digest(template_copy)
    with pytest.raises(StagebookError) as refused:
        run_stage(stage, [override], root=template_copy, track=False)
    text = str(refused.value)
    assert message in text and "\n" not in text
    assert "expected" in text or "known:" in text
    assert _tree_digest(template_copy) == before  # nothing written: no staging folder, no output touched


@pytest.mark.parametrize("stage, content, message", FILES, ids=[f"{s}:{str(c)[:20]}" for s, c, _ in FILES])
def test_a_bad_params_file_is_refused_naming_the_file(template_copy: Path, stage: str, content, message: str):
    path = template_copy / "params" / f"{stage}.yaml"
    kept = path.read_text()
    if isinstance(content, dict):
        content = yaml.safe_dump({**yaml.safe_load(kept), **content}, sort_keys=False)
    path.write_text(content)
    before = _tree_digest(template_copy)
    try:
        with pytest.raises(StagebookError) as refused:
            run_stage(stage[:2], [], root=template_copy, track=False)
        assert message in str(refused.value) and "\n" not in str(refused.value)
        assert _tree_digest(template_copy) == before
    finally:
        path.write_text(kept)


@pytest.mark.parametrize("content, message", DATA_FILES, ids=[str(c)[:24] for c, _ in DATA_FILES])
def test_a_bad_data_config_is_refused_before_any_stage_reads_it(template_copy: Path, content: dict, message: str):
    path = template_copy / "params" / "data.yaml"
    kept = path.read_text()
    path.write_text(yaml.safe_dump({**yaml.safe_load(kept), **content}, sort_keys=False))
    before = _tree_digest(template_copy)
    try:
        for stage in ("02", "04"):
            with pytest.raises(StagebookError) as refused:
                run_stage(stage, [], root=template_copy, track=False)
            assert message in str(refused.value) and "\n" not in str(refused.value)
        assert _tree_digest(template_copy) == before
    finally:
        path.write_text(kept)


@pytest.mark.parametrize("args, message", [
    (["dropout=0.1,1.5"], "--set dropout: dropout = 1.5 is not below 1"),
    (["dropout=0.1,0.2", "--jobs", "-3"], "--jobs -3 / --samples None: both must be at least 1"),
    (["dropout=0.1,0.2", "--samples", "0"], "both must be at least 1"),
    (["lr=0.01,fast"], "lr = 'fast' is not a number"),
])
def test_a_bad_sweep_is_refused_before_any_variant_runs(template_copy: Path, args: list[str], message: str):
    before = _tree_digest(template_copy)
    done = subprocess.run([sys.executable, "-m", "stagebook.cli", "sweep", "04", *args, "--no-track"],
                          cwd=template_copy, capture_output=True, text=True)
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (template_copy / "reports" / "sweeps").exists() and _tree_digest(template_copy) == before


@pytest.mark.parametrize("text, message", [("", "empty file; start it with the header"),
                                           ("citation,year\n", "missing column(s)")])
def test_an_empty_or_header_only_literature_file_is_named(tmp_path: Path, text: str, message: str):
    path = tmp_path / "literature.csv"
    path.write_text(text)
    with pytest.raises(StagebookError) as refused:
        load_literature(path)
    assert message in str(refused.value)


def test_every_stage_declares_every_param_and_its_values_pass(template_copy: Path):
    from stagebook.params import load_params
    from stagebook.project import stages
    from stagebook.schema import load_schema
    for stage in stages(template_copy):
        schema = load_schema(stage.params_file)
        assert schema is not None, f"{stage.name} has no schema"
        validate(load_params(stage.params_file), schema, stage.params_file)


def test_the_augment_ranges_are_the_toolkits():
    schema = yaml.safe_load((REPO / "params" / "04_tuning.schema.yaml").read_text())["augment"]["keys"]
    assert {k: (v["min"], v["max"]) for k, v in schema.items()} == {k: (lo, hi) for k, (lo, hi, _) in BOUNDS.items()}


def test_describe_says_what_is_expected():
    assert describe({"type": "int", "min": 1}) == "an integer >= 1"
    assert describe({"type": "number", "gt": 0, "max": 1, "nullable": True}) == "a number > 0 and <= 1 (or null)"
    assert describe({"type": "list", "items": {"type": "str", "choices": ["a", "b"]}}) == "a list of one of a, b"


def test_a_grid_limited_inline_may_vary_any_param_under_the_sweep_backend():
    schema = yaml.safe_load((REPO / "params" / "04_tuning.schema.yaml").read_text())
    params = yaml.safe_load((REPO / "params" / "04_tuning.yaml").read_text())
    source = Path("params/04_tuning.yaml")
    validate({**params, "search_backend": "sweep", "search_grid": {"seed": [0, 1]}}, schema, source)
    with pytest.raises(StagebookError, match="cannot vary while search_backend is inline"):
        validate({**params, "search_grid": {"seed": [0, 1]}}, schema, source)
    with pytest.raises(StagebookError, match="not a param of this stage"):
        validate({**params, "search_backend": "sweep", "search_grid": {"search_grid": [None]}}, schema, source)


def test_the_inline_search_limit_is_what_notebook_04_can_vary():
    "The schema refuses before the kernel what the notebook's forked variants cannot change: the two lists agree."
    import ast

    from stagebook.notebooks import read
    among = yaml.safe_load((REPO / "params" / "04_tuning.schema.yaml").read_text())["search_grid"]["keys_when"]["among"]
    cells = ["".join(c["source"]) for c in read(REPO / "nbs" / "04_tuning.ipynb")["cells"] if c["cell_type"] == "code"]
    assigned = [node for cell in cells if "VARIABLE =" in cell for node in ast.parse(cell).body
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "VARIABLE"]
    assert len(assigned) == 1
    assert list(ast.literal_eval(assigned[0].value)) == among
