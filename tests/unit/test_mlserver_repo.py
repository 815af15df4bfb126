"""Berth's model repository for MLServer (real files, real MLServer classes) and the agent's load gate."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from mlserver.errors import ModelNotFound
from mlserver.repository import SchemalessModelRepository
from mlserver.repository.factory import ModelRepositoryFactory
from mlserver.settings import Settings

from berth.adapters import settings as berth_settings
from berth.adapters.mlserver_proc import REPOSITORY_IMPLEMENTATION, MLServerProcess
from berth.adapters.mlserver_repo import BerthModelRepository
from berth.agent.loader import LoadGate
from tests.support.models import train_sklearn


def _model(root: Path, folder: str, *, name: str | None = None, version: str | None = None) -> Path:
    path = root / folder
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.joblib").write_bytes(b"")
    params: dict[str, str] = {"uri": "./model.joblib"}
    if version:
        params["version"] = version
    (path / "model-settings.json").write_text(json.dumps(
        {"name": name or folder, "implementation": "mlserver_sklearn.SKLearnModel", "parameters": params}))
    return path


def test_find_reads_only_the_models_own_folder(tmp_path: Path) -> None:
    _model(tmp_path, "iris", version="3")
    _model(tmp_path, "other")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model-settings.json").write_text("{not json")
    repo = BerthModelRepository(str(tmp_path))
    [found] = asyncio.run(repo.find("iris"))
    assert found.name == "iris" and found.parameters is not None and found.parameters.version == "3"
    assert found.implementation_ == "mlserver_sklearn.SKLearnModel"
    # the same answer as MLServer's default repository gives for this model
    [default] = asyncio.run(SchemalessModelRepository(str(tmp_path)).find("iris"))
    assert (default.name, default.parameters.version, default.parameters.uri) == (  # type: ignore[union-attr]
        found.name, found.parameters.version, found.parameters.uri)
    with pytest.raises(ModelNotFound):
        asyncio.run(repo.find("broken"))  # a file that does not parse is no model, and fails only its own load


@pytest.mark.parametrize("name", ["absent", "", ".staging-iris", "../iris", "iris/../iris", "a\\b", "x\0y"])
def test_find_refuses_what_is_not_a_model_folder(tmp_path: Path, name: str) -> None:
    _model(tmp_path, "iris")
    _model(tmp_path, ".staging-iris")  # Berth's staging folder: never a model
    with pytest.raises(ModelNotFound):
        asyncio.run(BerthModelRepository(str(tmp_path / "sub" / "..")).find(name))


def test_a_folder_whose_settings_name_another_model_is_not_found(tmp_path: Path) -> None:
    _model(tmp_path, "iris", name="someone-else")
    with pytest.raises(ModelNotFound):
        asyncio.run(BerthModelRepository(str(tmp_path)).find("iris"))
    with pytest.raises(ModelNotFound):
        asyncio.run(BerthModelRepository(str(tmp_path)).find("someone-else"))


def test_nested_settings_in_an_artifact_are_inert(tmp_path: Path) -> None:
    """MLServer's default scans recursively, so an artifact's ``sub/model-settings.json`` naming its own model
    (and any implementation) would load as one more version, past Berth's settings checks; here it is data."""
    _model(tmp_path, "iris")
    nested = tmp_path / "iris" / "sub"
    nested.mkdir()
    (nested / "model-settings.json").write_text(json.dumps(
        {"name": "iris", "implementation": "evil.Runtime", "parameters": {"version": "9"}}))
    assert len(asyncio.run(SchemalessModelRepository(str(tmp_path)).find("iris"))) == 2
    assert [s.implementation_ for s in asyncio.run(BerthModelRepository(str(tmp_path)).find("iris"))] == [
        "mlserver_sklearn.SKLearnModel"]
    assert [s.name for s in asyncio.run(BerthModelRepository(str(tmp_path)).list())] == ["iris"]


def test_list_reads_direct_folders_and_skips_staging(tmp_path: Path) -> None:
    for name in ("b", "a", ".staging-c", ".old-d"):
        _model(tmp_path, name)
    (tmp_path / "empty").mkdir()
    (tmp_path / "stray.json").write_text("{}")
    assert [s.name for s in asyncio.run(BerthModelRepository(str(tmp_path)).list())] == ["a", "b"]
    # an empty or missing root lists nothing (no model is configured through the environment here)
    assert asyncio.run(BerthModelRepository(str(tmp_path / "missing")).list()) == []


def test_finds_what_the_agent_places(tmp_path: Path) -> None:
    """Settings written by Berth's own writer (relative uri, version from artifactVersion) are found as written."""
    folder = train_sklearn(tmp_path / "iris")
    berth_settings.prepare(folder, name="iris", requirements=["sklearn"], artifact_version=2)
    [found] = asyncio.run(BerthModelRepository(str(tmp_path)).find("iris"))
    assert found.parameters is not None and found.parameters.version == "2"
    assert found.parameters.uri is not None and (folder / found.parameters.uri).resolve() == (
        folder / "model.joblib").resolve()


def test_mlserver_resolves_the_setting_berth_writes(tmp_path: Path) -> None:
    proc = MLServerProcess(tmp_path)
    proc.write_settings()
    written = json.loads((tmp_path / "settings.json").read_text())
    assert written["model_repository_implementation"] == REPOSITORY_IMPLEMENTATION
    mlserver_settings = Settings(**written)
    mlserver_settings.model_repository_root = str(tmp_path)  # what `mlserver start WORKDIR` does
    repo = ModelRepositoryFactory.resolve_model_repository(mlserver_settings)
    assert isinstance(repo, BerthModelRepository)
    _model(proc.repository, "iris")
    _model(tmp_path, "beside")  # a folder next to the repository, not in it
    assert [s.name for s in asyncio.run(repo.find("iris"))] == ["iris"]
    assert [s.name for s in asyncio.run(repo.list())] == ["iris"]
    with pytest.raises(ModelNotFound):
        asyncio.run(repo.find("beside"))


def test_load_gate_bounds_shared_holders_and_runs_exclusive_alone() -> None:
    async def scenario() -> None:
        gate = LoadGate(3)
        inside: list[str] = []
        seen: list[tuple[str, int]] = []

        async def shared(i: int) -> None:
            async with gate.shared():
                inside.append(f"s{i}")
                seen.append((f"s{i}", len(inside)))
                await asyncio.sleep(0.01)
                inside.remove(f"s{i}")

        async def exclusive(i: int) -> None:
            async with gate.exclusive():
                inside.append(f"x{i}")
                seen.append((f"x{i}", len(inside)))
                await asyncio.sleep(0.01)
                inside.remove(f"x{i}")

        tasks = [shared(i) for i in range(10)] + [exclusive(0)] + [shared(i) for i in range(10, 20)]
        await asyncio.wait_for(asyncio.gather(*tasks, exclusive(1)), 10)
        assert gate.peak == 3 and gate.active == 0
        assert all(n == 1 for who, n in seen if who.startswith("x"))
        assert max(n for _, n in seen) == 3

        # an exclusive waiter cancelled while waiting lets the shared holders behind it go on
        async with gate.shared():
            waiter = asyncio.create_task(exclusive(2))
            await asyncio.sleep(0.01)
            late = asyncio.create_task(shared(99))
            await asyncio.sleep(0.01)
            assert not late.done()  # the waiting exclusive holder goes first
            waiter.cancel()
            await asyncio.sleep(0.01)
        await asyncio.wait_for(late, 1)
        assert gate.active == 0
        with pytest.raises(ValueError, match="at least 1"):
            LoadGate(0)

    asyncio.run(scenario())
