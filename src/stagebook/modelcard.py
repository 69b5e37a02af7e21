"""The model card of a registered version (Mitchell et al., "Model Cards for Model Reporting", 2019), as a PDF.

Its eight sections are filled from what the project already records, so nobody writes a fact twice:
- details: the checkpoint's architecture and the version's tags (commit, data, params, seal, toolkit), the gate's
  decisions from the ledger, an override's name and reason;
- intended use, ethical considerations, caveats: the project page's sections of those names (a missing one is
  shown as "to be written by the team");
- factors: stage 05's slice table and weakest classes;
- metrics and evaluation data: stage 06's result on the sealed split, the seal and the test items per class;
- training data: the data document's composition and collection answers, and the train/valid counts.
The PDF carries the version's lineage block and is stored with the version in the registry (`model_card/`).
"""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pandas as pd

from . import registry
from .lineage import file_sha256

CARD_DIR = Path("reports") / "model_card"
TEMPLATE = Path("reports") / "templates" / "model_card.texw"
UNWRITTEN = "*To be written by the team: add a `## {title}` section to {file}.*"


def markdown_sections(path: Path) -> dict[str, str]:
    "A Markdown file's `## ` sections by title (front matter and generated blocks left out)."
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    if text.startswith("---"):
        text = text.split("---", 2)[-1]
    text = re.sub(r"<!-- stagebook:generated.*", "", text, flags=re.S)
    found = {}
    for block in re.split(r"^## ", text, flags=re.M)[1:]:
        title, _, body = block.partition("\n")
        found[title.strip()] = body.strip()
    return found


def _section(sections: dict, titles: tuple[str, ...], file: str) -> str:
    text = "\n\n".join(sections[t] for t in titles if sections.get(t))
    return text or UNWRITTEN.format(title=titles[0], file=file)


def _table(name: str, rows: pd.DataFrame, caption: str) -> dict:
    return {"name": name, "caption": caption, "rows": json.loads(rows.to_json(orient="records"))}


def card_context(root: Path, version) -> dict:
    "What the card's template prints: its sections (Markdown and tables), the lineage and the title."
    from .data import load_splits
    from .predictor import load_checkpoint
    from .project_page import load_targets

    root = Path(root).resolve()
    tags = dict(version.tags)
    sha = tags.get("sha256", "")
    _, meta = load_checkpoint(registry.weights(root, version))
    page, doc = markdown_sections(root / "project_page.md"), markdown_sections(root / "data_doc.md")
    targets = load_targets(root / "project_page.md")
    from .promotion import decision_lines
    history = decision_lines(root, sha)

    details = [f"**{registry.model_name(root)}**, version {version.version}; weights sha256 `{sha[:16]}`.",
               f"Architecture `{meta.get('arch', 'small_cnn')}` (width {meta.get('width')}, dropout"
               f" {meta.get('dropout', 0.0)}), reading {meta.get('channels', 1)}-channel images resized to"
               f" {meta['image_size']}×{meta['image_size']} px; {len(meta['classes'])} classes"
               f"{'; chosen by ' + meta['chosen'] if meta.get('chosen') else ''}.",
               f"Aliases now: {', '.join(getattr(version, 'aliases', []) or []) or 'none'}."]
    if history:
        details += ["", "Gate decisions:", ""] + [f"- {line}" for line in history]
    if tags.get("override_reason"):
        details += ["", f"**Promoted by override** ({tags.get('override_by', '')}): {tags['override_reason']}"]
    for runtime in ("torchscript", "onnx"):
        if tags.get(f"{runtime}_sha256"):
            details.append(f"\nExported to {runtime} (sha256 `{tags[f'{runtime}_sha256'][:16]}`; max probability"
                           f" difference {tags.get(f'{runtime}_parity', '?')}).")

    sections = [{"title": "Model details", "text": "\n".join(details)},
                {"title": "Intended use", "text": _section(page, ("Who uses the result, and how", "Problem"),
                                                          "project_page.md")
                 + ("\n\n**Out of scope.** " + page["Out of scope"] if page.get("Out of scope") else "")}]

    errors = root / "reports" / "05_error_analysis" / "tables"
    factors = {"title": "Factors", "text": "Accuracy by slice of the validation data (stage 05): each recorded"
               " attribute of the items (source, annotator, group size, image size), and the weakest classes.",
               "tables": []}
    if (errors / "slices.csv").is_file():
        slices = pd.read_csv(errors / "slices.csv", dtype={"value": str})
        factors["tables"].append(_table("slices", slices.round(4), "Accuracy by slice (validation)"))
    else:
        factors["text"] = "Stage 05 has not recorded its slices yet; run it (`dvc repro`) and make the card again."
    if (errors / "per_class.csv").is_file():
        per_class = pd.read_csv(errors / "per_class.csv", dtype={"class": str}).sort_values("f1").head(5)
        factors["tables"].append(_table("per_class", per_class.round(4), "The five weakest classes (validation)"))
    sections.append(factors)

    metric = targets.primary_metric
    measures = [("Test " + metric, tags.get("test_accuracy", "")),
                ("95% CI", f"{_short(tags.get('test_ci_low'))} to {_short(tags.get('test_ci_high'))}"
                 if tags.get("test_ci_low") else ""),
                ("Target (project page)", targets.target), ("Latency, batch 1 (ms)", tags.get("latency_ms", "")),
                ("Latency budget (ms)", targets.latency_budget_ms)]
    rows = pd.DataFrame([{"Measure": k, "Value": _short(v)} for k, v in measures if v not in ("", None)])
    sections.append({"title": "Metrics", "text": f"The primary metric is {metric} on the sealed test split, with an"
                     " exact (Clopper-Pearson) 95% confidence interval; latency is the p50 per image at batch 1 on the"
                     " evaluating machine.", "tables": [_table("metrics", rows, "Sealed-test result")]})

    splits = load_splits(root)
    test = splits[splits.split == "test"]
    counts = test.label.value_counts().sort_index().rename_axis("class").reset_index(name="test items")
    sections.append({"title": "Evaluation data", "text": f"The sealed test split: {len(test)} items, sealed as"
                     f" `{tags.get('seal_hash', '')[:16]}`; every read is in the ledger (`stagebook ledger`). It"
                     " was read only for submitted models, and at most once per model.",
                     "tables": [_table("test_counts", counts.head(40), "Test items per class"
                                       + (" (first 40)" if len(counts) > 40 else ""))]})
    train, valid = (splits.split == "train").sum(), (splits.split == "valid").sum()
    sections.append({"title": "Training data", "text": f"{train} training and {valid} validation items (data version"
                     f" `{tags.get('data_version', '')[:16]}`); groups and near-duplicates never straddle splits."
                     " The data document (data_doc.md) holds the generated statistics.\n\n"
                     + _answers(_section(doc, ("Motivation", "Composition", "Collection", "Preprocessing"), "data_doc.md"))})
    sections.append({"title": "Ethical considerations",
                     "text": _section(page, ("Ethical considerations",), "project_page.md")})
    caveats = _section(page, ("Caveats and recommendations", "Caveats"), "project_page.md")
    if (errors / "most_confused.csv").is_file():
        confused = pd.read_csv(errors / "most_confused.csv", dtype={"actual": str, "predicted": str}).head(3)
        if len(confused):
            caveats += "\n\nMost confused on validation (stage 05): " + "; ".join(
                f"{r.actual} read as {r.predicted} ({int(r['count'])})" for _, r in confused.iterrows()) + "."
    sections.append({"title": "Caveats and recommendations", "text": caveats})

    lineage = {"code_commit": tags.get("code_commit", "") or "unknown", "code_dirty": False,
               "data_version": tags.get("data_version", "") or "unknown", "params_hash": tags.get("params_hash", ""),
               "model_sha256": sha, "model_role": f"registered version {version.version}",
               "stagebook_version": tags.get("stagebook_version", "") or "unknown", "template_version": "n/a",
               "device": "cpu"}
    from datetime import datetime, timezone
    return {"stage": "model_card", "root": str(root), "project": targets.project, "name": registry.model_name(root),
            "version": int(version.version), "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "lineage": lineage, "sections": sections, "artifacts_dir": str(root / CARD_DIR)}


def _answers(text: str) -> str:
    "The data document's answers without its questions: the italic parts when a section has them."
    answers = re.findall(r"(?<![*\w])\*([^*]+)\*(?!\*)", text)
    kept = [re.sub(r"\s*See the generated statistics below\.?", "", a).strip() for a in answers]
    return "\n\n".join(f"*{a}*" for a in kept if a) if answers else text


def _short(value) -> str:
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


def write_card(root: Path, version) -> Path:
    "Render the version's card to reports/model_card/v<N>.pdf and store it with the version in the registry."
    from .report import project_template, render_pdf

    root = Path(root).resolve()
    template = project_template(root, TEMPLATE, "model card")
    pdf = root / CARD_DIR / f"v{version.version}.pdf"
    with tempfile.TemporaryDirectory(prefix="stagebook-card-") as tmp:
        render_pdf(template, pdf, card_context(root, version), Path(tmp))
    registry.attach(root, version, pdf, "model_card")
    registry.tag(root, version, "model_card_sha256", file_sha256(pdf))
    return pdf
