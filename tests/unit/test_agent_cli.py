"""`berth agent`'s options come from AgentConfig's declaration (issue 18), as the control plane's, the
gateway's and `berth up`'s do: every setting with a flag is an option with its help and variables, a flag wins
over the environment and is checked as the variable is, and `--control HOST:PORT` gives two settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from berth.agent.config import AgentConfig
from berth.daemons.agent_cmd import agent_config
from berth.daemons.options import settings_parameters
from berth.errors import ConfigError
from berth.main import main as berth
from berth.resources.process_settings import env_names, flag_of


def test_every_flag_of_the_declaration_is_an_option_with_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert berth(["agent", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # help wraps to the terminal's width
    flagged = {name: flag_of(f) for name, f in AgentConfig.model_fields.items() if flag_of(f)}
    assert {"server", "replica", "namespace", "memory", "control_host", "control_port", "token_file"} <= set(flagged)
    for name, flag in flagged.items():
        for spelling in str(flag).split(","):
            assert spelling in text, (name, spelling)
        for variable in env_names(AgentConfig.model_fields[name]):
            assert variable in text, (name, variable)
        if flag != "--control":
            assert AgentConfig.help(name).split(" (env")[0] in text, name
    assert "Control plane HOST:PORT" in text and "--log-level" in text


def test_flags_win_over_the_environment_and_are_parsed_as_variables_are(tmp_path: Path) -> None:
    env = {"POD_NAME": "mlserver-2", "MEMORY_REQUEST": "2Gi", "SELDON_SCHEDULER_HOST": "10.0.0.5",
           "SELDON_SCHEDULER_PORT": "9104", "SELDON_SERVER_CAPABILITIES": "mlflow"}
    cfg = agent_config(env)
    assert (cfg.server, cfg.replica, cfg.memory, cfg.control_host, cfg.control_port, cfg.capabilities) == (
        "mlserver", 2, 2 << 30, "10.0.0.5", 9104, ("mlflow",))
    cfg = agent_config(env, "http://127.0.0.1:9004/", replica=5, memory="512Mi", capabilities="sklearn, xgboost,",
                       namespace="team-a", token_file=None)
    assert (cfg.replica, cfg.memory, cfg.control_url, cfg.capabilities, cfg.namespace) == (
        5, 512 << 20, "ws://127.0.0.1:9004/api/v1/agents/connect", ("sklearn", "xgboost"), "team-a")


@pytest.mark.parametrize(("argv", "message"), [
    (["--inference-http-port", "0"], "--inference-http-port=0: a port must be between 1 and 65535"),
    (["--memory", "lots"], "--memory='lots': expected a quantity (bytes, 500M, 2Gi)"),
    (["--control", "127.0.0.1"], "--control='127.0.0.1': expected HOST:PORT, e.g. 127.0.0.1:9004"),
    (["--control", "127.0.0.1:70000"], "--control='70000': a port must be between 1 and 65535"),
    (["--control", "127.0.0.1:port"], "--control='port': expected a whole number (integer 1–65535)"),
    (["-n", "Team_A"], "--namespace='Team_A': 'Team_A' is not a valid DNS-1123 label"),
    (["--overcommit", "5000"], "--overcommit=5000: expected integer 0–1000"),
])
def test_a_wrong_flag_stops_the_agent_with_one_line(argv: list[str], message: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert berth(["agent", *argv]) == 1  # refused before anything starts
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_a_flag_two_settings_declare_must_be_worded() -> None:
    with pytest.raises(TypeError, match="--control is declared by control_host, control_port"):
        settings_parameters(AgentConfig)
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        agent_config({}, ":9004")
