"""The model registry: MLflow's, in the project's own tracking store, one registered model named after the project.

A version holds the weights (an artifact, verified by sha256 whenever it is loaded) and tags that chain it to
everything that made it: code commit, data version, seal hash, params hash, toolkit version, test metrics with
their CI. Aliases say which version is which: `champion` serves; `previous_champion` is the one it replaced.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .errors import StagebookError
from .lineage import file_sha256

CHAMPION, PREVIOUS = "champion", "previous_champion"
CACHE = Path("models") / "registry"  # weights fetched from the registry, one file per version


def model_name(root: Path) -> str:
    "The registered model's name: the project's name in pyproject.toml."
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    return str(data.get("project", {}).get("name") or root.name)


def client(root: Path):
    from .tracking import open_client
    return open_client(root, registry=True)


def versions(root: Path) -> list:
    "Every registered version of the project's model, oldest first."
    found = client(root).search_model_versions(f"name='{model_name(root)}'")
    return sorted(found, key=lambda v: int(v.version))


def version_of(root: Path, sha256: str):
    "The registered version holding these exact weights, or None."
    return next((v for v in versions(root) if v.tags.get("sha256") == sha256), None)


def by_alias(root: Path, alias: str):
    "The version an alias points at, or None."
    from mlflow.exceptions import MlflowException
    try:
        return client(root).get_model_version_by_alias(model_name(root), alias)
    except MlflowException:
        return None


def register(root: Path, weights: Path, tags: dict[str, str]) -> object:
    "Register `weights` (once per sha256) with `tags`; the weights become an artifact of a small registry run."
    from .tracking import experiment_id

    sha = file_sha256(weights)
    existing = version_of(root, sha)
    if existing is not None:
        return existing
    mlflow = client(root)
    name = model_name(root)
    run = mlflow.create_run(experiment_id(mlflow, root), run_name=f"registry {sha[:16]}",
                            tags={"stagebook.stage": "registry", "stagebook.model_sha256": sha})
    mlflow.log_artifact(run.info.run_id, str(weights), "model")
    mlflow.set_terminated(run.info.run_id)
    if not any(m.name == name for m in mlflow.search_registered_models(f"name='{name}'")):
        mlflow.create_registered_model(name, description="Registered by stagebook after the sealed test (stage 06).")
    version = mlflow.create_model_version(name, f"{run.info.artifact_uri}/model/{weights.name}", run.info.run_id,
                                          tags={**{k: str(v) for k, v in tags.items()}, "sha256": sha})
    return version


def set_alias(root: Path, alias: str, version) -> None:
    client(root).set_registered_model_alias(model_name(root), alias, str(version.version))


def tag(root: Path, version, key: str, value: str) -> None:
    client(root).set_model_version_tag(model_name(root), str(version.version), key, str(value))


def weights(root: Path, version) -> Path:
    "The version's weights on local disk (fetched once), after checking they are the bytes that were registered."
    return _verified(root, root / CACHE / f"v{version.version}.pth", version.source, version.tags.get("sha256", ""),
                     version)


def attach(root: Path, version, path: Path, folder: str) -> None:
    "Store `path` with the version: an artifact of its registry run, under `folder`."
    client(root).log_artifact(version.run_id, str(path), folder)


def fetch(root: Path, version, artifact: str, target: Path, sha256: str) -> Path:
    "An artifact attached to the version (`folder/name`), on local disk at `target`, checked against `sha256`."
    uri = f"{client(root).get_run(version.run_id).info.artifact_uri}/{artifact}"
    return _verified(root, target, uri, sha256, version)


def _verified(root: Path, target: Path, uri: str, expected: str, version) -> Path:
    if not target.is_file() or file_sha256(target) != expected:
        from .tracking import download
        fetched = download(root, artifact_uri=uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fetched, target)
    if file_sha256(target) != expected:
        raise StagebookError(f"{target}: its sha256 is not the one registered for version {version.version}"
                             f" ({expected[:16]}); the artifact store was altered; re-register the model.")
    return target


def describe(version) -> dict:
    "What a prediction carries about the model that made it."
    return {"model_version": int(version.version), "model_sha256": version.tags.get("sha256", ""),
            "code_commit": version.tags.get("code_commit", ""), "data_version": version.tags.get("data_version", "")}


def dump(version) -> str:
    return json.dumps({"version": version.version, "aliases": list(getattr(version, "aliases", [])),
                       **dict(version.tags)}, sort_keys=True)
