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


CUSTOM_RUNTIME_ANNOTATION = "berth.io/allow-custom-runtime"
# model-settings fields that make MLServer run code or read files other than the artifact's own
_CODE_PARAMETERS = ("environment_tarball", "environment_path")


def allowed_implementations(folder: Path, requirements: list[str]) -> set[str]:
    """The runtime classes the model's requirements select (what Berth itself would write): those named by its
    requirements, MLflow's for an artifact with an MLmodel file, else what :func:`choose_implementation`
    picks from the files; empty when nothing fits."""
    wanted = {r.strip().lower() for r in requirements}
    allowed = {impl for req, impl in RUNTIMES.items() if req in wanted}
    if find_mlmodel(folder) is not None:
        allowed.add(MLFLOW)
    if not allowed:
        try:
            allowed.add(choose_implementation(folder, requirements))
        except LoadError:
            pass
    return allowed


def check_artifact_settings(folder: Path, *, name: str, requirements: list[str], allow_custom: bool) -> None:
    """An artifact's own ``model-settings.json`` is data, not code: unless its Server allows custom runtimes,
    it may name only an implementation the model's requirements select, no environment to unpack, and a
    ``parameters.uri`` inside its own folder.  LoadError naming what was refused; nothing when it has none."""
    path = folder / SETTINGS_FILE
    if allow_custom or not path.is_file():
        return
    try:
        own = json.loads(path.read_text()[:1 << 20])
    except (OSError, ValueError):
        return  # prepare() says it is not valid JSON
    if not isinstance(own, dict):
        return
    fix = (f"; only a Server annotated {CUSTOM_RUNTIME_ANNOTATION}: \"true\" loads artifacts that choose their "
           f"own code (or remove {SETTINGS_FILE} from the artifact and let Berth write it)")
    implementation = own.get("implementation")
    if implementation is not None:
        allowed = allowed_implementations(folder, requirements)
        if implementation not in allowed:
            selected = ", ".join(sorted(allowed)) or "none (no requirement names a runtime)"
            raise LoadError(f"model {name}: the artifact's {SETTINGS_FILE} names implementation "
                            f"{str(implementation)[:200]!r}, but the model's requirements {sorted(requirements)} "
                            f"select {selected}{fix}", details={"implementation": str(implementation)[:200]})
    raw = own.get("parameters")
    params: dict[str, Any] = raw if isinstance(raw, dict) else {}
    for key in _CODE_PARAMETERS:
        if params.get(key):
            raise LoadError(f"model {name}: the artifact's {SETTINGS_FILE} sets parameters.{key} (an environment "
                            f"MLServer would unpack and run){fix}", details={"parameter": key})
    uri = params.get("uri")
    if isinstance(uri, str) and uri:
        target = os.path.realpath(folder / uri)
        root = os.path.realpath(folder)
        if target != root and not target.startswith(root + "/"):
            raise LoadError(f"model {name}: the artifact's {SETTINGS_FILE} sets parameters.uri {uri[:200]!r}, "
                            f"outside the artifact's own folder{fix}", details={"parameter": "uri"})
