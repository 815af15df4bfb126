"""Small real models trained by the tests (sklearn joblib files and MLflow model folders)."""

from __future__ import annotations

from pathlib import Path

IRIS_INPUT = {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64",
                          "data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]}]}


def train_sklearn(folder: Path, *, seed: int = 0) -> Path:
    """A LogisticRegression on iris saved as ``model.joblib`` (no model-settings.json)."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    folder.mkdir(parents=True, exist_ok=True)
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=300, random_state=seed).fit(x, y)
    joblib.dump(model, folder / "model.joblib")
    return folder


def train_mlflow(folder: Path, *, seed: int = 0, c: float = 1.0) -> Path:
    """An MLflow sklearn model folder (MLmodel, conda.yaml, model.pkl) with a signature."""
    import mlflow.sklearn
    import numpy as np
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=300, C=c, random_state=seed).fit(x, y)
    signature = infer_signature(x.astype(np.float64), model.predict(x))
    if folder.exists():
        import shutil
        shutil.rmtree(folder)
    mlflow.sklearn.save_model(model, str(folder), signature=signature)
    return folder
