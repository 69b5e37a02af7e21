"""Sticky, group-aware, class-balanced splits: deterministic, never moving a placed item, never splitting a unit."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stagebook import StagebookError
from stagebook.split import (check_policy, check_proportions, class_balance, split_assignments, straddling_clusters)

PROPS = {"train": 0.7, "valid": 0.15, "test": 0.15}


def items(n: int, start: int = 0, classes: int = 3) -> pd.DataFrame:
    ids = range(start, start + n)
    return pd.DataFrame({"path": [f"x/{i}.png" for i in ids], "label": [str(i % classes) for i in ids],
                         "group": "", "sha256": [f"{i:064x}" for i in ids], "cluster": "", "status": "ok"})


def test_same_data_in_any_order_gives_the_same_split():
    m = items(5000)
    a = split_assignments(m, PROPS, 0).set_index("path").split
    b = split_assignments(m.sample(frac=1, random_state=3), PROPS, 0).set_index("path").split
    assert (a == b.reindex(a.index)).all()
    assert not (a == split_assignments(m, PROPS, 1).set_index("path").split.reindex(a.index)).all(), "the seed matters"


def test_every_class_meets_the_proportions():
    s = split_assignments(items(3000, classes=7), PROPS, 0)
    assert class_balance(s, PROPS).max_deviation_points.max() < 1.0


def test_adding_ten_percent_moves_no_item_and_keeps_balance():
    old = split_assignments(items(1000), PROPS, 0)
    grown = split_assignments(items(1100), PROPS, 0, previous=old)
    merged = old.merge(grown, on="path", suffixes=("_old", "_new"))
    assert len(merged) == 1000 and (merged.split_old == merged.split_new).all()
    share = grown.split.value_counts(normalize=True)
    assert all(abs(share[k] - v) < 0.01 for k, v in PROPS.items())


def test_changed_proportions_still_move_nothing_out_of_test():
    old = split_assignments(items(1000), PROPS, 0)
    new = split_assignments(items(1200), {"train": 0.9, "valid": 0.05, "test": 0.05}, 0, previous=old)
    merged = old.merge(new, on="path", suffixes=("_old", "_new"))
    assert (merged.split_old == merged.split_new).all()


def test_groups_and_clusters_never_straddle_splits():
    m = items(3000)
    m["group"] = [f"g{i // 5}" if i % 2 else "" for i in range(3000)]
    m["cluster"] = [f"dup:{i // 3}" if i % 7 == 0 else "" for i in range(3000)]
    s = split_assignments(m, PROPS, 0)
    assert straddling_clusters(s) == 0
    assert (s[s.group != ""].groupby("group").split.nunique() == 1).all()


def test_a_new_near_copy_of_a_test_item_joins_test():
    old = split_assignments(items(300), PROPS, 0)
    test_item = old[old.split == "test"].iloc[0]
    copy = items(1, start=999)
    grown = pd.concat([old.drop(columns=["unit", "split"]), copy], ignore_index=True)
    grown.loc[grown.path.isin([test_item.path, copy.path[0]]), "cluster"] = "dup:abc"
    new = split_assignments(grown, PROPS, 0, previous=old).set_index("path")
    assert new.split[copy.path[0]] == "test" and straddling_clusters(new.reset_index()) == 0


def test_removed_items_are_kept_as_missing_and_return_to_their_split():
    old = split_assignments(items(100), PROPS, 0)
    shrunk = split_assignments(items(90), PROPS, 0, previous=old)
    assert len(shrunk) == 100 and (shrunk.status == "missing").sum() == 10
    back = split_assignments(items(100), PROPS, 0, previous=shrunk)
    assert (back.set_index("path").split == old.set_index("path").split.reindex(back.path)).all()


@pytest.mark.parametrize("props", [{"train": 0.7, "valid": 0.2, "test": 0.2}, {"train": 1.0, "valid": 0.0},
                                   {"train": "a", "valid": 0, "test": 0}, {"train": 1.2, "valid": -0.2, "test": 0}])
def test_bad_proportions_are_refused(props):
    with pytest.raises(StagebookError, match="params/01_data_document.yaml: split proportions"):
        check_proportions(props, "params/01_data_document.yaml")


def test_changing_split_settings_needs_the_flag(tmp_path: Path):
    policy = tmp_path / "split_policy.json"
    policy.write_text(json.dumps({"proportions": PROPS, "seed": 0}))
    assert check_policy(policy, PROPS, 0, False, "p.yaml") is False
    with pytest.raises(StagebookError, match="p.yaml: split settings changed .* set allow_split_change: true"):
        check_policy(policy, {"train": 0.8, "valid": 0.1, "test": 0.1}, 0, False, "p.yaml")
    with pytest.raises(StagebookError, match="split settings changed"):
        check_policy(policy, PROPS, 1, False, "p.yaml")
    assert check_policy(policy, {"train": 0.8, "valid": 0.1, "test": 0.1}, 0, True, "p.yaml") is True


def test_a_chain_of_near_copies_stays_in_one_split_though_its_clusters_do_not_chain():
    "a~b and b~c are verified, a~c is not: two clusters, one split unit, and no near pair in two splits."
    from stagebook.split import cross_split_pairs

    m = items(600)
    chain = m.path[:3].tolist()
    for seed in range(20):  # whatever the hash order, the chain lands together
        m["cluster"] = ""
        m.loc[m.path.isin(chain[:2]), "cluster"] = "dup:ab"
        m.loc[m.path == chain[2], "cluster"] = ""
        m["near_unit"] = np.where(m.path.isin(chain), "near:abc", "")
        s = split_assignments(m, PROPS, seed)
        near = pd.DataFrame({"path_a": chain[:2], "path_b": chain[1:], "distance": [0.001, 0.002]})
        assert s.set_index("path").split[chain].nunique() == 1
        assert cross_split_pairs(s, near).empty
    s["split"] = np.where(s.path == chain[2], "test", np.where(s.path.isin(chain[:2]), "train", s.split))
    apart = cross_split_pairs(s, near)
    assert apart[["path_a", "path_b"]].values.tolist() == [[chain[1], chain[2]]]
