"""`make demo`: the financial-ml tenant served end to end on this machine.

1. trains two small MLflow models (baseline and enhanced predictors) into .berth-demo/models/,
2. starts `berth up` (control plane, gateway, MLServer replicas on loopback),
3. applies examples/financial-ml/ with the storage paths pointed at those models,
4. waits until both models are Ready, prints `berth get models`, `berth get servers`, `berth describe`,
5. sends V2 inference requests through the gateway and prints the predictions,
6. stops everything.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.support.seeds import EXAMPLES  # noqa: E402 - after the path is set

TENANT = EXAMPLES / "financial-ml"
WORK = ROOT / ".berth-demo"
BERTH = [sys.executable, "-m", "berth.main"]
PAYLOAD = ('{"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64", '
           '"data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]}]}')


def port_or_free(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


def step(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def berth(*args: str, env: dict[str, str], check: bool = True) -> int:
    print("$ berth " + " ".join(args), flush=True)
    code = subprocess.call(BERTH + list(args), env=env)
    if check and code != 0:
        raise SystemExit(f"demo: `berth {' '.join(args)}` failed with exit code {code}")
    return code


def main() -> int:
    from tests.support.models import train_mlflow

    if not TENANT.is_dir():
        raise SystemExit(f"demo: example manifests not found at {TENANT}; run the demo from a full checkout")
    shutil.rmtree(WORK / "data", ignore_errors=True)  # every demo starts from an empty platform
    step("training two MLflow models (iris, logistic regression)")
    models = {"baseline-predictor": train_mlflow(WORK / "models" / "baseline", c=1.0),
              "enhanced-predictor": train_mlflow(WORK / "models" / "enhanced", c=0.1)}
    docs = []
    for path in sorted(TENANT.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "Model":
                doc["spec"]["storageUri"] = models[doc["metadata"]["name"]].as_uri()
            if doc:
                docs.append(doc)
    manifest = WORK / "financial-ml.yaml"
    manifest.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    print(f"manifests: {TENANT} with storageUri pointed at {WORK / 'models'} -> {manifest}")

    control_port, gateway_port, grpc_port = port_or_free(9004), port_or_free(9000), port_or_free(9001)
    env = dict(os.environ, BERTH_ADDRESS=f"http://127.0.0.1:{control_port}",
               BERTH_GATEWAY=f"http://127.0.0.1:{gateway_port}", BERTH_GATEWAY_GRPC=f"127.0.0.1:{grpc_port}",
               COLUMNS="160")
    step(f"berth up (control plane :{control_port}, gateway REST :{gateway_port}, gRPC :{grpc_port})")
    up = subprocess.Popen(BERTH + ["up", "--data-dir", str(WORK / "data"), "--control-port", str(control_port),
                                   "--gateway-port", str(gateway_port), "--grpc-port", str(grpc_port)], env=env)
    try:
        deadline = time.monotonic() + 180
        while subprocess.call(BERTH + ["get", "servers"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) != 0:
            if up.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("demo: berth up did not start; see .berth-demo/data/logs/")
            time.sleep(0.5)
        step("apply the financial-ml tenant")
        berth("apply", "-f", str(manifest), env=env)
        berth("get", "models", "-n", "financial-ml", "-o", "wide", env=env)
        step("wait until both models are Ready (the tenant's server starts its own MLServer)")
        for name in models:
            berth("wait", f"model/{name}", "-n", "financial-ml", "--for=condition=Ready", "--timeout=180s",
                  env=env)
        berth("get", "models", "-n", "financial-ml", env=env)
        berth("get", "servers", "-A", env=env)
        berth("describe", "model", "baseline-predictor", "-n", "financial-ml", env=env)
        step("V2 inference through the gateway")
        for name in models:
            berth("infer", name, "-n", "financial-ml", "-d", PAYLOAD, env=env)
        step("the A/B experiment: requests to the default model are split 70/30 between the candidates")
        berth("get", "experiments", "-n", "financial-ml", env=env)
        berth("infer", "baseline-predictor", "-n", "financial-ml", "-d", PAYLOAD, "-i", "200", env=env)
        berth("infer", "financial-predictor-ab-test.experiment", "-n", "financial-ml", "-d", PAYLOAD, "-i", "100",
              env=env)
        step("the same split over the gateway's V2 gRPC port")
        berth("infer", "baseline-predictor", "-n", "financial-ml", "-d", PAYLOAD, "-i", "100", "--inference-mode",
              "grpc", env=env)
        step("a model that cannot be placed says why")
        broken = TENANT.parent / "misconfigured" / "broken-experiment.yaml"
        for bad in sorted((TENANT.parent / "misconfigured").glob("*.yaml")):
            if bad != broken:
                berth("plan", "-f", str(bad), env=env, check=False)
        step("an experiment whose candidates are misspelt says which and what was meant")
        berth("apply", "-f", str(broken), env=env)
        deadline = time.monotonic() + 30
        while subprocess.run(BERTH + ["describe", "experiment", "predictor-canary", "-n", "financial-ml"], env=env,
                             capture_output=True, text=True).stdout.find("ExperimentNotReady") < 0:
            if time.monotonic() > deadline:
                raise SystemExit("demo: the broken experiment got no status in 30 s")
            time.sleep(0.2)
        berth("describe", "experiment", "predictor-canary", "-n", "financial-ml", env=env)
    finally:
        step("stopping berth up")
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
    print("\ndemo finished")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
