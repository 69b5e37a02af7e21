"""PDF deliverables: a stage's `reports/templates/NN_name.texw` (LaTeX + Python chunks) woven by Pweave, built by latexmk.

Adding a report to a stage is dropping a template named after it; the runner renders it after the notebook
succeeds. Templates read what the run recorded through `report_context()` and format it with the helpers here.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
from contextlib import redirect_stdout
from pathlib import Path

import pandas as pd

from .errors import StagebookError
from .protocol import REPORT_CONTEXT_VAR

CONTEXT_VAR = REPORT_CONTEXT_VAR
_TEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex(value) -> str:
    "Text made safe for LaTeX: specials escaped, and `--` kept as two hyphens (a command's option, not a dash)."
    return "".join(_TEX_SPECIALS.get(ch, ch) for ch in str(value)).replace("--", "-{}-")


def report_context() -> dict:
    "What the run recorded: stage, params, metrics, lineage, and the folder holding its figures and tables."
    path = os.environ.get(CONTEXT_VAR)
    if not path:
        raise StagebookError(f"{CONTEXT_VAR} is not set: reports are rendered by `stagebook run STAGE`, not by hand.")
    return json.loads(Path(path).read_text())


def lineage_block(ctx: dict) -> str:
    "A LaTeX table of the run's lineage, for the top of every deliverable."
    lin = ctx["lineage"]
    rows = [("Stage", ctx["stage"]), ("Code commit", lin["code_commit"][:12] + (" (uncommitted changes)" if lin["code_dirty"] else "")),
            ("Data version", lin["data_version"]), ("Params hash", lin["params_hash"]),
            ("Model sha256", _model_text(lin)), ("stagebook", lin["stagebook_version"]),
            ("Template", lin.get("template_version", "unknown")), ("Device", _device_text(lin)), ("Run at", ctx["created"])]
    body = "\n".join(rf"{tex(k)} & \texttt{{{tex(v)}}} \\" for k, v in rows)
    return "\\begin{tabular}{ll}\n\\toprule\n" + body + "\n\\bottomrule\n\\end{tabular}"


def _model_text(lin: dict) -> str:
    "`3f2a... (produced)`, or why there is none."
    if lin.get("model_sha256", "none") == "none":
        return "none (this stage neither trains nor loads a model)"
    return lin["model_sha256"][:16] + (f" ({lin['model_role']})" if lin.get("model_role") else "")


def _device_text(lin: dict) -> str:
    "`cpu, torch 2.14.1` or `cuda (NVIDIA H100), torch 2.11.0, CUDA 12.8`."
    device = lin.get("device", "cpu") + (f" ({lin['gpu']})" if lin.get("gpu") else "")
    versions = [f"torch {lin['torch_version']}"] if lin.get("torch_version") else []
    ddp = [f"{lin['world_size']} processes (DDP)"] if int(lin.get("world_size", 1) or 1) > 1 else []
    return ", ".join([device, *versions, *([f"CUDA {lin['cuda_version']}"] if lin.get("cuda_version") else []), *ddp])


def class_table(df: pd.DataFrame, worst_by: str = "f1", top: int = 30, where: str = "tables/per_class.csv") -> str:
    "A per-class table that fits a page: beyond `top` classes, the `top` lowest by `worst_by`, and a note where the rest are."
    if len(df) <= top:
        return table(df)
    shown = df.sort_values([worst_by, df.columns[0]], kind="stable").head(top)
    return (table(shown) + r"\\[0.3em]" + tex(f"The {top} of {len(df)} classes with the lowest {worst_by}; all of them"
                                               f" are in {where} of this stage's run."))


def table(df: pd.DataFrame, float_format: str = "{:.3f}", wrap: dict[str, str] | None = None) -> str:
    "A booktabs LaTeX table from a DataFrame, text escaped, floats formatted; `wrap` columns (name -> width) wrap."
    shown = df.copy()
    for column in shown.columns:
        if pd.api.types.is_float_dtype(shown[column]):
            shown[column] = shown[column].map(float_format.format)
    header = " & ".join(tex(c) for c in shown.columns) + r" \\"
    body = "\n".join(" & ".join(tex(v) for v in row) + r" \\" for row in shown.itertuples(index=False))
    wrap = wrap or {}
    align = "".join(rf">{{\raggedright\arraybackslash}}p{{{wrap[c]}}}" if c in wrap else
                    "r" if pd.api.types.is_numeric_dtype(df[c]) else "l" for c in df.columns)
    return f"\\begin{{tabular}}{{{align}}}\n\\toprule\n{header}\n\\midrule\n{body}\n\\bottomrule\n\\end{{tabular}}"


def figure(ctx: dict, name: str) -> str:
    "Absolute path (LaTeX-safe) of a figure the notebook logged with `stage.log_figure(fig, name)`."
    path = Path(ctx["artifacts_dir"]) / "figures" / f"{name}.png"
    if not path.is_file():
        raise StagebookError(f"{path}: the report asks for figure '{name}', which the notebook did not log;"
                             f" call stage.log_figure(fig, '{name}') in the notebook.")
    return path.as_posix()


PREAMBLE = r"""\documentclass[11pt,a4paper]{article}
\usepackage[margin=2cm]{geometry}
\usepackage{lmodern}
\usepackage[T1]{fontenc}
\usepackage{textcomp}
\usepackage{graphicx}
\usepackage{booktabs}
\usepackage{array}
\usepackage{xcolor}
\usepackage{fancyvrb}
\usepackage[hidelinks,bookmarks=false]{hyperref}  % no outline (the headings are starred): one LaTeX pass, not two
% A heading never ends a page: when less than a few lines' room is left below it, the page ends before it. This
% measures the room left (needspace's \Needspace, inlined: Debian's texlive-latex-recommended lacks needspace).
% needspace's default form offers stretchable glue instead, which made TeX end pages early, before a section whose
% text and table would have fit, whenever a tall figure followed.
\makeatletter
\newcommand{\needspace}[1]{\par\begingroup\setlength{\dimen@}{#1}\dimen@ii\pagegoal\advance\dimen@ii-\pagetotal
  \ifdim\dimen@>\dimen@ii\ifdim\dimen@ii>\z@\vfil\fi\break\fi\endgroup}
\let\sb@section\section\renewcommand{\section}{\needspace{10\baselineskip}\sb@section}
\let\sb@subsection\subsection\renewcommand{\subsection}{\needspace{8\baselineskip}\sb@subsection}
\makeatother
"""


def preamble(title: str, author: str, ctx: dict) -> str:
    "The document class, packages and title every stage deliverable shares (print it in the template's first chunk)."
    return PREAMBLE + rf"\title{{{tex(title)}}}\author{{{tex(author)}}}\date{{{tex(ctx['created'])}}}"


TEXTWIDTH_IN = (21.0 - 2 * 2.0) / 2.54  # A4 with PREAMBLE's 2 cm margins
MIN_PRINT_PT = 7.0


def print_width(png: Path | str, width: float) -> float:
    """The fraction of the text width to print `png` at: `width`, or wider when its smallest text would print below
    7 pt (read from the size record `stage.log_figure` writes beside it); a figure that cannot fit is an error."""
    record = Path(png).with_suffix(".json")
    if not record.is_file():
        return width
    meta = json.loads(record.read_text())
    need = MIN_PRINT_PT * meta["width_in"] / (meta["min_font_pt"] * TEXTWIDTH_IN)
    if need > 1.0 + 1e-9:
        raise StagebookError(f"{png}: its smallest text ({meta['min_font_pt']:g} pt in a figure {meta['width_in']:.1f} in"
                             f" wide) would print below {MIN_PRINT_PT:g} pt even at the full text width"
                             f" ({TEXTWIDTH_IN:.1f} in); make the figure narrower or its text larger in the notebook.")
    return round(min(1.0, max(width, need)), 3)


def include(ctx: dict, name: str, width: float = 0.8) -> str:
    "A centred figure the notebook logged, at `width` of the text width (wider if its text would print below 7 pt)."
    path = figure(ctx, name)
    return rf"\begin{{center}}\includegraphics[width={print_width(path, width)}\textwidth]{{{path}}}\end{{center}}"


def has(ctx: dict, kind: str, name: str) -> bool:
    "Whether the run logged figure or table `name` (phases can be switched off in params)."
    suffix = "png" if kind == "figures" else "csv"
    return (Path(ctx["artifacts_dir"]) / kind / f"{name}.{suffix}").is_file()


def verdict(ok: bool, yes: str, no: str) -> str:
    "Green `yes` or red `no`, in bold."
    return rf"\textcolor{{green!50!black}}{{\textbf{{{tex(yes)}}}}}" if ok else rf"\textcolor{{red!70!black}}{{\textbf{{{tex(no)}}}}}"


def read_table(ctx: dict, name: str) -> pd.DataFrame:
    path = Path(ctx["artifacts_dir"]) / "tables" / f"{name}.csv"
    if not path.is_file():
        raise StagebookError(f"{path}: the report asks for table '{name}', which the notebook did not log;"
                             f" call stage.log_table(df, '{name}') in the notebook.")
    return pd.read_csv(path)


def project_template(root: Path, relative: Path, what: str) -> Path:
    "A report template the project carries (a team edits its layout); one line if it is missing."
    template = Path(root) / relative
    if not template.is_file():
        raise StagebookError(f"{template}: the {what} template is missing; take it from the stagebook template"
                             " (`stagebook update`).")
    return template


def render_pdf(template: Path, pdf: Path, context: dict, workdir: Path) -> Path:
    "Weave `template` with `context` in `workdir`, build it with latexmk, and write `pdf`."
    from pweave import Pweb, rcParams

    workdir.mkdir(parents=True, exist_ok=True)
    ctx_file = workdir / "report_context.json"
    ctx_file.write_text(json.dumps(context, indent=2, default=str))
    source = workdir / "report.texw"
    shutil.copyfile(template, source)
    # Pweave runs the chunks in an in-process kernel; its event loop is dropped, not closed, at exit.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # the kernel's debugger warning, outside `run` too
    previous = os.environ.get(CONTEXT_VAR)
    os.environ[CONTEXT_VAR] = str(ctx_file)
    try:
        rcParams["usematplotlib"] = False  # figures come from the notebook run; no plotting in the report kernel
        with redirect_stdout(io.StringIO()):  # Pweave narrates every chunk; the runner prints one line
            doc = Pweb(str(source), doctype="tex", output=str(workdir / "report.tex"), figdir=str(workdir / "figures"))
            doc.run()
            _raise_on_chunk_error(template, doc.executed)
            doc.format()
            doc.write()
    finally:
        os.environ.pop(CONTEXT_VAR) if previous is None else os.environ.__setitem__(CONTEXT_VAR, previous)
    _latexmk(template, workdir)
    pdf.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(workdir / "report.pdf", pdf)
    return pdf


def _raise_on_chunk_error(template: Path, executed: list[dict]) -> None:
    "Pweave prints a chunk's traceback into the document; a deliverable with a traceback in it is a failure."
    for number, chunk in enumerate(c for c in executed if c.get("type") == "code"):
        for out in chunk.get("result", []):
            if out.get("output_type") == "error":
                raise StagebookError(f"{template}: code chunk {number + 1} raised {out['ename']}: {out['evalue']};"
                                     " fix the template (or the notebook that records what it reads).")


def _latexmk(template: Path, workdir: Path) -> None:
    if not shutil.which("latexmk"):
        raise StagebookError("latexmk: not found; install TeX Live (`make tex`, or apt-get install latexmk"
                             " texlive-latex-recommended texlive-fonts-recommended lmodern).")
    done = subprocess.run(["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "report.tex"],
                          cwd=workdir, capture_output=True, text=True)
    if done.returncode != 0:
        log = workdir / "report.log"
        text = log.read_text(errors="replace") if log.is_file() else done.stdout
        first = next((ln for ln in text.splitlines() if ln.startswith("!")), "see the log")
        raise StagebookError(f"{template}: LaTeX failed: {first.lstrip('! ')}; full log in {log}.")


_INLINE = re.compile(r"(\*\*[^*]+\*\*|\*[^*\s][^*]*\*|`[^`]+`|!?\[[^\]]*\]\([^)]+\))")


def _inline(text: str) -> str:
    "Markdown inline marks (bold, italic, code, links) to LaTeX, everything else escaped."
    out = []
    for part in _INLINE.split(text):
        if part.startswith("**") and part.endswith("**") and len(part) > 4:
            out.append(rf"\textbf{{{_inline(part[2:-2])}}}")
        elif part.startswith("`") and part.endswith("`") and len(part) > 2:
            out.append(rf"\texttt{{{tex(part[1:-1])}}}")
        elif part.startswith("*") and part.endswith("*") and len(part) > 2:
            out.append(rf"\emph{{{_inline(part[1:-1])}}}")
        elif part.startswith("[") and "](" in part:
            out.append(_inline(part[1:part.index("](")]))
        else:
            out.append(tex(part))
    return "".join(out)


def markdown_to_latex(text: str, find_image=lambda ref: None) -> str:
    """The Markdown our documents use (headings, paragraphs, lists, pipe tables, images, emphasis) as LaTeX.

    `find_image(ref)` maps an image reference to a file path, or None to leave the image out."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i].rstrip()
        heading = re.match(r"^(#{1,4})\s+(.*)", line)
        if heading:
            command = {1: "section*", 2: "subsection*", 3: "subsubsection*", 4: "paragraph*"}[len(heading.group(1))]
            out.append(rf"\{command}{{{_inline(heading.group(2))}}}")
            i += 1
        elif line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[i + 1].strip()):
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            header, body = rows[0], rows[2:]
            aligns = "".join("r" if all(re.fullmatch(r"-?[\d.,]+", r[k] if k < len(r) else "") for r in body) and body else "l"
                             for k in range(len(header)))
            out += [r"\begin{center}\small", rf"\begin{{tabular}}{{{aligns}}}", r"\toprule",
                    " & ".join(_inline(c) for c in header) + r" \\", r"\midrule"]
            out += [" & ".join(_inline(c) for c in r) + r" \\" for r in body]
            out += [r"\bottomrule", r"\end{tabular}", r"\end{center}"]
        elif re.match(r"^\s*[-*]\s+", line):
            out.append(r"\begin{itemize}")
            while i < len(lines) and re.match(r"^\s*[-*]\s+", lines[i]):
                out.append(r"\item " + _inline(re.sub(r"^\s*[-*]\s+", "", lines[i].rstrip())))
                i += 1
            out.append(r"\end{itemize}")
        elif re.match(r"^!\[[^\]]*\]\([^)]+\)$", line.strip()):
            ref = line.strip()[line.strip().index("](") + 2:-1]
            path = find_image(ref)
            if path:
                out.append(rf"\begin{{center}}\includegraphics[width={print_width(path, 0.7)}\textwidth]"
                           rf"{{{Path(path).as_posix()}}}\end{{center}}")
            i += 1
        elif not line.strip():
            out.append("")
            i += 1
        else:  # a paragraph: consecutive plain lines, so emphasis may span a line break
            para = [line.strip()]
            i += 1
            while i < len(lines) and lines[i].strip() and not re.match(r"^(#{1,4}\s|\||\s*[-*]\s+|!\[)", lines[i]):
                para.append(lines[i].strip())
                i += 1
            out.append(_inline(" ".join(para)))
    return "\n".join(out)
