"""A small PyTorch network trained on iris and logged as an MLflow model (mlflow.pytorch, with a signature),
laid out as an MLflow tracking server stores it: ``<experiment>/models/m-<id>/artifacts/``."""

from __future__ import annotations

from pathlib import Path

IRIS_FP32 = {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32",
                         "data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]}]}


def train_torch_mlflow(root: Path, *, seed: int = 0, epochs: int = 300) -> Path:
    """Train a 4-16-3 MLP on iris (CPU, one thread, under a second) and log it with ``mlflow.pytorch.log_model`` to a
    tracking store under ``root``; returns the logged model's artifacts folder (holding ``MLmodel``)."""
    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 4-16-3 MLP: one thread trains it in half a second; many contend for seconds
    torch.manual_seed(seed)
    x_np, y_np = load_iris(return_X_y=True)
    x = torch.tensor(x_np, dtype=torch.float32)
    y = torch.tensor(y_np, dtype=torch.long)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    optimiser = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(epochs):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        optimiser.step()
    net.eval()
    with torch.no_grad():
        logits = net(x).numpy()
    torch.set_num_threads(threads)
    signature = infer_signature(x_np.astype(np.float32), logits)
    root.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    experiment = mlflow.create_experiment("berth-torch", artifact_location=(root / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pytorch.log_model(net, name="model", signature=signature,
                                        input_example=x_np[:2].astype(np.float32),
                                        pip_requirements=["torch==2.13.0", "mlflow", "numpy"])
    found = list((root / "artifacts").rglob("MLmodel"))
    assert len(found) == 1, f"expected one logged model under {root / 'artifacts'}, found {found} ({info.model_uri})"
    return found[0].parent


def predict_classes(logits: list[float], classes: int = 3) -> list[int]:
    """Row-wise argmax of a flat list of logits."""
    rows = [logits[i:i + classes] for i in range(0, len(logits), classes)]
    return [max(range(classes), key=row.__getitem__) for row in rows]
