"""`stagebook new` and `stagebook update`: projects rendered from the template, and template updates merged into them.

The template is this repository: its worked example *is* the template. copier renders it at a git ref (leaving the
toolkit's source, tests and benchmarks behind, see copier.yml); `customise` then makes the copy the team's own
(package name, pyproject, README, Colab URL, the digits removed with `example: none`) and puts the toolkit's wheel in
`wheels/`, so the project depends on stagebook at one pinned version instead of carrying its source.

An update renders the template twice, at the project's recorded version (base) and at the new one, then merges
base -> new into the team's files three ways: `git merge-file` for text, nbdime's cell-wise merge for notebooks.
A conflict never writes markers into a file: the team's file stays, and the template's version goes to
`update-review/` beside a list of what to review. Every notebook stays valid JSON.
"""
from __future__ import annotations

import filecmp
import os
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from . import __version__, colab, notebooks
from .errors import StagebookError
from .project import ANSWERS_FILE

TEMPLATE_ENV = "STAGEBOOK_TEMPLATE"  # where `stagebook new` finds the template when --template is not given
EXAMPLE_PACKAGE = "projectlib"  # the worked example's nbdev package, renamed in every new project
REVIEW_DIR = "update-review"
PYPROJECT_MARKER = "# ---- The project's settings"
EXAMPLES = ("digits", "none")


@dataclass(frozen=True)
class Answers:
    "What a project was rendered with; stored in .copier-answers.yml beside `_src_path` and `_commit`."
    project_title: str
    package: str
    example: str = "digits"
    repo_url: str = ""

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.project_title.lower()).strip("-") or self.package


def package_name(title: str) -> str:
    "A Python identifier from a title: 'Leaf disease (v2)' -> 'leaf_disease_v2'."
    name = re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")
    return name if name and not name[0].isdigit() else f"project_{name}".rstrip("_")


def check_answers(answers: Answers) -> None:
    if not answers.package.isidentifier() or answers.package in {"stagebook", "test", "tests"}:
        raise StagebookError(f"--package {answers.package!r}: not usable as the project's Python package; give a"
                             " lower-case identifier such as leaf_disease (not stagebook or tests).")
    if answers.example not in EXAMPLES:
        raise StagebookError(f"--example {answers.example!r}: expected one of {', '.join(EXAMPLES)}.")


def default_source() -> str:
    "$STAGEBOOK_TEMPLATE, else the repository this toolkit's source lives in (an editable install of the template)."
    if os.environ.get(TEMPLATE_ENV):
        return os.environ[TEMPLATE_ENV]
    here = Path(__file__).resolve().parents[2]
    if (here / "copier.yml").is_file():
        return str(here)
    raise StagebookError(f"no template given: pass --template PATH_OR_GIT_URL (the stagebook repository) or set {TEMPLATE_ENV}.")


# ---- rendering -------------------------------------------------------------------------------------------------

def render(source: str, dest: Path, answers: Answers, ref: str | None = None) -> str:
    "copier renders the template at `ref` (None: latest tag, else HEAD with uncommitted changes) into `dest`; returns its version."
    import warnings

    import copier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # copier warns that a dirty local template's changes are included: intended
        try:
            worker = copier.run_copy(source, str(dest), data=asdict(answers), vcs_ref=ref, defaults=True, quiet=True,
                                     overwrite=True)
        except Exception as err:  # copier's own errors name no file; say which template and ref failed
            raise StagebookError(f"{source}: copier could not render the template at {ref or 'its latest version'}"
                                 f" ({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''});"
                                 " check --template and --ref.") from None
    version = worker.template.commit or __version__
    customise(dest, answers)
    _write_answers(dest, answers, source, version)
    return version


def customise(dest: Path, answers: Answers) -> None:
    "Make a rendered copy the team's: package name, pyproject, README, Colab URL, and no digits with example none."
    (dest / "src" / EXAMPLE_PACKAGE).rename(dest / "src" / answers.package)
    word = re.compile(rf"\b{EXAMPLE_PACKAGE}\b")
    for path in dest.rglob("*"):
        if path.is_file() and path.suffix in {".ipynb", ".py", ".yaml", ".yml", ".md", ".toml", ".texw"}:
            text = path.read_text(encoding="utf-8")
            if word.search(text):
                path.write_text(word.sub(answers.package, text), encoding="utf-8")
    _write_pyproject(dest, answers)
    (dest / "README.md").write_text(project_readme(answers), encoding="utf-8")
    page = dest / "project_page.md"
    page.write_text(re.sub(r"^project: .*$", f"project: {answers.project_title}", page.read_text(encoding="utf-8"),
                           count=1, flags=re.M), encoding="utf-8")
    set_repo_url(dest, answers.repo_url)
    from .submission import write_placeholder
    write_placeholder(dest)  # the sealed stage's DVC dependency: nothing submitted yet
    if answers.example == "none":
        _remove_example(dest)


def _write_pyproject(dest: Path, answers: Answers) -> None:
    "The project's own [project] table over the template's settings (everything below the marker line)."
    path = dest / "pyproject.toml"
    text = path.read_text(encoding="utf-8")
    if PYPROJECT_MARKER not in text:
        raise StagebookError(f"{path}: the template's pyproject lacks the line '{PYPROJECT_MARKER} ...'; restore it.")
    settings = text[text.index(PYPROJECT_MARKER):].split("\n", 1)[1]
    settings = re.sub(r'^experiment = ".*"$', f'experiment = "{answers.slug}"', settings, count=1, flags=re.M)
    head = f'''[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

# The project's own package, written by nbdev-export from the notebooks. stagebook, the toolkit, is pinned here
# and installed from wheels/ by `make setup` (or by the notebooks' Colab set-up cell).
[project]
name = "{answers.slug}"
version = "0.1.0"
description = "{answers.project_title}"
requires-python = ">=3.10"
dependencies = ["stagebook=={__version__}"]

[tool.setuptools.packages.find]
where = ["src"]
include = ["{answers.package}*"]

{PYPROJECT_MARKER}: kept from the template by `stagebook update`. ----
'''
    path.write_text(head + settings, encoding="utf-8")


def set_repo_url(root: Path, url: str) -> None:
    "Fill the project's git URL into every stage notebook's Colab set-up cell."
    for path in sorted((root / "nbs").glob("*.ipynb")):
        nb = notebooks.read(path)
        cells = [c for c in nb["cells"] if c.get("cell_type") == "code" and colab.is_setup_cell("".join(c["source"]))]
        for cell in cells:
            cell["source"] = colab.setup_cell(url).splitlines(True)
        if cells:
            notebooks.write_clean(nb, path)


def _remove_example(dest: Path) -> None:
    "example none: no digits stage, data, literature rows or relabels; stage 01 reads data/raw, which the team fills."
    from .datause import EXAMPLE_SOURCE, empty_example_tables, remove_example_stage, set_data_dependencies

    remove_example_stage(dest)
    set_data_dependencies(dest, [EXAMPLE_SOURCE], ["data/raw"])
    data = dest / "params" / "data.yaml"
    data.write_text(data.read_text(encoding="utf-8").replace(f"source: {EXAMPLE_SOURCE}", "source: data/raw")
                    .replace(f"root: {EXAMPLE_SOURCE}", "root: data/raw"), encoding="utf-8")
    empty_example_tables(dest)
    raw = dest / "data" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "README.md").write_text(
        "Put your images here, one sub-folder per class (data/raw/cat/001.png, data/raw/dog/002.jpg, ...), then run\n"
        "`stagebook data use data/raw`; or run `stagebook data use` on a folder or CSV manifest elsewhere.\n",
        encoding="utf-8")


def _write_answers(dest: Path, answers: Answers, source: str, version: str) -> None:
    record = {"_commit": version, "_src_path": source, **asdict(answers)}
    (dest / ANSWERS_FILE).write_text("# Written by `stagebook new`; `stagebook update` reads it. Do not edit by hand.\n"
                                     + yaml.safe_dump(record, sort_keys=True), encoding="utf-8")


def read_answers(root: Path) -> tuple[Answers, str, str]:
    "(answers, template source, template version) of a rendered project."
    path = root / ANSWERS_FILE
    if not path.is_file():
        raise StagebookError(f"{path}: missing; `stagebook update` works on projects made by `stagebook new`.")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    try:
        answers = Answers(**{k: data[k] for k in ("project_title", "package", "example", "repo_url")})
    except KeyError as err:
        raise StagebookError(f"{path}: lacks {err.args[0]!r}; restore the file from git.") from None
    return answers, str(data.get("_src_path", "")), str(data.get("_commit", ""))


# ---- the toolkit wheel -----------------------------------------------------------------------------------------

@contextmanager
def _checkout(source: str, ref: str | None):
    "The template's files at `ref`: the working tree itself for a local template without a ref, else a temporary clone."
    if ref is None and Path(source).is_dir():
        yield Path(source)
        return
    with tempfile.TemporaryDirectory(prefix="stagebook-template-") as tmp:
        _run(["git", "clone", "--quiet", source, tmp], "clone the template")
        if ref:
            _run(["git", "-C", tmp, "checkout", "--quiet", ref], f"check out {ref}")
        yield Path(tmp)


def build_wheel(source: str, ref: str | None, out: Path) -> Path:
    "The toolkit's wheel, built from the template's source at `ref` into `out` (replacing any older one there)."
    with _checkout(source, ref) as tree, tempfile.TemporaryDirectory(prefix="stagebook-wheel-") as tmp:
        if not (tree / "src" / "stagebook").is_dir():
            raise StagebookError(f"{source}: no src/stagebook at {ref or 'the working tree'}; is it the stagebook repository?")
        shutil.copy(tree / "pyproject.toml", tmp)  # build from a copy: nothing is written into the template
        shutil.copytree(tree / "src" / "stagebook", Path(tmp) / "src" / "stagebook",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        built = Path(tmp) / "dist"
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
              "--disable-pip-version-check", "-w", str(built), tmp], "build the stagebook wheel",
             env={**os.environ, "SOURCE_DATE_EPOCH": "315532800"})  # the same source builds the same bytes
        wheel = next(built.glob("stagebook-*.whl"))
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("stagebook-*.whl"):
            old.unlink()
        return Path(shutil.copy(wheel, out / wheel.name))


def _run(cmd: list[str], what: str, cwd: Path | None = None, env: dict | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise StagebookError(f"could not {what}: {detail[-1] if detail else 'exit ' + str(done.returncode)}")
    return done.stdout


# ---- stagebook new ---------------------------------------------------------------------------------------------

def new(dest: Path, title: str, package: str | None = None, example: str = "digits", repo_url: str = "",
        source: str | None = None, ref: str | None = None, git: bool = True) -> Path:
    "Render a new project into `dest`, with the toolkit wheel, the exported package, git and notebook-aware drivers."
    dest = Path(dest).resolve()
    if dest.exists() and any(dest.iterdir()):
        raise StagebookError(f"{dest}: exists and is not empty; choose a new folder for the project.")
    answers = Answers(title, package or package_name(title), example, repo_url)
    check_answers(answers)
    source = source or default_source()
    render(source, dest, answers, ref)
    build_wheel(source, ref, dest / "wheels")
    export_package(dest)
    if git:
        _run(["git", "init", "--quiet"], "initialise git", dest)
        configure_git(dest)
        _run(["git", "add", "-A"], "stage the first commit", dest)
        _run(["git", "-c", "user.name=stagebook", "-c", "user.email=stagebook@localhost", "commit", "--quiet", "-m",
              f"New stagebook project: {title} (template {read_answers(dest)[2]})"], "make the first commit", dest)
    return dest


def export_package(root: Path) -> None:
    "nbdev-export: the project's package from its notebooks, so src/ matches nbs/ from the first commit."
    exe = Path(sys.executable).parent / "nbdev-export"
    _run([str(exe) if exe.is_file() else "nbdev-export"], "export the package with nbdev", root)


def configure_git(root: Path) -> None:
    """nbdime's notebook-aware diff and merge drivers: .gitattributes (committed) and .git/config (which
    `make setup` repeats in every clone)."""
    exe = Path(sys.executable).parent / "nbdime"
    _run([str(exe) if exe.is_file() else "nbdime", "config-git", "--enable"], "configure nbdime's git drivers", root)


def project_readme(answers: Answers) -> str:
    "The new project's README: what to do first."
    first = ("`make run` runs the whole pipeline on the digits example and writes the PDFs under `reports/`; then"
             " replace the digits with your data: `stagebook data use PATH` (a folder or CSV manifest)." if answers.example == "digits" else
             "Put your images in `data/raw/` (one sub-folder per class), or anywhere, and run `stagebook data use PATH`"
             " (a folder or a CSV manifest with `path,label` columns); `make run` says so in one line until you do.")
    badges = ""
    match = re.match(r"(?:https://github\.com/|git@github\.com:)([^/]+/[^/]+?)(?:\.git)?/?$", answers.repo_url)
    if match:
        badges = "\n".join(f"[![Open {n} in Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
                           f"(https://colab.research.google.com/github/{match.group(1)}/blob/main/nbs/{n}.ipynb)"
                           for n in ("00_problem_page", "01_data_document", "02_baseline", "03_literature_notes",
                                     "04_tuning", "05_error_analysis", "06_sealed_test")) + "\n"
    return f"""# {answers.project_title}

A stagebook project: numbered stage notebooks in `nbs/`, each run by papermill with `params/`, tracked in MLflow,
chained by DVC, leaving a deliverable under `reports/`. The toolkit is stagebook {__version__} (`wheels/`); the
project's own code is the `{answers.package}` package, exported from the notebooks by nbdev into `src/{answers.package}/`.

{badges}
## First steps

```sh
make run    # installs what is missing (.venv, TeX Live), then runs the pipeline (dvc repro)
make test   # the project's own checks: notebooks, params and pipeline agree; nbdev export is current
```

{first}

1. Write the problem and its targets in `project_page.md` (the YAML front matter is machine-read).
2. Answer the datasheet's questions in `data_doc.md`; stage 01 fills in its generated block.
3. Work on a stage: `make lab` (JupyterLab; saving keeps notebooks clean), `stagebook run 04 --set epochs=3`,
   `dvc repro`. Add a stage with `stagebook stage new 07_name`.
4. Take later template versions with `stagebook update` (it lists what to review; notebooks are merged cell-wise).

Colab: open a notebook from your git host in Colab, set `REPO_URL` in its first cell (or render the project with
`stagebook new --repo-url URL`), run that cell, then the notebook.
"""


# ---- stagebook update ------------------------------------------------------------------------------------------

@dataclass
class UpdateReport:
    old: str
    new: str
    updated: list[str]
    merged: list[str]
    added: list[str]
    removed: list[str]
    conflicts: list[str]
    kept: list[str]

    def lines(self) -> list[str]:
        out = [f"template {self.old} -> {self.new}"]
        for label, paths in (("updated", self.updated), ("merged (both changed)", self.merged), ("added", self.added),
                             ("removed", self.removed), ("kept yours (you removed or changed it)", self.kept)):
            out += [f"  {label}: {p}" for p in paths]
        out += [f"  REVIEW {p}: both changed the same lines; yours is kept there"
                f"{' (the template changed other cells too, merged)' if p.endswith('.ipynb') else ''};"
                f" the template's version is {REVIEW_DIR}/{p}" for p in self.conflicts]
        return out


def _files(tree: Path, skip: set[str]) -> set[str]:
    return {p.relative_to(tree).as_posix() for p in tree.rglob("*")
            if p.is_file() and not any(p.relative_to(tree).as_posix().startswith(s) for s in skip)}


def update(root: Path, ref: str | None = None, source: str | None = None) -> UpdateReport:
    "Bring the template from the project's recorded version to `ref` (default: the template's latest), three ways."
    answers, recorded_source, old = read_answers(root)
    source = source or recorded_source or default_source()
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], "read git status", root).strip()
    if dirty:
        raise StagebookError(f"{root}: uncommitted changes ({dirty.splitlines()[0].strip()} ...); commit or stash them"
                             " first, so the update can be reviewed and undone with git.")
    with tempfile.TemporaryDirectory(prefix="stagebook-update-") as tmp:
        base, theirs = Path(tmp) / "base", Path(tmp) / "new"
        render(source, base, answers, old)
        new_version = render(source, theirs, answers, ref)
        build_wheel(source, ref, theirs / "wheels")
        skip = {f"src/{answers.package}/", ANSWERS_FILE, "README.md", "wheels/"}  # regenerated or the team's own
        report = UpdateReport(old, new_version, [], [], [], [], [], [])
        for rel in sorted(_files(base, skip) | _files(theirs, skip)):
            _update_one(rel, base / rel, root / rel, theirs / rel, root, report)
        shutil.copy(theirs / ANSWERS_FILE, root / ANSWERS_FILE)
        old_wheels, new_wheel = sorted((root / "wheels").glob("stagebook-*.whl")), next((theirs / "wheels").glob("*.whl"))
        if [w.name for w in old_wheels] != [new_wheel.name] or not _same(old_wheels[0], new_wheel):
            for wheel in old_wheels:
                wheel.unlink()
            shutil.copy(new_wheel, root / "wheels" / new_wheel.name)
            report.updated.append(f"wheels/{new_wheel.name}")
    export_package(root)
    return report


def _same(a: Path, b: Path) -> bool:
    return a.is_file() and b.is_file() and filecmp.cmp(a, b, shallow=False)


def _update_one(rel: str, base: Path, mine: Path, theirs: Path, root: Path, report: UpdateReport) -> None:
    if not theirs.exists():  # the template removed it
        if _same(base, mine):
            mine.unlink()
            report.removed.append(rel)
        elif mine.exists():
            report.kept.append(rel)
        return
    if _same(base, theirs) or _same(mine, theirs):
        return  # the template did not change it, or the team already has the new version
    if not mine.exists():
        if base.exists():
            report.kept.append(rel)  # the team deleted it on purpose
        else:
            mine.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(theirs, mine)
            report.added.append(rel)
        return
    if not base.exists() or _same(base, mine):
        if base.exists():
            shutil.copy(theirs, mine)
            report.updated.append(rel)
        else:
            _to_review(rel, theirs, root, report)  # both added a file of that name
        return
    merged = _merge_notebook(base, mine, theirs) if rel.endswith(".ipynb") else _merge_text(base, mine, theirs)
    if merged:
        report.merged.append(rel)
    else:
        _to_review(rel, theirs, root, report)


def _to_review(rel: str, theirs: Path, root: Path, report: UpdateReport) -> None:
    target = root / REVIEW_DIR / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(theirs, target)
    report.conflicts.append(rel)


def _merge_text(base: Path, mine: Path, theirs: Path) -> bool:
    "git merge-file's three-way merge; False (and `mine` untouched) when it conflicts or the file is not text."
    try:
        for path in (base, mine, theirs):
            path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return False
    done = subprocess.run(["git", "merge-file", "-p", str(mine), str(base), str(theirs)], capture_output=True)
    if done.returncode != 0:
        return False
    mine.write_bytes(done.stdout)
    return True


def _merge_notebook(base: Path, mine: Path, theirs: Path) -> bool:
    """nbdime's cell-wise merge, stored clean and validated. True when it merged cleanly; on a conflict the team's
    side wins in the conflicting cells (the template's other changes still apply) and the caller asks for a review."""
    from argparse import Namespace

    import nbformat
    from nbdime.merging import merge_notebooks

    books = [nbformat.read(p, as_version=4) for p in (base, mine, theirs)]
    inline = Namespace(merge_strategy="inline", input_strategy=None, output_strategy=None, ignore_transients=True,
                       log_level="WARNING")
    _, decisions = merge_notebooks(*books, args=inline)
    clean = not any(d.conflict for d in decisions)
    merged, _ = merge_notebooks(*books, args=Namespace(**{**vars(inline), "merge_strategy": "use-local"}))
    nbformat.validate(merged)
    notebooks.write_clean(merged, mine)
    return clean
