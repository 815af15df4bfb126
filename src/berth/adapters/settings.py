"""``model-settings.json`` for MLServer: written when an artifact has none, renamed when it has one.

The runtime is chosen from the artifact first (an ``MLmodel`` file means MLflow), then from the model's
``requirements`` (``mlflow``, ``sklearn``/``scikit-learn``, ``xgboost``, ``lightgbm``), then from the
files it holds (``*.joblib``/``*.pkl`` mean scikit-learn).  MLServer resolves a relative ``uri`` against
the folder holding ``model-settings.json``, so generated settings always use relative paths.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from berth.errors import LoadError

SETTINGS_FILE = "model-settings.json"

MLFLOW = "mlserver_mlflow.MLflowRuntime"
SKLEARN = "mlserver_sklearn.SKLearnModel"
XGBOOST = "mlserver_xgboost.XGBoostModel"
LIGHTGBM = "mlserver_lightgbm.LightGBMModel"

# requirement (as written in Model.spec.requirements) -> MLServer implementation, in priority order
RUNTIMES: dict[str, str] = {
    "mlflow": MLFLOW,
    "xgboost": XGBOOST,
    "lightgbm": LIGHTGBM,
    "sklearn": SKLEARN,
    "scikit-learn": SKLEARN,
}
_MODEL_FILES: dict[str, tuple[str, ...]] = {
    SKLEARN: (".joblib", ".pkl", ".pickle"),
    XGBOOST: (".bst", ".ubj", ".json"),
    LIGHTGBM: (".bst", ".txt"),
}


def _files(folder: Path) -> list[Path]:
    """Every regular file under ``folder``, shallowest first, then by name (deterministic)."""
    found = [p for p in folder.rglob("*") if p.is_file() and p.name != SETTINGS_FILE]
    return sorted(found, key=lambda p: (len(p.relative_to(folder).parts), str(p.relative_to(folder))))


def find_mlmodel(folder: Path) -> Path | None:
    """The folder holding the shallowest ``MLmodel`` file, or None."""
    for path in _files(folder):
        if path.name == "MLmodel":
            return path.parent
    return None


def choose_implementation(folder: Path, requirements: list[str]) -> str:
    """The MLServer runtime class for the artifact in ``folder``; LoadError when nothing fits."""
    if find_mlmodel(folder) is not None:
        return MLFLOW
    wanted = {r.strip().lower() for r in requirements}
    for requirement, implementation in RUNTIMES.items():
        if requirement in wanted:
            return implementation
    suffixes = {p.suffix.lower() for p in _files(folder)}
    if suffixes & set(_MODEL_FILES[SKLEARN]):
        return SKLEARN
    listing = ", ".join(str(p.relative_to(folder)) for p in _files(folder)[:10]) or "no files"
    raise LoadError(
        f"cannot choose an MLServer runtime: requirements {sorted(wanted) or '[]'} name none of "
        f"{', '.join(sorted(RUNTIMES))}, and the artifact ({listing}) has no MLmodel, "
        f"{SETTINGS_FILE} or .joblib/.pkl file; add a requirement or a {SETTINGS_FILE} to the artifact")


def _model_file(folder: Path, implementation: str) -> Path | None:
    suffixes = _MODEL_FILES.get(implementation, ())
    candidates = [p for p in _files(folder) if p.suffix.lower() in suffixes]
    preferred = [p for p in candidates if p.stem == "model"]
    ordered = preferred or candidates
    return ordered[0] if ordered else None


def _has_signature(mlmodel_dir: Path) -> bool:
    try:
        data = yaml.safe_load((mlmodel_dir / "MLmodel").read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and bool(data.get("signature"))


def _relative(path: Path, folder: Path) -> str:
    rel = path.relative_to(folder).as_posix()
    return "./" if rel == "." else f"./{rel}"


def generate(folder: Path, *, name: str, requirements: list[str], artifact_version: int | None = None,
             extra: dict[str, str] | None = None) -> dict[str, Any]:
    """Model settings for the artifact in ``folder`` (not written; see :func:`prepare`)."""
    implementation = choose_implementation(folder, requirements)
    parameters: dict[str, Any] = {}
    if implementation == MLFLOW:
        mlmodel_dir = find_mlmodel(folder)
        if mlmodel_dir is None:
            raise LoadError(f"requirements name mlflow but the artifact has no MLmodel file "
                            f"(files: {', '.join(p.name for p in _files(folder)[:10]) or 'none'}); "
                            "save the model with mlflow.<flavor>.save_model or drop the mlflow requirement")
        parameters["uri"] = _relative(mlmodel_dir, folder)
        if not _has_signature(mlmodel_dir):
            # Without a signature MLServer's MLflow runtime has no codec to decode requests with.
            parameters["content_type"] = "np"
    else:
        model_file = _model_file(folder, implementation)
        if model_file is None and implementation == SKLEARN:
            raise LoadError(f"the artifact holds no .joblib or .pkl file for the scikit-learn runtime "
                            f"(files: {', '.join(p.name for p in _files(folder)[:10]) or 'none'})")
        parameters["uri"] = _relative(model_file, folder) if model_file is not None else "./"
    if artifact_version is not None:
        parameters["version"] = str(artifact_version)
    if extra:
        parameters["extra"] = dict(extra)
    return {"name": name, "implementation": implementation, "parameters": parameters}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write through a new file (never through a hard link shared with the downloaded copy)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def prepare(folder: Path, *, name: str, requirements: list[str], artifact_version: int | None = None,
            extra: dict[str, str] | None = None) -> dict[str, Any]:
    """Make ``folder/model-settings.json`` load as model ``name``; returns the settings written.

    An artifact's own settings are kept, with ``name`` (and ``parameters.version`` when the Model has an
    artifactVersion) rewritten so MLServer finds the model under the name the control plane uses.
    """
    path = folder / SETTINGS_FILE
    if not path.exists():
        settings = generate(folder, name=name, requirements=requirements,
                            artifact_version=artifact_version, extra=extra)
    else:
        try:
            settings = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise LoadError(f"the artifact's {SETTINGS_FILE} is not valid JSON: {exc}") from exc
        if not isinstance(settings, dict):
            raise LoadError(f"the artifact's {SETTINGS_FILE} must hold a JSON object, "
                            f"got {type(settings).__name__}")
        settings["name"] = name
        params = settings.get("parameters")
        if not isinstance(params, dict):
            params = {}
        if artifact_version is not None:
            params["version"] = str(artifact_version)
        if extra:
            merged = dict(params.get("extra") or {})
            merged.update(extra)
            params["extra"] = merged
        if params:
            settings["parameters"] = params
    _write_json(path, settings)
    return settings
