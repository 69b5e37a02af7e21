import subprocess
import sys

from conftest import REPO

CHECK = """
import sys
{before}
from stagebook.startup import trim_imports
trim_imports()
import nbformat, papermill
nb = nbformat.read("nbs/00_problem_page.ipynb", as_version=4)
nbformat.validate(nb)  # the notebook schema still checks what it did
print(sys.modules.get("rfc3987_syntax", "absent") is not None and "rfc3987_syntax" in sys.modules)
"""


def _loaded_grammar(before: str = "") -> bool:
    done = subprocess.run([sys.executable, "-c", CHECK.format(before=before)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip() == "True"


def test_the_runner_skips_the_seconds_long_optional_grammar_and_still_validates_notebooks():
    assert not _loaded_grammar()


def test_it_changes_nothing_once_jsonschema_is_loaded():
    # A process that imported jsonschema first keeps what jsonschema found (is the grammar installed here at all?)
    import importlib.util
    installed = importlib.util.find_spec("rfc3987_syntax") is not None
    assert _loaded_grammar("import jsonschema") == installed


def test_every_cli_command_and_the_runner_start_trimmed():
    import inspect

    from stagebook import cli, execute
    assert "trim_imports()" in inspect.getsource(cli.main)
    assert "trim_imports()" in inspect.getsource(execute.run_stage)
