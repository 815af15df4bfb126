"""Machine output (`-o json|yaml|name|jsonpath=|custom-columns=`) is exactly the document, whatever its length.

The real CLI runs as a subprocess with stdout piped (no TTY, COLUMNS unset) against a real control plane that
holds one model whose status message is longer than 1,000 characters; what it prints is parsed as a script
would parse it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from berth.client.http import BerthClient
from tests.support.servers import ControlPlane

NS = "long"
PIN = "mlserver-for-the-financial-ml-tenant-nr-07x"  # a typo: no such server, so the reason lists them all


def _servers() -> list[dict[str, Any]]:
    return [{"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Server",
             "metadata": {"name": f"mlserver-for-the-financial-ml-tenant-nr-{i:02d}", "namespace": NS},
             "spec": {"serverConfig": "mlserver"}} for i in range(40)]


def _model(storage: str = "file:///tmp/none") -> dict[str, Any]:
    return {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model",
            "metadata": {"name": "pinned", "namespace": NS},
            "spec": {"storageUri": storage, "requirements": ["sklearn"], "server": PIN}}


@pytest.fixture
def long_status(control: ControlPlane) -> Iterator[dict[str, Any]]:
    """The control plane with 40 servers and one model whose status message is over 1,000 characters."""
    client = BerthClient(control.url)
    client.apply(_servers() + [_model()])
    deadline = time.monotonic() + 20
    while True:
        doc = client.get("Model", NS, "pinned")
        if len((doc.get("status") or {}).get("message", "")) > 1000:
            break
        assert time.monotonic() < deadline, f"no long status message: {doc.get('status')}"
        time.sleep(0.05)
    yield doc


def berth(url: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "BERTH_ADDRESS")}
    return subprocess.Popen([sys.executable, "-m", "berth.main", "--server", url, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)


def run_all(url: str, commands: dict[str, list[str]]) -> dict[str, tuple[int, str, str]]:
    """Run every command at once (each its own process); their exit codes, stdouts and stderrs by key."""
    procs = {key: berth(url, *args) for key, args in commands.items()}
    done = {}
    for key, p in procs.items():
        out, err = p.communicate(timeout=120)
        done[key] = (p.returncode, out, err)
    return done


def test_piped_json_yaml_jsonpath_custom_columns_of_long_statuses(control: ControlPlane,
                                                                   long_status: dict[str, Any]) -> None:
    message = long_status["status"]["message"]
    assert len(message) > 1000 and PIN in message
    ran = run_all(control.url, {
        "list-json": ["get", "models", "-n", NS, "-o", "json"],
        "list-yaml": ["get", "models", "-n", NS, "-o", "yaml"],
        "empty-json": ["get", "models", "-n", "nothing-here", "-o", "json"],
        "one-yaml": ["get", "model", "pinned", "-n", NS, "-o", "yaml"],
        "message": ["get", "model", "pinned", "-n", NS, "-o", "jsonpath={.status.message}"],
        "columns": ["get", "models", "-n", NS, "-o", "custom-columns=NAME:.metadata.name,REASON:.status.message"],
    })
    for key, (code, _, err) in ran.items():
        assert (code, err) == (0, ""), key

    listed = json.loads(ran["list-json"][1])
    assert listed["apiVersion"] == "v1" and listed["kind"] == "List"
    assert int(listed["metadata"]["resourceVersion"]) >= int(long_status["metadata"]["resourceVersion"])
    assert [d["metadata"]["name"] for d in listed["items"]] == ["pinned"]  # a List even of one
    assert listed["items"][0]["status"]["message"] == message
    as_yaml = yaml.safe_load(ran["list-yaml"][1])
    assert as_yaml["kind"] == "List" and as_yaml["items"][0]["status"]["message"] == message
    empty = json.loads(ran["empty-json"][1])  # run alongside the others: a status written meanwhile moves the version
    assert empty == {"apiVersion": "v1", "kind": "List", "items": [],
                     "metadata": {"resourceVersion": empty["metadata"]["resourceVersion"]}}
    assert int(empty["metadata"]["resourceVersion"]) >= int(long_status["metadata"]["resourceVersion"])
    one = yaml.safe_load(ran["one-yaml"][1])
    assert one["kind"] == "Model" and one["metadata"]["name"] == "pinned" and one["status"]["message"] == message
    assert ran["message"][1] == message  # as kubectl: no newline added
    assert ran["columns"][1] == f"NAME     REASON\npinned   {message}\n"


def test_object_name_jsonpath_custom_columns(control: ControlPlane, long_status: dict[str, Any], cli) -> None:
    def out(*args: str) -> str:
        r = cli("--server", control.url, *args)
        assert (r.code, r.err) == (0, ""), args
        return r.out

    one = out("get", "model", "pinned", "-n", NS, "-o", "json")
    assert one.startswith('{\n  "apiVersion"') and one.endswith("}\n")
    assert json.loads(one)["status"] == long_status["status"]  # the object itself when named
    assert json.loads(out("describe", "model", "pinned", "-n", NS, "-o", "json")) == json.loads(one)
    assert yaml.safe_load(out("get", "models", "-n", "nothing-here", "-o", "yaml"))["items"] == []
    assert out("get", "models", "-n", NS, "-o", "name") == "model.mlops.seldon.io/pinned\n"
    assert out("get", "model", "pinned", "-n", NS, "-o", "name") == "model.mlops.seldon.io/pinned\n"
    assert out("get", "models", "-n", NS, "-o", "jsonpath={.items[*].metadata.name}") == "pinned"
    assert out("get", "models", "-n", NS, "-o",
               'jsonpath={range .items[*]}{.metadata.name}{"\\t"}{.status.state}{"\\n"}{end}') \
        == "pinned\tScheduleFailed\n"
    assert out("get", "model", "pinned", "-n", NS, "-o", "jsonpath=state={.status.state} gen={.metadata.generation}"
               ' ready={.status.conditions[?(@.type=="Ready")].status}{"\\n"}') \
        == "state=ScheduleFailed gen=1 ready=False\n"
    assert out("get", "models", "-n", NS, "-o", "jsonpath={.items[0].spec.requirements}") == '["sklearn"]'
    assert out("get", "models", "-n", NS, "-o", "custom-columns=NAME:.metadata.name,STATE:.status.state,"
               "GEN:.status.observedGeneration,MISSING:.status.nothing") == (
        "NAME     STATE            GEN   MISSING\n"
        "pinned   ScheduleFailed   1     <none>\n")
    assert out("get", "models", "-n", "nothing-here", "-o", "custom-columns=NAME:.metadata.name") == "NAME\n"
    everything = json.loads(out("get", "all", "-n", NS, "-o", "json"))
    assert everything["kind"] == "List" and len(everything["items"]) == 41
    assert sorted({d["kind"] for d in everything["items"]}) == ["Model", "Server"]
    assert out("get", "servers", "-n", NS, "-o", "name").splitlines() == [
        f"server.mlops.seldon.io/mlserver-for-the-financial-ml-tenant-nr-{i:02d}" for i in range(40)]


def _watch_lines(url: str, client: BerthClient, storage: str, *args: str) -> list[dict[str, Any]]:
    """`berth get models -w ARGS` piped: its lines, each parsed, until the change to ``storage`` shows."""
    proc = berth(url, "get", "models", "-n", NS, "-w", *args)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()

    def docs() -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(lines)]  # every line one whole JSON document

    def changed() -> bool:
        return any(d.get("object", d)["spec"]["storageUri"] == storage for d in docs())

    try:
        deadline = time.monotonic() + 20
        while not lines and time.monotonic() < deadline:
            time.sleep(0.05)
        client.apply([_model(storage)])
        while not changed() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(10)
    assert changed(), lines
    return docs()


def test_get_watch_json_prints_one_document_a_line(control: ControlPlane, long_status: dict[str, Any]) -> None:
    client = BerthClient(control.url)
    message = long_status["status"]["message"]
    objects = _watch_lines(control.url, client, "file:///tmp/changed", "-o", "json")
    assert len(objects) >= 2 and all(o["kind"] == "Model" for o in objects)  # objects, as kubectl -w prints
    assert objects[0]["status"]["message"] == message
    events = _watch_lines(control.url, client, "file:///tmp/again", "-o", "json", "--output-watch-events")
    assert events[0]["type"] == "ADDED" and events[0]["object"]["status"]["message"] == message
    assert {e["type"] for e in events[1:]} == {"MODIFIED"}
    assert events[-1]["object"]["metadata"]["generation"] == 3


def test_bad_output_is_one_line_naming_the_formats(control: ControlPlane, cli) -> None:
    formats = "wide, json, yaml, name, jsonpath=TEMPLATE, custom-columns=HEADER:EXPR[,...]"
    for value in ("table", "jsonpath", "jsonpath={.items[", "jsonpath={range .items[*]}{.x}",
                  "custom-columns=NAME", "custom-columns=NAME:.a[", "json=pretty"):
        r = cli("--server", control.url, "get", "models", "-o", value)
        assert r.code == 1 and r.out == "", (value, r.out)
        assert len(r.err.strip().splitlines()) == 1 and r.err.startswith("error: -o "), (value, r.err)
        assert formats in r.err, (value, r.err)
    r = cli("--server", control.url, "describe", "model", "x", "-o", "wide")
    assert r.code == 1 and "json, yaml, name, jsonpath=TEMPLATE, custom-columns=HEADER:EXPR[,...]" in r.err
    r = cli("--server", control.url, "doctor", "-o", "name")
    assert r.code == 1 and "expected one of json, yaml, jsonpath=TEMPLATE" in r.err
    r = cli("infer", "iris", "-d", '{"inputs": []}', "-o", "table")
    assert r.code == 1 and "expected one of json, yaml, jsonpath=TEMPLATE" in r.err


def test_apply_output(control: ControlPlane, cli) -> None:
    doc = yaml.safe_dump(_model())
    r = cli("--server", control.url, "apply", "-f", "-", "-o", "name", stdin=doc)
    assert (r.code, r.out) == (0, "model.mlops.seldon.io/pinned\n"), r.err
    r = cli("--server", control.url, "apply", "-f", "-", "-o", "json", stdin=doc)
    assert r.code == 0
    assert json.loads(r.out)["results"] == [{"kind": "Model", "namespace": NS, "name": "pinned",
                                             "action": "unchanged", "generation": 1}]
    r = cli("--server", control.url, "apply", "-f", "-", stdin=doc)
    assert r.out == "model.mlops.seldon.io/pinned unchanged\n"


DOC = {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "7"}, "items": [
    {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model",
     "metadata": {"name": "a", "labels": {"app.kubernetes.io/name": "x"}},
     "spec": {"requirements": ["sklearn", "xgboost"], "replicas": 2.0},
     "status": {"state": "ModelAvailable", "conditions": [{"type": "Ready", "status": "True"}]}},
    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "b"}, "status": {"note": None}}]}


@pytest.mark.parametrize(("template", "printed"), [
    ("{.items[*].metadata.name}", "a b"),
    ("names: {.items[*].metadata.name}!", "names: a b!"),
    ('{range .items[*]}{.metadata.name}{"\\t"}{.kind}{"\\n"}{end}', "a\tModel\nb\tSecret\n"),
    ("{range .items[*]}[{$.metadata.resourceVersion}:{@.metadata.name}]{end}", "[7:a][7:b]"),
    ('{.items[?(@.status.state=="ModelAvailable")].metadata.name}', "a"),
    ('{.items[0].status.conditions[?(@.type=="Ready")].status}', "True"),
    ("{.items[0].metadata.labels.app\\.kubernetes\\.io/name}", "x"),
    ("{.items[0].spec.requirements}", '["sklearn","xgboost"]'),
    ("{.items[0].spec.requirements[*]}", "sklearn xgboost"),
    ("{.items[0].spec.replicas}", "2"),
    ("{.items[-1:].metadata.name}", "b"),
    ("{.items[1].status.note}{.items[5].metadata.name}{.nothing}", ""),
    ("{.metadata}", '{"resourceVersion":"7"}'),
    ('{"}"}{"\\u00e9"}', "}é"),
    ("no braces", "no braces"),
])
def test_jsonpath_templates(template: str, printed: str) -> None:
    from berth.cli import output

    fmt = output.parse(f"jsonpath={template}")
    assert fmt is not None and fmt.text(DOC) == printed


def test_custom_columns_layout() -> None:
    from berth.cli import output

    fmt = output.parse("custom-columns=N:metadata.name,REQS:{.spec.requirements[*]},NOTE:.status.note")
    assert fmt is not None
    assert fmt.text(DOC) == ("N     REQS              NOTE\n"  # at least 6 wide, padding included (kubectl's)
                             "a     sklearn,xgboost   <none>\n"
                             "b     <none>            <none>\n")
