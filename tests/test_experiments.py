"`stagebook exps`: the experiments table fits the terminal and keeps what differs."
from stagebook.experiments import table


def _row(name, valid, epochs, items=1797, error=False):
    return {"name": name, "error": error, "metrics": {"01:items": items, "04:valid_acc": valid, "06:test_acc": None},
            "params": {"04:epochs": epochs, "04:lr": 0.01, "01:image_size": 8}}


def test_only_differing_metrics_and_changed_params_are_shown():
    rows = [_row("workspace", 0.97222, 20), _row("main", 0.97222, 20), _row("  exp-a", 0.95, 2)]
    text = table(rows, width=120)
    header, *lines = text.splitlines()
    assert "04:valid_acc" in header and "01:items" not in header  # 1797 everywhere: not a comparison
    assert lines[2].startswith("  exp-a") and "04:epochs=2" in lines[2] and "04:lr" not in lines[2]
    assert lines[1].rstrip().endswith("-")  # the baseline changed nothing


def test_nothing_differs_shows_every_headline():
    header = table([_row("workspace", 0.97, 20), _row("main", 0.97, 20)]).splitlines()[0]
    assert "01:items" in header and "04:valid_acc" in header


def test_lines_never_exceed_the_width_and_failures_are_named():
    rows = [_row("workspace", 0.97, 20), _row("main", 0.97, 20)]
    rows += [_row(f"  exp-{i}", 0.9 + i / 100, 100 + i, error=i == 3) | {"params": {f"04:p{j}": i for j in range(40)}}
             for i in range(5)]
    lines = table(rows, width=80).splitlines()
    assert max(map(len, lines)) <= 80
    assert any("exp-3 (failed)" in line for line in lines)


def test_too_many_metric_columns_drop_the_earliest_stages_first_and_say_so():
    many = {f"0{s}:metric_number_{j}": s + j / 10 for s in range(7) for j in range(3)}
    rows = [{"name": n, "error": False, "metrics": {k: v + i for k, v in many.items()}, "params": {}}
            for i, n in enumerate(["workspace", "main"])]
    lines = table(rows, width=120).splitlines()
    assert max(map(len, lines)) <= 120
    assert "06:metric_number_2" in lines[0] and "00:metric_number_0" not in lines[0]
    assert lines[-1].startswith("(not shown: 00:metric_number_0")


def test_dvc_queue_runs_whole_pipeline_experiments_side_by_side(dvc_stages):
    "DVC's own queue, no Ray: `dvc exp run --queue` twice, `dvc queue start --jobs 2`, both experiments succeed."
    import json
    import os
    import subprocess
    import time

    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def dvc(*args):
        done = subprocess.run(["dvc", *args], cwd=dvc_stages, capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-1500:]
        return done.stdout

    for seed in (1, 2):
        dvc("exp", "run", "--queue", "-S", f"params/05_check.yaml:seed={seed}", "--name", f"seed-{seed}")
    dvc("queue", "start", "--jobs", "2")
    deadline = time.monotonic() + 300
    while True:
        status = dvc("queue", "status")
        if "Success" in status and "Running" not in status and "Queued" not in status:
            break
        assert "Failed" not in status and time.monotonic() < deadline, status + dvc("queue", "logs", "seed-1")
        time.sleep(2)
    dvc("queue", "stop", "--kill")
    shown = json.loads(dvc("exp", "show", "--json"))
    names = {e["name"]: e for branch in shown for e in branch.get("experiments") or []
             for e in [e["revs"][0]] if e.get("name")}
    assert {"seed-1", "seed-2"} <= set(names), list(names)
    seeds = {n: names[n]["data"]["params"]["params/05_check.yaml"]["data"]["seed"] for n in ("seed-1", "seed-2")}
    assert seeds == {"seed-1": 1, "seed-2": 2}
