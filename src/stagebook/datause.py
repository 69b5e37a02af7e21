"""`stagebook data use PATH`: point the project at a team's own images in one command, guessing nothing silently.

It validates the source (an image folder with one sub-folder per class, or a CSV manifest), decodes a sample to
infer image size and channels, and writes them with the source and data root into `params/data.yaml`, the one data
config every stage reads. It rewrites stage 01's DVC data dependencies (data outside the repository becomes an
external dependency, which DVC hashes in place), removes the worked example's stage, images, literature rows and
split records, and marks the data document's example answers "to be written by the team". It returns what it
changed and what the team must still write, for the command line to print.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .dataconfig import DATA_FILE, data_file, load_data_config
from .datadoc import ANSWER, END, START, TO_WRITE
from .errors import StagebookError
from .iorw import atomic_write_text
from .manifest import build_manifest

EXAMPLE_SOURCE = "data/raw/digits"  # the worked example's embedded images (`stagebook embed-digits`)
SAMPLE = 400                        # images decoded to infer size and channels
MAX_SIDE = 224                      # the largest image_size inferred: the default recipe trains on a CPU
COLOUR_SHARE = 0.01                 # at least this share of colour images keeps colour (channels: 3)


@dataclass
class Inferred:
    image_size: int
    channels: int
    sampled: int
    colour: int
    median_side: int
    why: list[str] = field(default_factory=list)


@dataclass
class UseReport:
    source: str
    root: str
    items: int
    classes: int
    inferred: Inferred
    changed: list[str] = field(default_factory=list)
    to_write: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        i = self.inferred
        out = [f"stagebook: data: {self.items} items in {self.classes} classes from {self.source} (root {self.root})",
               f"stagebook: inferred from {i.sampled} decoded images: image_size {i.image_size}, channels {i.channels}"
               f" ({i.colour} colour; median side {i.median_side} px){'; ' + '; '.join(i.why) if i.why else ''}"]
        out += [f"stagebook: changed: {c}" for c in self.changed]
        out += [f"stagebook: to write: {w}" for w in self.to_write]
        return out


def project_path(project: Path, path: Path) -> str:
    "`path` as the project's files name it: relative (posix) when inside the project, absolute otherwise."
    path = Path(path).resolve()
    return path.relative_to(project).as_posix() if path.is_relative_to(project) else path.as_posix()


def infer(files: list[Path], seed: int = 0) -> Inferred:
    "Image size (median longer side, at most MAX_SIDE) and channels (3 when colour images are not rare) of a sample."
    from .audit import inspect_image

    rng = np.random.default_rng(seed)
    picked = [files[i] for i in sorted(rng.choice(len(files), size=min(SAMPLE, len(files)), replace=False))]
    found = [f for f in (inspect_image(str(p)) for p in picked) if f.status == "ok"]
    if not found:
        raise StagebookError(f"{picked[0].parent}: none of {len(picked)} sampled files decodes as an image; check the"
                             " source holds images (PNG, JPEG, ...).")
    side = int(np.median([max(f.width, f.height) for f in found]))
    colour = sum(f.colour == "RGB" for f in found)
    why = []
    size = max(4, min(side, MAX_SIDE))
    if size != side:
        why.append(f"image_size capped at {MAX_SIDE}; raise it in {DATA_FILE} if a GPU trains it")
    channels = 3 if colour >= max(1, COLOUR_SHARE * len(found)) else 1
    if channels == 1 and colour:
        why.append(f"{colour} colour image(s) are too rare to keep colour; set channels: 3 to keep it")
    return Inferred(size, channels, len(found), colour, side, why)


def write_data_config(project: Path, source: str, root: str, image_size: int, channels: int) -> None:
    text = (f"# The data every stage reads (stagebook.dataconfig). `stagebook data use PATH` writes this file from your data.\n"
            f"# An image folder (one sub-folder per class) or a CSV manifest with path,label[,group][,source][,annotator].\n"
            f"source: {source}\n"
            f"# Item paths in data/splits.csv, the seal, the PDFs and the relabel queue are relative to this folder.\n"
            f"root: {root}\n"
            f"# Every stage reads images at image_size x image_size.\n"
            f"image_size: {image_size}\n"
            f"# 1: grayscale (colour images are converted, and the data document says how many); 3: RGB.\n"
            f"channels: {channels}\n")
    atomic_write_text(data_file(project), text)


def remove_example_stage(project: Path) -> list[str]:
    "Drop the worked example's `embed_digits` stage, its `vars:` line and its params file from the pipeline."
    pipeline = project / "dvc.yaml"
    text = pipeline.read_text(encoding="utf-8")
    new = re.sub(r"^vars:\n(?:  - .*\n)+\n?", "", text, flags=re.M)
    new = re.sub(r"^  embed_digits:\n(?:(?:    .*)?\n)+?(?=  \S)", "", new, flags=re.M)
    changed = []
    if new != text:
        atomic_write_text(pipeline, new)
        changed.append("dvc.yaml: removed the worked example's embed_digits stage and its vars line")
    params = project / "params" / "embed_digits.yaml"
    if params.is_file():
        params.unlink()
        changed.append("params/embed_digits.yaml: removed")
    return changed


def empty_example_tables(project: Path) -> list[str]:
    "Keep only the header rows of the example's literature notes and reviewed relabels."
    changed = []
    for table in ("literature.csv", "data/relabels.csv"):
        path = project / table
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            if len(lines) > 1:
                atomic_write_text(path, lines[0] + "\n")
                changed.append(f"{table}: removed the worked example's {len(lines) - 1} row(s) (header kept)")
    return changed


def set_data_dependencies(project: Path, old: list[str], new: list[str]) -> list[str]:
    "Stage 01's data dependencies in dvc.yaml: `old` entries out, `new` in (DVC hashes paths outside the repo too)."
    pipeline = project / "dvc.yaml"
    text = pipeline.read_text(encoding="utf-8")
    match = re.search(r"^  01_data_document:\n    cmd: .*\n    deps:\n((?:      - .*\n)+)", text, flags=re.M)
    if not match:
        raise StagebookError(f"{pipeline}: no deps list under stage 01_data_document; add `deps:` with the notebook"
                             " and rerun `stagebook data use`.")
    lines = match.group(1).splitlines(True)
    kept = [ln for ln in lines if ln.split("#")[0].strip()[2:].strip() not in old + new]
    added = [f"      - {p}   # the data (stagebook data use)\n" for p in dict.fromkeys(new)]
    atomic_write_text(pipeline, text[:match.start(1)] + "".join(kept[:1] + added + kept[1:]) + text[match.end(1):])
    return [f"dvc.yaml: stage 01 depends on {', '.join(dict.fromkeys(new))}"
            + (" (outside the repository: DVC hashes it in place)" if any(Path(p).is_absolute() for p in new) else "")]


def mark_example_answers(doc: Path) -> list[str]:
    "The data document's example answers (italic text in each question's section) become 'to be written by the team'."
    if not doc.is_file():
        return []
    text = doc.read_text(encoding="utf-8")
    head, sep, rest = text.partition(START)
    marked = ANSWER.sub(TO_WRITE, head)
    if sep:
        _, _, tail = rest.partition(END)
        rest = "\n*Stage 01 writes the statistics of the new data here.*\n" + END + tail
    if marked + sep + rest == text:
        return []
    atomic_write_text(doc, marked + sep + rest)
    return [f"{doc.name}: the worked example's answers are marked \"to be written by the team\""]


def clear_example_records(project: Path) -> list[str]:
    "The example's split, seal, ledger and test results, and its submission: records of the digits, not of the team's data."
    from .seal import clear_split_records

    removed = clear_split_records(project)
    return [f"removed the worked example's split records: {', '.join(removed)}"] if removed else []


def use_data(project: Path, path: str | Path, image_size: int | None = None, channels: int | None = None) -> UseReport:
    "Point the project at `path` (a folder or CSV manifest): validate, infer, write the config; see the module doc."
    project = Path(project).resolve()
    given = Path(path)
    source = (project / given).resolve() if not given.is_absolute() else given.resolve()
    if not source.exists():
        raise StagebookError(f"{path}: not found; give an image folder (one sub-folder per class) or a CSV manifest"
                             " with path,label columns.")
    manifest = build_manifest(source, project)  # validates every row and file (absolute paths outside the project)
    files = [project / p for p in manifest.path]  # an absolute path stays itself
    bases = [source] if source.is_dir() else [source.parent, *{f.parent for f in files}]
    root = Path(os.path.commonpath([str(b) for b in bases]))
    inferred = infer(files)
    if image_size is not None:
        inferred.image_size, inferred.why = image_size, [*inferred.why, f"image_size {image_size} as given"]
    if channels is not None:
        inferred.channels, inferred.why = channels, [*inferred.why, f"channels {channels} as given"]

    old = load_data_config(project) if data_file(project).is_file() else None
    was_example = old is not None and old.source == EXAMPLE_SOURCE
    src_text, root_text = project_path(project, source), project_path(project, root)
    changed = []
    write_data_config(project, src_text, root_text, inferred.image_size, inferred.channels)
    changed.append(f"{DATA_FILE}: source {src_text}, root {root_text}, image_size {inferred.image_size},"
                   f" channels {inferred.channels}")
    old_deps = [EXAMPLE_SOURCE, "data/raw"] + ([old.source, old.root] if old else [])
    changed += set_data_dependencies(project, old_deps, [src_text] + ([root_text] if root_text != src_text else []))
    changed += remove_example_stage(project)
    if was_example or (project / "params" / "embed_digits.yaml").exists():
        changed += empty_example_tables(project)
        changed += clear_example_records(project)
        example = project / EXAMPLE_SOURCE
        if example.is_dir() and not source.is_relative_to(example.resolve()):
            shutil.rmtree(example)
            changed.append(f"{EXAMPLE_SOURCE}: removed the worked example's images")
        changed += mark_example_answers(project / "data_doc.md")
    to_write = ["project_page.md: the problem, who uses the result, and the targets in its front matter",
                "data_doc.md: the datasheet's answers (stage 01 writes the statistics)",
                "literature.csv: results from papers on comparable data (stage 03 reads them)"]
    return UseReport(src_text, root_text, len(manifest), manifest.label.nunique(), inferred, changed, to_write)
