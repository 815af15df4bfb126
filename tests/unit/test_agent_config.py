"""AgentConfig.from_env: Berth and Seldon variable names, precedence, and errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from berth.agent.config import DEFAULT_CAPABILITIES, AgentConfig
from berth.errors import ConfigError


def test_defaults() -> None:
    cfg = AgentConfig.from_env({})
    assert (cfg.server, cfg.replica, cfg.namespace) == ("mlserver", 0, "default")
    assert cfg.capabilities == DEFAULT_CAPABILITIES
    assert cfg.memory == 1 << 30 and cfg.overcommit_percent == 10
    assert cfg.control_url == "ws://127.0.0.1:9004/api/v1/agents/connect"
    assert cfg.data_path == Path(".berth/agents/default.mlserver-0")
    assert cfg.repository == cfg.data_path / "repository"
    assert cfg.models_dir == cfg.data_path / "models"


def test_seldon_names() -> None:
    cfg = AgentConfig.from_env({
        "POD_NAME": "mlserver-2", "POD_NAMESPACE": "financial-ml",
        "SELDON_SERVER_CAPABILITIES": "mlflow, sklearn,,torch ", "MEMORY_REQUEST": "2Gi",
        "SELDON_OVERCOMMIT_PERCENTAGE": "30", "SELDON_SERVER_HTTP_PORT": "9000",
        "SELDON_SERVER_GRPC_PORT": "9500", "SELDON_SCHEDULER_HOST": "10.0.0.5",
        "SELDON_SCHEDULER_PORT": "9004", "MLSERVER_MODEL_REPOSITORY_ROOT": "/mnt/models"})
    assert (cfg.server, cfg.replica, cfg.namespace) == ("mlserver", 2, "financial-ml")
    assert cfg.capabilities == ("mlflow", "sklearn", "torch")
    assert cfg.memory == 2 * 1024**3 and cfg.overcommit_percent == 30
    assert (cfg.inference_http_port, cfg.inference_grpc_port) == (9000, 9500)
    assert cfg.inference.http == "127.0.0.1:9000"
    assert cfg.control_url == "ws://10.0.0.5:9004/api/v1/agents/connect"
    assert cfg.repository == Path("/mnt/models")
    assert cfg.identity == "financial-ml/mlserver/2"


def test_pod_name_with_dashes_and_plain_byte_memory() -> None:
    cfg = AgentConfig.from_env({"POD_NAME": "my-gpu-server-11", "MEMORY_REQUEST": "1048576"})
    assert (cfg.server, cfg.replica, cfg.memory) == ("my-gpu-server", 11, 1048576)


def test_berth_names_win_over_seldon_and_overrides_win_over_both(tmp_path: Path) -> None:
    env = {"POD_NAME": "mlserver-2", "BERTH_SERVER": "triton", "BERTH_REPLICA": "5",
           "SELDON_SCHEDULER_PORT": "9004", "BERTH_CONTROL_PORT": "7000", "BERTH_MEMORY": "500M",
           "MEMORY_REQUEST": "2Gi", "BERTH_DATA_DIR": str(tmp_path), "BERTH_INFERENCE_PID": "123"}
    cfg = AgentConfig.from_env(env)
    assert (cfg.server, cfg.replica, cfg.control_port, cfg.memory) == ("triton", 5, 7000, 500 * 10**6)
    assert cfg.models_dir == tmp_path / "models" and cfg.inference_pid == 123
    cfg = AgentConfig.from_env(env, control_port=7100, replica=None, capabilities=("a",))
    assert (cfg.control_port, cfg.replica, cfg.capabilities) == (7100, 5, ("a",))


@pytest.mark.parametrize(("env", "expected"), [
    ({"MEMORY_REQUEST": "lots"}, "MEMORY_REQUEST='lots'"),
    ({"SELDON_OVERCOMMIT_PERCENTAGE": "ten"}, "SELDON_OVERCOMMIT_PERCENTAGE='ten': expected a whole number"),
    ({"SELDON_SERVER_HTTP_PORT": "70000"}, "SELDON_SERVER_HTTP_PORT='70000': a port must be between"),
    ({"BERTH_CONTROL_PORT": "0"}, "BERTH_CONTROL_PORT='0'"),
    ({"POD_NAME": "mlserver"}, "POD_NAME='mlserver' is not of the form <server>-<replica index>"),
    ({"BERTH_REPLICA": "-1"}, "BERTH_REPLICA='-1': expected integer, ≥ 0"),
    ({"BERTH_SERVER": "My_Server"}, "BERTH_SERVER='My_Server': 'My_Server' is not a valid DNS-1123 label"),
    ({"POD_NAMESPACE": "a.b"}, "POD_NAMESPACE='a.b': 'a.b' is not a valid DNS-1123 label"),
    ({"SELDON_OVERCOMMIT_PERCENTAGE": "5000"}, "SELDON_OVERCOMMIT_PERCENTAGE='5000': expected integer 0–1000"),
])
def test_bad_values_name_the_variable(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        AgentConfig.from_env(env)
    assert expected in info.value.message


def test_unknown_override_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown agent setting.*colour"):
        AgentConfig.from_env({}, colour="blue")


def test_direct_construction_validates() -> None:
    with pytest.raises(ConfigError, match="^agent inference_http_port: expected integer 1–65535, got 0$"):
        AgentConfig(inference_http_port=0)
    with pytest.raises(ConfigError, match="^agent probe_timeout: expected number, > 0, got 0"):
        AgentConfig(probe_timeout=0)
    with pytest.raises(ConfigError, match="agent server: 'A' is not a valid DNS-1123 label"):
        AgentConfig(server="A")
    with pytest.raises(ConfigError, match="reconnect backoff"):
        AgentConfig(reconnect_min=2.0, reconnect_max=1.0)


def test_one_declaration_gives_variables_ranges_help_and_docs(capsys: pytest.CaptureFixture[str]) -> None:
    from berth.agent.config import ENV_NAMES, cli_help, main, settings_markdown

    assert ENV_NAMES["memory"] == ("BERTH_MEMORY", "MEMORY_REQUEST")
    assert ENV_NAMES["overcommit_percent"] == ("BERTH_OVERCOMMIT_PERCENT", "SELDON_OVERCOMMIT_PERCENTAGE")
    assert AgentConfig.from_env({"SELDON_SERVER_HOST": "10.1.2.3"}).inference_host == "10.1.2.3"
    assert "MEMORY_REQUEST" in cli_help("memory") and "SELDON_SERVER_HTTP_PORT" in cli_help("inference_http_port")
    doc = Path(__file__).resolve().parents[2] / "docs" / "agent-settings.md"
    assert doc.read_text() == settings_markdown(), "regenerate: python -m berth.agent.config --markdown"
    assert main(["--markdown"]) == 0 and capsys.readouterr().out == settings_markdown()
    assert "| `overcommit_percent` |" in settings_markdown() and "integer 0–1000" in settings_markdown()


def test_direct_construction_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTH_SERVER", "from-env")
    monkeypatch.setenv("MEMORY_REQUEST", "lots")
    assert AgentConfig().server == "mlserver"
    assert AgentConfig(replica=3).replica == 3


def test_on_the_shared_settings_base_flags_are_checked_like_variables() -> None:
    from berth.resources.process_settings import ProcessSettings

    assert issubclass(AgentConfig, ProcessSettings)
    with pytest.raises(ConfigError) as info:
        AgentConfig.from_env({}, memory="lots")
    assert info.value.message == "--memory='lots': expected a quantity (bytes, 500M, 2Gi)"
    with pytest.raises(ConfigError) as info:
        AgentConfig.from_env({}, inference_grpc_port=70000)
    assert info.value.message == "--inference-grpc-port=70000: a port must be between 1 and 65535"
    with pytest.raises(ConfigError) as info:
        AgentConfig.from_env({}, server="Bad_Name")
    assert info.value.message.startswith("--server='Bad_Name': 'Bad_Name' is not a valid DNS-1123 label")
    assert AgentConfig.from_env({"BERTH_MEMORY": "1Gi"}, memory="2Gi").memory == 2 << 30


def test_the_token_is_never_printed() -> None:
    cfg = AgentConfig.from_env({"BERTH_AGENT_TOKEN": "s3cr3t-token"})
    assert cfg.bearer_token() == "s3cr3t-token"
    assert "s3cr3t" not in repr(cfg) and "s3cr3t" not in str(cfg)
