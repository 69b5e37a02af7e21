"""A stage's parameters: its `params/NN_name.yaml` plus `key=value` overrides, validated, and hashed for lineage."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from .errors import StagebookError


def load_params(path: Path | str) -> dict:
    "The flat mapping in a stage's params file (papermill injects each key as a variable)."
    path = Path(path)
    if not path.is_file():
        raise StagebookError(f"{path}: params file missing; create it with the defaults of the notebook's `parameters` cell.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise StagebookError(f"{path}: not valid YAML{line}; fix the syntax (one `key: value` per line).") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) and k.isidentifier() for k in data):
        raise StagebookError(f"{path}: must be a mapping of Python-identifier keys to values (`epochs: 3`).")
    return data


def parse_overrides(pairs: list[str], known: dict, source: Path) -> dict:
    "`['epochs=3', 'lr=1e-3']` -> `{'epochs': 3, 'lr': 0.001}`; each key must already exist in `source`."
    from .schema import load_schema

    rules = load_schema(source) if source is not None and Path(source).is_file() else None
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise StagebookError(f"--set {pair!r}: expected key=value, e.g. --set epochs=3.")
        if key not in known:
            raise StagebookError(f"--set {key}: not a parameter in {source}; known: {', '.join(sorted(known)) or 'none'}.")
        declared = (rules or {}).get(key, {}).get("type")
        numeric = declared in ("int", "number")  # e.g. near_threshold: a number, though its default is 'auto'
        out[key] = raw if isinstance(known[key], str) and not numeric else _yaml_scalar(raw)
    return out


def _yaml_scalar(raw: str):
    "`3` -> 3, `1e-3` -> 0.001, `[1, 2]` -> [1, 2], `null` -> None; anything unparsable stays text."
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads `1e-3` as text
        except ValueError:
            return value
    return value


def params_hash(params: dict) -> str:
    "Short, order-independent hash of the effective parameters."
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
