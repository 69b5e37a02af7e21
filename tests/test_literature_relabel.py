"""The literature file's validation, and reviewed relabels read back by the data stage."""
import pandas as pd
import pytest

from stagebook import StagebookError
from stagebook.literature import REQUIRED, load_literature
from stagebook.relabel import apply_relabels, read_relabels

HEADER = ",".join(REQUIRED)
GOOD = 'A (2020),cnn,digits,accuracy,0.97,1 GPU hour,"easy, one script",worth trying'


def _lit(tmp_path, *rows, header=HEADER):
    path = tmp_path / "literature.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_a_valid_literature_file_loads_with_numeric_values(tmp_path):
    notes = load_literature(_lit(tmp_path, GOOD, 'B,svm,digits,Accuracy,0.9,CPU,hard,"needs, data"'))
    assert notes.value.tolist() == [0.97, 0.9] and notes.metric.tolist() == ["accuracy", "accuracy"]


@pytest.mark.parametrize("rows, header, message", [
    ((GOOD,), "citation,approach,dataset,metric,value", r"missing column\(s\) \['compute', 'feasibility', 'comments'\]"),
    (('A,cnn,digits,accuracy,97%,x,y,z',), HEADER, "row 2 has a non-numeric value '97%'"),
    ((GOOD, 'B,cnn,digits,accuracy,97,x,y,z'), HEADER, r"row 3 reports accuracy = 97.0, outside \[0, 1\]"),
    ((',cnn,digits,accuracy,0.9,x,y,z',), HEADER, "row 2 has an empty citation"),
    ((), HEADER, "no rows"),
])
def test_literature_mistakes_are_one_line_errors_naming_file_and_row(tmp_path, rows, header, message):
    with pytest.raises(StagebookError, match=message) as err:
        load_literature(_lit(tmp_path, *rows, header=header))
    assert "literature.csv" in str(err.value) and "\n" not in str(err.value)


def test_missing_literature_file_names_the_header_to_write(tmp_path):
    with pytest.raises(StagebookError, match="literature file missing; create it with the header citation,"):
        load_literature(tmp_path / "literature.csv")


def _splits():
    return pd.DataFrame({"path": ["a.png", "b.png", "c.png", "t.png"], "label": ["1", "7", "1", "7"],
                         "split": ["train", "valid", "valid", "test"]})


def _relabels(tmp_path, text):
    path = tmp_path / "relabels.csv"
    path.write_text("path,label,predicted,reviewed_label,reviewer\n" + text)
    return path


def test_reviewed_rows_change_labels_keep_splits_and_remember_the_old_label(tmp_path):
    path = _relabels(tmp_path, "b.png,7,1,1,ann\nc.png,1,7,1,ann\na.png,1,7,,\n")  # c confirmed, a not reviewed yet
    out, changed = apply_relabels(_splits(), read_relabels(path), path)
    assert changed == 1
    assert out.label.tolist() == ["1", "1", "1", "7"] and out.split.tolist() == _splits().split.tolist()
    assert out.relabeled_from.tolist() == ["", "7", "", ""]
    again, changed_again = apply_relabels(out, read_relabels(path), path)  # applying twice changes nothing more
    assert changed_again == 0 and again.relabeled_from.tolist() == ["", "7", "", ""]


@pytest.mark.parametrize("row, message", [
    ("t.png,7,1,1,ann", "t.png is a sealed test item"),
    ("zz.png,7,1,1,ann", "zz.png is not in the data"),
    ("b.png,7,1,one,ann", "b.png has reviewed_label 'one', not a known class"),
    ("b.png,7,1,1,ann\nb.png,7,1,7,bob", "b.png is reviewed more than once"),
])
def test_bad_relabel_rows_stop_with_the_file_and_row(tmp_path, row, message):
    path = _relabels(tmp_path, row + "\n")
    with pytest.raises(StagebookError, match=message) as err:
        apply_relabels(_splits(), read_relabels(path), path)
    assert "relabels.csv" in str(err.value)


def test_no_relabel_file_means_no_change(tmp_path):
    out, changed = apply_relabels(_splits(), read_relabels(tmp_path / "absent.csv"), "absent.csv")
    assert changed == 0 and out.label.tolist() == _splits().label.tolist()
