"""A stage's search inside its kernel (`stagebook.search.run_inline`): each variant in its own forked process, a
failing or dying variant fails alone, a slow one is stopped, and a real training variant learns."""
import os
import time
from pathlib import Path

import numpy as np
import torch

from stagebook import training, zoo
from stagebook.search import run_inline


def _numbers(params: dict, folder: Path) -> dict:
    (folder / "out.txt").write_text(str(params))
    return {"score": params["a"] * 10 + params["b"], "pid": os.getpid()}


def test_every_variant_runs_in_its_own_process_and_the_best_comes_first(tmp_path: Path):
    table = run_inline(_numbers, {"a": [1, 2], "b": [0, 5]}, tmp_path, jobs=2, metric="score", progress=False)
    assert list(table.score) == [25, 20, 15, 10] and (table.status == "ok").all()
    assert os.getpid() not in set(table.pid) and table.pid.nunique() == 4
    assert all((tmp_path / v / "out.txt").is_file() for v in table.variant)
    assert (tmp_path / "summary.csv").is_file() and table.attrs["jobs"] == 2


def _fragile(params: dict, folder: Path) -> dict:
    if params["kind"] == "raises":
        raise ValueError("bad learning rate")
    if params["kind"] == "dies":
        os._exit(9)  # as a kill or the OOM killer would end it: no result written
    if params["kind"] == "hangs":
        time.sleep(60)
    return {"score": 1.0}


def test_a_failing_variant_fails_alone_a_dying_one_is_retried_once_and_a_slow_one_is_stopped(tmp_path: Path):
    table = run_inline(_fragile, {"kind": ["ok", "raises", "dies", "hangs"]}, tmp_path, jobs=2, metric="score",
                       timeout=8, progress=False).set_index("kind")
    assert table.loc["ok", "status"] == "ok" and table.loc["ok", "score"] == 1.0
    assert table.loc["raises", "status"] == "failed" and "ValueError: bad learning rate" in table.loc["raises", "error"]
    assert "Traceback" in (tmp_path / table.loc["raises", "variant"] / "log.txt").read_text()
    assert table.loc["dies", "attempts"] == 2 and "exit code 9" in table.loc["dies", "error"]
    assert "timeout" in table.loc["hangs", "error"] and table.loc["hangs", "seconds"] < 30


def test_a_training_variant_in_a_forked_process_learns(tmp_path: Path):
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = torch.from_numpy((digits.images[:, None] / 16).astype(np.float32))
    y = torch.from_numpy(digits.target.astype(np.int64))
    training.accuracy(zoo.build("small_cnn", 10, 1, 8, 0.0, None), x[:64], y[:64])  # the parent has used torch first

    def variant(params: dict, folder: Path) -> dict:
        model, history, best = training.fit_regularised(
            lambda: zoo.build("small_cnn", 10, 1, 8, params["dropout"], None), x[:1200], y[:1200], x[1200:], y[1200:],
            batch_size=64, seed=0, epochs=3, lr=0.01, weight_decay=0.01, patience=2)
        torch.save(model.state_dict(), folder / "model.pth")
        return {"valid_accuracy": training.accuracy(model, x[1200:], y[1200:]), "epochs_run": len(history["train_loss"])}

    table = run_inline(variant, {"dropout": [0.0, 0.3]}, tmp_path, jobs=2, metric="valid_accuracy", progress=False)
    assert (table.status == "ok").all(), table.error.tolist()
    assert (table.valid_accuracy > 0.8).all() and (table.epochs_run >= 1).all()
    assert all((tmp_path / v / "model.pth").is_file() for v in table.variant)


def test_a_variant_never_collects_the_parents_garbage(tmp_path: Path):
    # A collection in the child runs the destructors of the parent's garbage there; a Ray client's joins a thread the
    # child lacks and hung a variant for ever. Here the destructor only says where it ran.
    import gc
    parent, marker = os.getpid(), tmp_path / "collected_in"

    class Cycle:
        def __del__(self):
            if os.getpid() != parent:
                marker.write_text(str(os.getpid()))

    def variant(params: dict, folder: Path) -> dict:
        return {"found": gc.collect()}

    gc.disable()  # so the cycle is still garbage, not yet collected, when the variant is forked
    try:
        cycle = Cycle()
        cycle.me = cycle
        del cycle
        table = run_inline(variant, {"x": [1]}, tmp_path / "out", jobs=1, progress=False)
    finally:
        gc.enable()
        gc.collect()
    assert (table.status == "ok").all(), table.error.tolist()
    assert not marker.exists()
