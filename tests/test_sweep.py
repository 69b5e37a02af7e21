"""Sweeps: grid parsing, variant selection, and parallel papermill variants nested in MLflow; the stage API they use."""
import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import add_stage
from stagebook import StagebookError
from stagebook.execute import run_stage
from stagebook.sweep import parse_grid, run_sweep, variants
from stagebook.tracking import tracking_uri

KNOWN = {"lr": 0.01, "epochs": 3, "arch": "small_cnn", "augment": {"rotate": 5}, "phases": ["a"]}


def test_grid_values_take_the_types_of_the_params_file():
    grid = parse_grid(["lr=0.01,3e-2", "epochs=1,2", "arch=resnet18,small_cnn", "augment={rotate: 5},{rotate: 10}",
                       "phases=[a],[a, b]"], Path("p.yaml"), KNOWN)
    assert grid == {"lr": [0.01, 0.03], "epochs": [1, 2], "arch": ["resnet18", "small_cnn"],
                    "augment": [{"rotate": 5}, {"rotate": 10}], "phases": [["a"], ["a", "b"]]}


@pytest.mark.parametrize("pair, message", [("lr", "expected key=v1,v2"), ("nope=1,2", "--set nope: not a parameter in p.yaml"),
                                           ("lr=[1,", "values must be comma-separated YAML")])
def test_bad_grid_pairs_are_one_line_errors(pair, message):
    with pytest.raises(StagebookError, match=message):
        parse_grid([pair], Path("p.yaml"), KNOWN)


def test_grid_is_every_combination_and_random_search_a_seeded_subset():
    grid = {"a": [1, 2, 3], "b": ["x", "y"]}
    assert variants(grid) == [{"a": a, "b": b} for a in (1, 2, 3) for b in ("x", "y")]
    picked = variants(grid, samples=3, seed=7)
    assert len(picked) == 3 and picked == variants(grid, samples=3, seed=7)
    assert all(p in variants(grid) for p in picked) and len({json.dumps(p) for p in picked}) == 3


@pytest.fixture
def nested_stage(project: Path) -> Path:
    "Stage 01_fit: a nested child run with a curve, a staged output file, and the effective params."
    return add_stage(project, "01_fit", "rate: 1.0\nbad: false\n", "rate = 1.0\nbad = False",
                     "from stagebook import stage\nctx = stage.init(0)",
                     "with stage.child_run('phase a', {'rate': rate}) as run:\n"
                     "    run.log_series('loss', [3.0 / (i + 1) * rate for i in range(4)])\n"
                     "    run.log_metrics({'final': 0.75 * rate})\n"
                     "    assert not bad, 'bad phase'\n"
                     "stage.log_series('curve', [1, 2, 3])\n"
                     "stage.output_path('models/out.txt').write_text(str(rate))\n"
                     "import os\n"
                     "stage.log_metrics({'score': rate, 'params_seen': len(stage.params()), 'variant': int(ctx.variant),\n"
                     "                   'threads': int(os.environ.get('OMP_NUM_THREADS', '0'))})")


def test_child_runs_curves_and_staged_outputs(nested_stage: Path):
    result = run_stage("01", ["rate=2.5"], root=nested_stage)
    assert result.metrics == {"score": 2.5, "params_seen": 2, "variant": 0, "threads": 1}  # conftest's one thread
    assert (nested_stage / "models" / "out.txt").read_text() == "2.5", "staged outputs are promoted on success"
    client = MlflowClient(tracking_uri(nested_stage))
    assert [m.value for m in client.get_metric_history(result.run_id, "curve")] == [1, 2, 3]
    exp = client.get_experiment_by_name("demo")
    [child] = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert child.info.run_name == "phase a" and child.info.status == "FINISHED" and child.data.params == {"rate": "2.5"}
    assert [m.step for m in client.get_metric_history(child.info.run_id, "loss")] == [0, 1, 2, 3]
    assert child.data.metrics["final"] == 0.75 * 2.5


def test_a_failed_child_run_is_recorded_failed_and_outputs_are_not_promoted(nested_stage: Path):
    run_stage("01", ["rate=2.5"], root=nested_stage)
    with pytest.raises(StagebookError, match="bad phase"):
        run_stage("01", ["rate=5", "bad=true"], root=nested_stage)
    assert (nested_stage / "models" / "out.txt").read_text() == "2.5"
    client = MlflowClient(tracking_uri(nested_stage))
    exp = client.get_experiment_by_name("demo")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    failed_parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags and r.info.status == "FAILED")
    [child] = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == failed_parent.info.run_id]
    assert child.info.status == "FAILED"


def test_run_sweep_runs_variants_in_parallel_under_one_parent(nested_stage: Path):
    out = nested_stage / "sweep"
    summary = run_sweep("01", {"rate": [1.0, 3.0, 2.0]}, jobs=2, root=nested_stage, out_dir=out, metric="score")
    assert summary.rate.tolist() == [3.0, 2.0, 1.0] and summary.score.tolist() == [3.0, 2.0, 1.0]
    assert (summary.status == "ok").all() and summary["variant"].tolist() == ["v01", "v02", "v00"]
    assert (out / "summary.csv").is_file() and (out / "v01" / "outputs" / "models" / "out.txt").read_text() == "3.0"
    assert not (nested_stage / "models" / "out.txt").exists(), "variants keep their outputs in their own folder"
    assert summary.attrs["jobs"] == 2
    client = MlflowClient(tracking_uri(nested_stage))
    exp = client.get_experiment_by_name("demo")
    runs = client.search_runs([exp.experiment_id])
    [parent] = [r for r in runs if r.info.run_name == "01_fit sweep"]
    variants_ = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in variants_) == ["01_fit v00", "01_fit v01", "01_fit v02"]
    assert all(r.data.metrics["variant"] == 1 for r in variants_)
    assert summary.metric_variant.tolist() == [1, 1, 1], "a metric named like a summary column is kept, renamed"
    assert parent.data.metrics["variants"] == 3 and parent.data.metrics["best_score"] == 3.0


def test_a_failing_variant_is_reported_not_hidden(nested_stage: Path):
    summary = run_sweep("01", {"bad": [False, True]}, jobs=2, root=nested_stage, out_dir=nested_stage / "s", track=False)
    assert summary.status.tolist() == ["ok", "failed"]
    assert "bad phase" in summary.error.iloc[1]


def test_variants_threads_follow_the_sweeps_omp_setting_unless_cpus_are_declared(nested_stage: Path, monkeypatch):
    "As stage 04's own search does: a lower OMP_NUM_THREADS caps each variant; declared --cpus give that many."
    from stagebook.cpus import available
    if available() < 2:
        pytest.skip("needs 2 cores: with one, every rule gives one thread")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    capped = run_sweep("01", {"rate": [1.0]}, jobs=1, root=nested_stage, out_dir=nested_stage / "a", track=False,
                       backend="local")
    declared = run_sweep("01", {"rate": [1.0]}, jobs=1, root=nested_stage, out_dir=nested_stage / "b", track=False,
                         backend="local", cpus_per_variant=2)
    assert capped.threads.tolist() == [1] and declared.threads.tolist() == [2]
