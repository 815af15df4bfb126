"""Honest capabilities: does the inference server's Python have the runtime each claimed capability needs?

A Server claims capabilities (``torch``, ``sklearn``, ...) and the scheduler places models by them; a claim
whose runtime is not installed beside MLServer only shows when a load fails.  Once per agent start the agent
asks the inference server's own interpreter whether the modules behind each claim can be found
(``importlib.util.find_spec``: no module is imported, so the probe costs one short-lived Python process) and
reports those that cannot in its ``hello``.  The control plane puts them in the Server's status and the
scheduler tells a model requiring one "server X claims torch but its MLServer cannot import torch".

The interpreter is MLServer's own when its process is known (``argv[0]`` of the process, which keeps its
virtual environment), else the one named in the ``mlserver`` program's ``#!`` line, else this agent's.
Capabilities that name no runtime (``mlserver``, ``python``, labels like ``gpu`` or ``tenant-a``) are not
checked.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from berth.wire.agent import CapabilityProblem

log = logging.getLogger("berth.agent.capabilities")

# capability (as Seldon's manifests spell it) → the modules MLServer needs to serve it, runtime first
RUNTIME_MODULES: dict[str, tuple[str, ...]] = {
    "sklearn": ("mlserver_sklearn", "sklearn"),
    "scikit-learn": ("mlserver_sklearn", "sklearn"),
    "mlflow": ("mlserver_mlflow", "mlflow"),
    "xgboost": ("mlserver_xgboost", "xgboost"),
    "lightgbm": ("mlserver_lightgbm", "lightgbm"),
    "torch": ("torch",),  # served through MLflow's pytorch flavour (requirements [mlflow, torch])
    "pytorch": ("torch",),
    "tensorflow": ("tensorflow",),
    "keras": ("keras",),
    "onnx": ("onnxruntime",),
    "numpy": ("numpy",),
    "pandas": ("pandas",),
    "huggingface": ("mlserver_huggingface", "transformers"),
    "alibi-detect": ("mlserver_alibi_detect", "alibi_detect"),
    "alibi-explain": ("mlserver_alibi_explain", "alibi"),
    "spark-mlib": ("mlserver_mllib", "pyspark"),
    "catboost": ("mlserver_catboost", "catboost"),
}

PROBE_TIMEOUT = 30.0  # seconds; a probe that takes longer reports nothing rather than hold the agent
# What the probe child may see of this process's environment: where Python looks for modules, no credential.
_PASSED_ENV = ("PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "HOME", "LANG", "LC_ALL", "TMPDIR")
_SCRIPT = (
    "import importlib.util, json, sys\n"
    "out = {}\n"
    "for name in sys.argv[1:]:\n"
    "    try:\n"
    "        out[name] = '' if importlib.util.find_spec(name) is not None else 'not installed'\n"
    "    except Exception as exc:\n"
    "        out[name] = f'{type(exc).__name__}: {exc}'\n"
    "print(json.dumps(out))\n"
)


def modules_for(capabilities: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The modules behind each claimed capability that names a runtime (case-insensitive), in claim order."""
    found: dict[str, tuple[str, ...]] = {}
    for cap in capabilities:
        modules = RUNTIME_MODULES.get(cap.strip().lower())
        if modules:
            found[cap] = modules
    return found


def problems(capabilities: Iterable[str], missing: dict[str, str]) -> list[CapabilityProblem]:
    """One problem per claimed capability with a module in ``missing`` (module → why), naming the first."""
    out: list[CapabilityProblem] = []
    for cap, modules in modules_for(capabilities).items():
        bad = next((m for m in modules if missing.get(m)), None)
        if bad is not None:
            out.append(CapabilityProblem(capability=cap, module=bad, error=missing[bad]))
    return out


@dataclass(frozen=True)
class ProbeResult:
    python: str  # the interpreter asked
    problems: tuple[CapabilityProblem, ...] = ()
    error: str | None = None  # the probe itself failed (nothing is reported unavailable then)


def interpreter(pid: int | None, mlserver: str | None) -> str:
    """MLServer's interpreter: its process's argv[0], else the ``mlserver`` script's ``#!``, else ours."""
    if pid is not None:
        try:
            import psutil

            argv = psutil.Process(pid).cmdline()
            if argv and os.path.isabs(argv[0]) and "python" in Path(argv[0]).name and Path(argv[0]).exists():
                return str(argv[0])
        except Exception as exc:  # gone, not ours to read: fall back
            log.debug("cannot read the command line of inference server process %s: %s", pid, exc)
    if mlserver:
        shebang = _shebang(mlserver)
        if shebang:
            return shebang
    return sys.executable


def _shebang(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            first = f.readline(512).decode(errors="replace").strip()
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    words = first[2:].split()
    if words and os.path.isabs(words[0]) and "python" in Path(words[0]).name and Path(words[0]).exists():
        return words[0]
    return None


def probe(capabilities: Sequence[str], python: str, timeout: float = PROBE_TIMEOUT) -> ProbeResult:
    """Ask ``python`` whether the modules behind ``capabilities`` can be found (blocking, bounded)."""
    wanted = sorted({m for mods in modules_for(capabilities).values() for m in mods})
    if not wanted:
        return ProbeResult(python)
    env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
    try:
        done = subprocess.run([python, "-c", _SCRIPT, *wanted], capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return ProbeResult(python, error=f"could not run {python}: {exc}")
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        return ProbeResult(python, error=f"{python} failed: {why[0]}")
    try:
        answer = json.loads(done.stdout.decode(errors="replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        return ProbeResult(python, error=f"{python} answered something other than the probe's JSON")
    missing = {str(k): str(v) for k, v in answer.items() if v}
    return ProbeResult(python, tuple(problems(capabilities, missing)))


def describe(problem: CapabilityProblem, server: str) -> str:
    """``server X claims torch but its MLServer cannot import torch (not installed)``."""
    return (f"server {server} claims {problem.capability} but its MLServer cannot import {problem.module}"
            f" ({problem.error})")
