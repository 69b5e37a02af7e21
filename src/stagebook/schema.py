"""Types and ranges of a stage's params, checked before a kernel starts.

`params/NN_name.schema.yaml` sits next to `params/NN_name.yaml` and declares, per key, what a value may be; it holds
no defaults (the params file is the one source of values). A key is a mapping of rules:

    type: int | number | bool | str | path | list | dict      nullable: true      choices: [a, b]
    min / max (inclusive), gt / lt (exclusive)                  pattern: regex (str)
    items: {rules}  (each list item)   keys: {name: {rules}}  (a dict's allowed keys)   values: {rules}
    param_keys: true  (a dict whose keys must be params of this stage, e.g. a search grid)
    keys_when: {if: {other_param: value}, among: [a, b]}  (a dict's keys, limited while another param has a value)
    inside: true  (path: relative, within the project)          non_empty: true  (list, dict, str)
    also: [auto]  (words accepted besides the type, e.g. a number or `auto`)

A bad value is one line naming the file (or the --set that brought it), the key, the value and what is expected.
"""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import yaml

from .errors import StagebookError

TYPES = {"int": "an integer", "number": "a number", "bool": "true or false", "str": "text", "path": "a path",
         "list": "a list", "dict": "a mapping"}


def schema_file(params_file: Path) -> Path:
    return params_file.with_name(params_file.stem + ".schema.yaml")


def load_schema(params_file: Path) -> dict | None:
    "The schema beside `params_file`, or None when the stage declares none."
    path = schema_file(params_file)
    if not path.is_file():
        return None
    try:
        schema = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise StagebookError(f"{path}: not valid YAML{f' at line {mark.line + 1}' if mark else ''}; fix the syntax.") from None
    bad = [k for k, v in schema.items() if not isinstance(v, dict) or v.get("type") not in TYPES]
    if bad:
        raise StagebookError(f"{path}: {bad[0]} needs a mapping with `type:` one of {', '.join(TYPES)}.")
    return schema


def validate(params: dict, schema: dict, source: Path, overridden: set[str] = frozenset()) -> None:
    "Raise StagebookError on the first value that breaks its rules; keys the schema lacks are refused too."
    undeclared = sorted(set(params) - set(schema))
    if undeclared:
        raise StagebookError(f"{schema_file(source)}: no rules for {undeclared}; declare each parameter's type"
                             f" (e.g. `{undeclared[0]}: {{type: int, min: 0}}`).")
    for key, rules in schema.items():
        if key in params:
            where = f"--set {key}" if key in overridden else str(source)
            _check(params[key], rules, key, where)
            if isinstance(params[key], dict):
                _check_keys_against_params(params, schema, key, where, source)


def _check_keys_against_params(params: dict, schema: dict, name: str, where: str, source: Path) -> None:
    "A dict whose keys name other params (a search grid): each must be one, and may be limited by another's value."
    rules, value = schema[name], params[name]
    keys = sorted(map(str, value))
    if rules.get("param_keys"):
        unknown = [k for k in keys if k not in schema or k == name]
        if unknown:
            verb = "is" if len(unknown) == 1 else "are"
            raise StagebookError(f"{where}: {name} = {value!r} varies {unknown}, which {verb} not a param of this stage;"
                                 f" expected keys among the params in {source}.")
    limit = rules.get("keys_when")
    if limit and all(params.get(k) == v for k, v in limit["if"].items()):
        refused = [k for k in keys if k not in limit["among"]]
        if refused:
            condition = " and ".join(f"{k} is {v}" for k, v in limit["if"].items())
            raise StagebookError(f"{where}: {name} = {value!r} varies {refused}, which cannot vary while {condition};"
                                 f" expected keys among {', '.join(limit['among'])}"
                                 + (f" ({limit['otherwise']})" if limit.get("otherwise") else "") + ".")


def _check(value, rules: dict, name: str, where: str) -> None:
    def fail(problem: str):
        raise StagebookError(f"{where}: {name} = {value!r} {problem}; expected {describe(rules)}.")

    if value is None:
        if not rules.get("nullable"):
            fail("is empty")
        return
    if isinstance(value, str) and value in rules.get("also", ()):
        return
    kind = rules["type"]
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "number": isinstance(value, (int, float)) and not isinstance(value, bool),
          "bool": isinstance(value, bool), "str": isinstance(value, str), "path": isinstance(value, str),
          "list": isinstance(value, list), "dict": isinstance(value, dict)}[kind]
    if not ok:
        fail(f"is not {TYPES[kind]}")
    if kind in ("int", "number"):
        for bound, test, word in (("min", lambda b: value >= b, "below"), ("max", lambda b: value <= b, "above"),
                                  ("gt", lambda b: value > b, "not above"), ("lt", lambda b: value < b, "not below")):
            if bound in rules and not test(rules[bound]):
                fail(f"is {word} {rules[bound]}")
    if "choices" in rules and value not in rules["choices"]:
        fail("is not one of the choices")
    if "pattern" in rules and not re.fullmatch(rules["pattern"], str(value)):
        fail("does not match")
    if rules.get("non_empty") and len(value) == 0:
        fail("is empty")
    if kind == "path" and rules.get("inside"):
        path = PurePosixPath(value.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts:
            fail("leaves the project")
    if kind == "list" and "items" in rules:
        for i, item in enumerate(value):
            _check(item, rules["items"], f"{name}[{i}]", where)
    if kind == "dict":
        known = rules.get("keys")
        if known is not None:
            unknown = sorted(set(map(str, value)) - set(known))
            if unknown:
                fail(f"has unknown key(s) {unknown}")
            for key, sub in known.items():
                if key in value:
                    _check(value[key], sub, f"{name}.{key}", where)
        if "values" in rules:
            for key, item in value.items():
                _check(item, rules["values"], f"{name}.{key}", where)


def describe(rules: dict) -> str:
    "`an integer >= 1`, `one of auto, cpu, cuda`, `a list of ...`: what the rules ask for, in words."
    kind = rules["type"]
    if "choices" in rules:
        text = "one of " + ", ".join(str(c) for c in rules["choices"])
    else:
        text = TYPES[kind]
        bounds = [f"{sym} {rules[k]}" for k, sym in (("min", ">="), ("gt", ">"), ("max", "<="), ("lt", "<")) if k in rules]
        text += (" " + " and ".join(bounds)) if bounds else ""
        if kind == "list" and "items" in rules:
            text += f" of {describe(rules['items'])}"
        if kind == "dict" and "keys" in rules:
            text += " with keys among " + ", ".join(rules["keys"])
        if kind == "path" and rules.get("inside"):
            text += " relative to the project, inside it"
        if "also" in rules:
            text += " or " + " or ".join(str(w) for w in rules["also"])
        if rules.get("non_empty"):
            text = "non-empty " + text
    return text + (" (or null)" if rules.get("nullable") else "")
