"""Typed settings of the control plane and the gateway (issue 18): Berth's and Seldon's variable names in one
declaration, ranges checked once with errors naming the variable or flag, CLI options and docs generated."""

from __future__ import annotations

from pathlib import Path

import pytest

from berth.control.settings import ControlSettings
from berth.daemons.settings_doc import main, settings_markdown
from berth.daemons.up import UpSettings
from berth.errors import ConfigError
from berth.gateway.settings import GatewaySettings
from berth.main import main as berth
from berth.resources.process_settings import ProcessSettings


def test_defaults_need_no_environment() -> None:
    c = ControlSettings.from_env({})
    assert (c.host, c.port, c.replica_memory, c.overcommit, c.max_body) == ("127.0.0.1", 9004, 2 << 30, 10, 8 << 20)
    g = GatewaySettings.from_env({})
    assert (g.port, g.grpc_port, g.control, g.check_inputs) == (9000, 9001, "http://127.0.0.1:9004", True)


def test_seldon_names_are_accepted_and_berth_names_win() -> None:
    seldon = {"MEMORY_REQUEST": "1Gi", "SELDON_OVERCOMMIT_PERCENTAGE": "25", "SELDON_SCHEDULER_PORT": "9104"}
    c = ControlSettings.from_env(seldon)
    assert (c.replica_memory, c.overcommit, c.port) == (1 << 30, 25, 9104)
    c = ControlSettings.from_env({**seldon, "BERTH_REPLICA_MEMORY": "512Mi", "BERTH_OVERCOMMIT_PERCENT": "5"})
    assert (c.replica_memory, c.overcommit) == (512 << 20, 5)


def test_a_flag_wins_over_the_environment_and_is_checked_the_same_way() -> None:
    c = ControlSettings.from_env({"BERTH_CONTROL_PORT": "9100"}, port=9200, replica_memory="3Gi", provision=True)
    assert (c.port, c.replica_memory, c.provision) == (9200, 3 << 30, True)
    with pytest.raises(ConfigError, match=r"^--overcommit=2000: expected integer 0–1000$"):
        ControlSettings.from_env({}, overcommit=2000)
    with pytest.raises(ConfigError, match=r"^--max-request-bytes='lots': expected a quantity"):
        GatewaySettings.from_env({}, max_request_bytes="lots")


@pytest.mark.parametrize(("cls", "env", "message"), [
    (ControlSettings, {"BERTH_CONTROL_PORT": "70000"},
     "BERTH_CONTROL_PORT='70000': a port must be between 1 and 65535"),
    (ControlSettings, {"SELDON_OVERCOMMIT_PERCENTAGE": "lots"},
     "SELDON_OVERCOMMIT_PERCENTAGE='lots': expected a whole number (integer 0–1000)"),
    (ControlSettings, {"MEMORY_REQUEST": "2Gx"}, "MEMORY_REQUEST='2Gx': expected a quantity (bytes, 500M, 2Gi)"),
    (ControlSettings, {"BERTH_HEADER_TIMEOUT": "0"}, "BERTH_HEADER_TIMEOUT='0': expected number, > 0 and ≤ 3600"),
    (ControlSettings, {"BERTH_PROVISION": "maybe"}, "BERTH_PROVISION='maybe': expected true or false"),
    (ControlSettings, {"BERTH_LOG_LEVEL": "loud"},
     "BERTH_LOG_LEVEL='loud': expected one of DEBUG, INFO, WARNING, ERROR"),
    (GatewaySettings, {"BERTH_GATEWAY_GRPC_PORT": "-2"},
     "BERTH_GATEWAY_GRPC_PORT='-2': expected integer -1 to 65535"),
    (GatewaySettings, {"BERTH_MAX_REQUEST_BYTES": "8Gi"},
     "BERTH_MAX_REQUEST_BYTES='8Gi': expected quantity (bytes, 500M, 2Gi), ≥ 1 and ≤ 4Gi"),
    (GatewaySettings, {"BERTH_UPSTREAM_TIMEOUT": "soon"},
     "BERTH_UPSTREAM_TIMEOUT='soon': expected a number (number, > 0 and ≤ 3600)"),
])
def test_a_wrong_value_names_the_variable_and_what_it_accepts(cls: type[ProcessSettings], env: dict[str, str],
                                                              message: str) -> None:
    with pytest.raises(ConfigError) as err:
        cls.from_env(env)
    assert str(err.value) == message


def test_values_are_parsed_once_into_types() -> None:
    g = GatewaySettings.from_env({"BERTH_CHECK_INPUTS": "no", "BERTH_ROUTES_FILE": " /tmp/r.json ",
                                  "BERTH_GATEWAY_GRPC_PORT": "-1", "BERTH_LOG_LEVEL": "debug"})
    assert (g.check_inputs, g.routes, g.grpc_port, g.log_level) == (False, Path("/tmp/r.json"), -1, "debug")
    with pytest.raises(ConfigError, match="unknown gateway setting"):
        GatewaySettings.from_env({}, no_such=1)


def test_gateway_limits_come_from_its_settings() -> None:
    g = GatewaySettings.from_env({"BERTH_H2_MAX_CONCURRENT_STREAMS": "32", "BERTH_H2_MAX_HEADER_LIST_SIZE": "8Ki",
                                  "BERTH_REST_BODY_TIMEOUT": "5"}, h2_idle_timeout=30.0)
    rest, h2 = g.limits()
    assert (h2.max_concurrent_streams, h2.max_header_list_size, h2.idle_timeout) == (32, 8192, 30.0)
    assert (rest.body_timeout, rest.header_timeout) == (5.0, 20.0)
    assert h2.max_continuation_frames == 16  # a bound with no setting keeps its default
    with pytest.raises(ConfigError, match="BERTH_H2_MAX_CONCURRENT_STREAMS='0': .*integer 1–10000"):
        GatewaySettings.from_env({"BERTH_H2_MAX_CONCURRENT_STREAMS": "0"})


def test_control_options_carry_every_setting(tmp_path: Path) -> None:
    c = ControlSettings.from_env({"BERTH_STORE": ":memory:", "BERTH_IDLE_TIMEOUT": "5"},
                                 storage_policy=tmp_path / "policy.yaml", data_dir=tmp_path)
    opts = c.options()
    assert (opts.store_path, opts.idle_timeout, opts.storage_policy, opts.data_dir) == (
        Path(":memory:"), 5.0, tmp_path / "policy.yaml", tmp_path)


def test_cli_options_come_from_the_declaration(capsys: pytest.CaptureFixture[str]) -> None:
    for command, cls in (("control", ControlSettings), ("gateway", GatewaySettings), ("up", UpSettings)):
        assert berth([command, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())  # help wraps to the terminal's width
        for name, field in cls.model_fields.items():
            flag = (field.json_schema_extra or {}).get("flag")  # type: ignore[union-attr]
            assert str(flag).split("/")[0] in text, (command, name)
            assert cls.help(name).split(" (env")[0] in text, (command, name)
        if cls is ControlSettings:
            assert "SELDON_OVERCOMMIT_PERCENTAGE" in text


def test_a_wrong_flag_stops_the_command_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert berth(["gateway", "--port", "0"]) == 1
    assert capsys.readouterr().err == "error: --port=0: a port must be between 1 and 65535\n"
    assert berth(["control", "--max-body", "2Gx"]) == 1
    assert capsys.readouterr().err == "error: --max-body='2Gx': expected a quantity (bytes, 500M, 2Gi)\n"


def test_docs_are_current(capsys: pytest.CaptureFixture[str]) -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
    assert doc.read_text() == settings_markdown(), "regenerate: python -m berth.daemons.settings_doc --markdown"
    assert main(["--markdown"]) == 0 and capsys.readouterr().out == settings_markdown()
    assert "| `overcommit` | `BERTH_OVERCOMMIT_PERCENT`, `SELDON_OVERCOMMIT_PERCENTAGE` |" in settings_markdown()


def test_berth_up_is_on_the_same_base(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    u = UpSettings.from_env({"MEMORY_REQUEST": "1Gi", "SELDON_SCHEDULER_PORT": "9104"}, default_server=False)
    assert (u.replica_memory, u.control_port, u.default_server, u.gateway_port) == (1 << 30, 9104, False, 9000)
    assert berth(["up", "--grpc-port", "0"]) == 1  # refused before anything starts
    assert capsys.readouterr().err == "error: --grpc-port=0: a port must be between 1 and 65535\n"
    monkeypatch.setenv("BERTH_UP_TIMEOUT", "-5")
    assert berth(["up", "--replica-memory", "1Gi"]) == 1
    assert capsys.readouterr().err == "error: BERTH_UP_TIMEOUT='-5': expected number, > 0 and ≤ 3600\n"
    monkeypatch.delenv("BERTH_UP_TIMEOUT")
    assert berth(["up", "--replica-memory", "lots"]) == 1
    assert capsys.readouterr().err == "error: --replica-memory='lots': expected a quantity (bytes, 500M, 2Gi)\n"
