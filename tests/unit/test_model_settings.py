"""model-settings.json generation: runtime choice, uri, version, MLflow content type, renaming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from berth.adapters import settings
from berth.errors import LoadError
from tests.support.models import train_mlflow, train_sklearn


@pytest.fixture(scope="module")
def mlflow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_mlflow(tmp_path_factory.mktemp("mlflow") / "model")


def _written(folder: Path) -> dict[str, object]:
    return json.loads((folder / settings.SETTINGS_FILE).read_text())


def test_sklearn_folder_gets_sklearn_runtime_and_the_joblib_file(tmp_path: Path) -> None:
    folder = train_sklearn(tmp_path / "iris")
    out = settings.prepare(folder, name="iris", requirements=["sklearn"], artifact_version=3)
    assert out == {"name": "iris", "implementation": "mlserver_sklearn.SKLearnModel",
                   "parameters": {"uri": "./model.joblib", "version": "3"}}
    assert _written(folder) == out


def test_sklearn_chosen_from_file_when_requirements_say_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    (folder / "nested").mkdir(parents=True)
    (folder / "nested" / "clf.pkl").write_bytes(b"\x80\x04N.")
    out = settings.generate(folder, name="m", requirements=[])
    assert out["implementation"] == settings.SKLEARN
    assert out["parameters"] == {"uri": "./nested/clf.pkl"}


def test_scikit_learn_alias_and_missing_model_file(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "README.txt").write_text("no model here")
    with pytest.raises(LoadError, match=r"no \.joblib or \.pkl file.*README\.txt"):
        settings.generate(folder, name="m", requirements=["scikit-learn"])


def test_generated_sklearn_settings_are_accepted_by_mlserver(tmp_path: Path) -> None:
    pytest.importorskip("mlserver_sklearn")
    from mlserver.repository.load import load_model_settings

    folder = train_sklearn(tmp_path / "iris")
    settings.prepare(folder, name="iris", requirements=["sklearn"])
    parsed = load_model_settings(str(folder / settings.SETTINGS_FILE))
    assert parsed.name == "iris"
    assert parsed.implementation.__name__ == "SKLearnModel"
    assert parsed.parameters is not None and parsed.parameters.uri == "./model.joblib"


def test_mlflow_folder_detected_from_mlmodel_even_with_sklearn_requirement(mlflow_model: Path,
                                                                           tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "artifacts"
    shutil.copytree(mlflow_model, folder)
    out = settings.prepare(folder, name="baseline-predictor",
                           requirements=["mlflow", "torch", "numpy", "scikit-learn"])
    assert out["implementation"] == "mlserver_mlflow.MLflowRuntime"
    # the model has a signature: MLServer's MLflow runtime derives the content type from it
    assert out["parameters"] == {"uri": "./"}


def test_mlflow_without_signature_decodes_as_numpy(mlflow_model: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "outer"
    shutil.copytree(mlflow_model, folder / "model")
    meta = yaml.safe_load((folder / "model" / "MLmodel").read_text())
    meta.pop("signature", None)
    (folder / "model" / "MLmodel").write_text(yaml.safe_dump(meta))
    out = settings.generate(folder, name="m", requirements=[])
    assert out["parameters"] == {"uri": "./model", "content_type": "np"}


def test_mlflow_requirement_without_mlmodel_is_a_load_error(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"0")
    with pytest.raises(LoadError, match="cannot choose an MLServer runtime") as info:
        settings.generate(folder, name="m", requirements=["pytorch"])
    assert "weights.bin" in info.value.message


def test_xgboost_and_lightgbm_from_requirements(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.bst").write_bytes(b"0")
    assert settings.generate(folder, name="m", requirements=["xgboost"]) == {
        "name": "m", "implementation": "mlserver_xgboost.XGBoostModel", "parameters": {"uri": "./model.bst"}}
    out = settings.generate(folder, name="m", requirements=["lightgbm"], extra={"threads": "2"})
    assert out["implementation"] == "mlserver_lightgbm.LightGBMModel"
    assert out["parameters"] == {"uri": "./model.bst", "extra": {"threads": "2"}}


def test_existing_settings_are_renamed_and_kept(tmp_path: Path) -> None:
    folder = train_sklearn(tmp_path / "m")
    own = {"name": "whatever", "implementation": "mlserver_sklearn.SKLearnModel",
           "parameters": {"uri": "./model.joblib", "extra": {"a": "1"}}, "max_batch_size": 4}
    (folder / settings.SETTINGS_FILE).write_text(json.dumps(own))
    out = settings.prepare(folder, name="iris", requirements=["xgboost"], artifact_version=7, extra={"b": "2"})
    assert out == {"name": "iris", "implementation": "mlserver_sklearn.SKLearnModel", "max_batch_size": 4,
                   "parameters": {"uri": "./model.joblib", "extra": {"a": "1", "b": "2"}, "version": "7"}}
    assert _written(folder) == out


def test_existing_settings_that_are_not_json_name_the_problem(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / settings.SETTINGS_FILE).write_text("{not json")
    with pytest.raises(LoadError, match="model-settings.json is not valid JSON"):
        settings.prepare(folder, name="m", requirements=[])


def test_rewrite_does_not_touch_a_hard_linked_original(tmp_path: Path) -> None:
    original = tmp_path / "orig"
    original.mkdir()
    (original / settings.SETTINGS_FILE).write_text(json.dumps({"name": "old"}))
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / settings.SETTINGS_FILE).hardlink_to(original / settings.SETTINGS_FILE)
    settings.prepare(copy, name="new", requirements=[])
    assert _written(copy)["name"] == "new"
    assert _written(original)["name"] == "old"
