"""The repository's examples keep their word: what each misconfigured example's comment says Berth
answers is what Berth answers (`berth plan` for placement, the Experiment's status for experiments)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml

from berth.client.http import BerthClient
from berth.resources.manifest import load_paths
from tests.support.seeds import EXAMPLES
from tests.support.servers import ControlPlane

MISCONFIGURED = sorted((EXAMPLES / "misconfigured").glob("*.yaml"))


def promised_answer(path: Path) -> str:
    """The indented comment lines under ``# BERTH ANSWERS``, joined into one line."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# BERTH ANSWERS"))
    answer: list[str] = []
    for line in lines[start + 1:]:
        if line.startswith("#   "):
            answer.append(line[1:].strip())
        elif answer:
            break
    assert answer, f"{path.name}: no answer lines under BERTH ANSWERS"
    return " ".join(answer)


def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_every_misconfigured_example_says_what_is_wrong_and_how_to_fix_it() -> None:
    assert len(MISCONFIGURED) == 6
    for path in MISCONFIGURED:
        text = path.read_text()
        assert text.startswith("# WRONG"), path.name
        assert "# BERTH ANSWERS" in text and "# FIX" in text, path.name


@pytest.mark.parametrize("path", [p for p in MISCONFIGURED if any(
    d and d.get("kind") == "Model" for d in yaml.safe_load_all(p.read_text()))], ids=lambda p: p.stem)
def test_plan_answers_what_the_example_promises(cli, path: Path) -> None:
    r = cli("plan", "-f", str(path))
    assert r.code == 1, r.out + r.err
    assert promised_answer(path) in one_line(r.out), f"{path.name}: promised answer not in:\n{r.out}"


def _wait_message(client: BerthClient, kind: str, ns: str, name: str, fragment: str) -> str:
    deadline = time.monotonic() + 15
    message = ""
    while time.monotonic() < deadline:
        message = (client.get(kind, ns, name).get("status") or {}).get("message", "")
        if fragment in message:
            return message
        time.sleep(0.05)
    raise AssertionError(f"{kind} {ns}/{name}: {fragment!r} not in its status message {message!r} after 15 s")


def test_broken_experiment_status_is_what_the_example_promises(control: ControlPlane) -> None:
    client = BerthClient(control.url)
    client.apply([d.body for d in load_paths([str(EXAMPLES / "financial-ml")]).documents])
    path = EXAMPLES / "misconfigured" / "broken-experiment.yaml"
    client.apply([d.body for d in load_paths([str(path)]).documents])
    message = _wait_message(client, "Experiment", "financial-ml", "predictor-canary", "enhanced-predicter")
    assert promised_answer(path) in message


def test_model_before_server_is_placed_once_the_server_arrives(control: ControlPlane) -> None:
    client = BerthClient(control.url)
    path = EXAMPLES / "misconfigured" / "model-before-server.yaml"
    client.apply([d.body for d in load_paths([str(path)]).documents])
    _wait_message(client, "Model", "financial-ml", "fraud-detector", promised_answer(path))
    server = yaml.safe_load("\n".join(line.removeprefix("# ") for line in path.read_text().split("# ---\n")[1]
                                      .splitlines()))
    assert server["kind"] == "Server" and server["metadata"]["name"] == "fraud-server"
    client.apply([server])
    # no agents here, so the model now waits for the server's replica instead of for the server itself
    _wait_message(client, "Model", "financial-ml", "fraud-detector", "server fraud-server has no connected replicas")
