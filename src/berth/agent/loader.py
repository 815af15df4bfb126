"""Fetch, place, load and unload models on the inference server, and remember what is loaded.

Files an agent owns:

* ``<data dir>/models/<name>/<generation>/`` — the fetched artifact (local copy);
* ``<data dir>/models/<name>/loaded.json`` — what was loaded (generation, memory), so a restarted agent
  can adopt models the inference server still holds instead of reloading them;
* ``<repository>/<name>/`` — the copy MLServer loads (hard links where possible) with its
  ``model-settings.json``.

Operations on one model are serialised; different models fetch and place concurrently, up to
:data:`PREPARE_CONCURRENCY` at once (so the first models reach the server early).  The inference server's
load calls pass a gate (:class:`LoadGate`):

* a model that declares its memory (``spec.memory``) loads beside others, up to :data:`LOAD_CONCURRENCY`
  load calls at once; its RSS delta is reported only when its load call ran alone (no other load call was
  under way when it started, none started before it ended: :attr:`LoadGate.entered` tells), else memory 0
  ("not measured"), since overlapping deltas cannot be told apart;
* a model that declares none loads alone, the gate drained of other loads first, and always reports the
  server's RSS delta across its load call as its memory.

Eviction (docs/overcommit.md): an ``unload`` with ``keep_artifact`` unloads the model from the inference
server but keeps ``<data dir>/models/<name>/<generation>/`` and the repository copy, with
``<data dir>/models/<name>/evicted.json`` in place of ``loaded.json``; a later load of the same generation
skips the download and the placement and only asks the inference server to load it again.  The hello lists
what is kept (:meth:`ModelLoader.kept_models`); the control plane unloads, without ``keep_artifact``, what it no
longer wants there, which removes the files.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from berth.adapters import settings, storage
from berth.adapters.base import InferenceServer
from berth.adapters.mlserver import pid_alive, pid_listening_on, rss_of
from berth.agent.config import AgentConfig
from berth.errors import BerthError, LoadError, StorageError, Unavailable
from berth.resources.instances import instance_problem
from berth.wire.agent import Load, LoadedModel, ModelEvent, ModelSource

log = logging.getLogger("berth.agent.loader")

Emit = Callable[[ModelEvent], Awaitable[None]]
STATE_FILE = "loaded.json"
EVICTED_FILE = "evicted.json"  # an evicted model's record: its artifact is kept for a reload
LOAD_CONCURRENCY = 4  # MLServer load calls at once per replica, for models that declare their memory
# Models fetched and placed at once. Without a bound, 1,000 loads queue 1,000 file jobs in the thread pool
# ahead of each other's next step and the first load call waits for most of the file work of all of them.
PREPARE_CONCURRENCY = 8


class LoadGate:
    """Up to ``limit`` shared holders at once, or one exclusive holder alone; a waiting exclusive holder
    goes before shared holders that arrive after it (so measured loads are not starved)."""

    def __init__(self, limit: int = LOAD_CONCURRENCY) -> None:
        if limit < 1:
            raise ValueError(f"a load gate needs a limit of at least 1, got {limit}")
        self.limit = limit
        self._cond = asyncio.Condition()
        self._shared = 0
        self._exclusive = False
        self._exclusive_waiting = 0
        self.peak = 0  # most shared holders seen at once (for tests and benchmarks)
        self.entered = 0  # holders admitted so far: unchanged across a hold, with active == 1, means it ran alone

    @property
    def active(self) -> int:
        return self._shared + (1 if self._exclusive else 0)

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._exclusive and not self._exclusive_waiting
                                      and self._shared < self.limit)
            self._shared += 1
            self.entered += 1
            self.peak = max(self.peak, self._shared)
        try:
            yield
        finally:
            self._shared -= 1  # before waiting for the condition's lock: a cancellation there loses nothing
            async with self._cond:
                self._cond.notify_all()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._cond:
            self._exclusive_waiting += 1
            try:
                await self._cond.wait_for(lambda: not self._exclusive and self._shared == 0)
            finally:
                self._exclusive_waiting -= 1
                if not self._exclusive:  # cancelled while waiting: let shared holders on
                    self._cond.notify_all()
            self._exclusive = True
            self.entered += 1
        try:
            yield
        finally:
            self._exclusive = False
            async with self._cond:
                self._cond.notify_all()


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _event(name: str, generation: int, state: str, started: float, *, memory: int = 0,
           message: str = "", inference_seconds: float = 0.0) -> ModelEvent:
    return ModelEvent.model_validate({
        "name": name, "generation": generation, "state": state, "memory": memory, "message": message,
        "duration": round(time.monotonic() - started, 3), "inference_seconds": round(inference_seconds, 3)})


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


class ModelLoader:
    def __init__(self, config: AgentConfig, client: InferenceServer, emit: Emit) -> None:
        self.config = config
        self.client = client
        self.emit = emit
        self.loaded: dict[str, LoadedModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.gate = LoadGate(LOAD_CONCURRENCY)
        self._prepare = asyncio.Semaphore(PREPARE_CONCURRENCY)
        self._pid: int | None = config.inference_pid
        self._turn = -1  # the loaded model ``still_held`` asked about last, by its rank in name order

    # -- bookkeeping ---------------------------------------------------------------------------
    def loaded_models(self) -> list[LoadedModel]:
        return [m.model_copy() for _, m in sorted(self.loaded.items())]

    def kept_models(self) -> list[LoadedModel]:
        """Evicted models whose artifact is kept here (``evicted.json``), for the hello: the control plane
        unloads those it no longer wants on this replica, which removes their files."""
        kept = []
        for path in sorted(self.config.models_dir.glob(f"*/{EVICTED_FILE}")):
            try:
                model = LoadedModel.model_validate_json(path.read_text())
            except (OSError, ValueError):
                model = LoadedModel(name=path.parent.name)  # unreadable: reported so that it can be removed
            name = model.name
            if name == path.parent.name and name not in self.loaded and instance_problem(name) is None:
                kept.append(model)
        return kept

    def lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def inference_pid(self) -> int | None:
        """The inference server's PID: configured, or the process listening on its HTTP port."""
        if self.config.inference_pid is not None:
            return self.config.inference_pid
        if self._pid is None or not pid_alive(self._pid):
            self._pid = pid_listening_on(self.config.inference_http_port)
        return self._pid

    def _state_path(self, name: str) -> Path:
        return self.config.models_dir / name / STATE_FILE

    def _remember(self, model: LoadedModel) -> None:
        self.loaded[model.name] = model
        path = self._state_path(model.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(model.model_dump_json())

    def _evicted_path(self, name: str) -> Path:
        return self.config.models_dir / name / EVICTED_FILE

    def _kept(self, msg: Load) -> bool:
        """Whether an eviction kept this very generation's artifact, placed, so a reload needs no download."""
        try:
            kept = LoadedModel.model_validate_json(self._evicted_path(msg.name).read_text())
        except (OSError, ValueError):
            return False
        local = self.config.models_dir / msg.name / str(msg.generation)
        return kept.generation == msg.generation and local.is_dir() and (self.config.repository / msg.name).is_dir()

    def _keep_evicted(self, name: str) -> None:
        """Record an evicted model: its artifact stays, ``loaded.json`` goes (a restart must not adopt it)."""
        model = self.loaded.pop(name, None)
        state = self._state_path(name)
        if model is not None:
            state.parent.mkdir(parents=True, exist_ok=True)
            self._evicted_path(name).write_text(model.model_dump_json())
        state.unlink(missing_ok=True)

    def _forget(self, name: str) -> None:
        self.loaded.pop(name, None)
        for leftover in (name, f".staging-{name}", f".old-{name}"):
            _remove(self.config.repository / leftover)
        _remove(self.config.models_dir / name)

    # -- load ----------------------------------------------------------------------------------
    async def load(self, msg: Load) -> ModelEvent:
        async with self.lock(msg.name):
            started = time.monotonic()
            problem = instance_problem(msg.name)  # a model, or one of its versions (NAME_GEN)
            if problem:
                return _event(msg.name, msg.generation, "LOAD_FAILED", started, message=problem)
            current = self.loaded.get(msg.name)
            if current is not None and current.generation == msg.generation:
                try:
                    await self.client.metadata(msg.name)
                    return _event(msg.name, msg.generation, "LOADED", started, memory=current.memory)
                except BerthError:
                    log.info("%s was recorded loaded but does not answer; loading it again", msg.name)
            await self.emit(_event(msg.name, msg.generation, "LOADING", started))
            try:
                memory, seconds = await self._load(msg)
            except BerthError as exc:
                log.warning("load of %s (generation %d) failed: %s", msg.name, msg.generation, exc)
                await self._discard_failed(msg.name)
                return _event(msg.name, msg.generation, "LOAD_FAILED", started, message=exc.message)
            except Exception as exc:  # a bug must still end in an outcome the control plane sees
                log.exception("load of %s failed unexpectedly", msg.name)
                await self._discard_failed(msg.name)
                return _event(msg.name, msg.generation, "LOAD_FAILED", started,
                              message=f"agent error while loading: {type(exc).__name__}: {exc}")
            try:
                self._remember(LoadedModel(name=msg.name, generation=msg.generation, memory=memory))
            except OSError as exc:
                log.warning("cannot record %s as loaded in %s: %s", msg.name, self.config.models_dir, exc)
            return _event(msg.name, msg.generation, "LOADED", started, memory=memory,
                          inference_seconds=seconds)

    async def _load(self, msg: Load) -> tuple[int, float]:
        """Fetch, place and load; returns (RSS delta in bytes, seconds MLServer's load call took)."""
        source = msg.source
        local = self.config.models_dir / msg.name / str(msg.generation)
        if await asyncio.to_thread(self._kept, msg):
            log.info("reloading evicted %s (generation %d) from its kept artifact", msg.name, msg.generation)
        else:
            await self._fetch_and_place(msg, local, source)
        measure = msg.source.memory <= 0  # undeclared: load alone, measured; declared: in parallel
        gate = self.gate
        async with gate.exclusive() if measure else gate.shared():
            entered, alone = gate.entered, gate.active == 1
            # RSS is read only for a load that may count as measured (alone): each read is file work on the loop
            pid = self.inference_pid() if alone else None
            before = rss_of(pid) if pid is not None else 0
            load_started = time.monotonic()
            try:
                await self.client.load(msg.name)
            except LoadError as exc:
                raise LoadError(f"MLServer at {self.client.base_url} failed to load {msg.name}: "
                                f"{exc.message}", details=exc.details) from exc
            seconds = time.monotonic() - load_started
            await self.client.metadata(msg.name)
            alone = alone and gate.entered == entered  # no other load call started meanwhile
            after = rss_of(pid) if pid is not None and alone else 0
        await asyncio.to_thread(self._evicted_path(msg.name).unlink, missing_ok=True)
        await asyncio.to_thread(self._drop_other_generations, msg.name, msg.generation)
        return (max(0, after - before) if alone else 0), seconds

    async def _fetch_and_place(self, msg: Load, local: Path, source: ModelSource) -> None:
        async with self._prepare:
            try:
                await asyncio.to_thread(_remove, local)
            except OSError as exc:
                raise StorageError(f"cannot clear {local} for the download: {exc}") from exc
            await asyncio.to_thread(storage.fetch, source.storage_uri, local, source)
            try:
                await asyncio.to_thread(self._place, msg, local)
            except OSError as exc:
                raise LoadError(f"cannot place {msg.name} in the model repository {self.config.repository}: "
                                f"{exc}") from exc

    def _place(self, msg: Load, local: Path) -> None:
        """Copy the local artifact into the repository as ``<repository>/<name>/`` with its settings."""
        repo = self.config.repository
        repo.mkdir(parents=True, exist_ok=True)
        staging = repo / f".staging-{msg.name}"  # dot folders are invisible to MLServer's repository scan
        _remove(staging)
        shutil.copytree(local, staging, copy_function=_link_or_copy, symlinks=False)
        settings.check_artifact_settings(staging, name=msg.name, requirements=msg.source.requirements,
                                         allow_custom=msg.source.allow_custom_runtime)
        settings.prepare(staging, name=msg.name, requirements=msg.source.requirements,
                         artifact_version=msg.source.artifact_version, extra=msg.source.parameters)
        target, old = repo / msg.name, repo / f".old-{msg.name}"
        _remove(old)
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        _remove(old)

    def _drop_other_generations(self, name: str, keep: int) -> None:
        for child in (self.config.models_dir / name).iterdir():
            if child.is_dir() and child.name != str(keep):
                _remove(child)

    async def _discard_failed(self, name: str) -> None:
        """After a failed load the model is not served here: leave nothing half-loaded behind."""
        if name in self.loaded or (self.config.repository / name).exists():
            try:
                await self.client.unload(name)
            except BerthError as exc:
                log.info("cleanup unload of %s after a failed load: %s", name, exc)
        await asyncio.to_thread(self._forget, name)

    # -- unload --------------------------------------------------------------------------------
    async def unload(self, name: str, keep_artifact: bool = False) -> ModelEvent:
        async with self.lock(name):
            started = time.monotonic()
            generation = self.loaded[name].generation if name in self.loaded else 0
            if name not in self.loaded and self._evicted_path(name).exists() and instance_problem(name) is None:
                # evicted earlier: nothing is loaded; an eviction keeps it, anything else removes the files
                if not keep_artifact:
                    await asyncio.to_thread(self._forget, name)
                return _event(name, generation, "UNLOADED", started)
            if instance_problem(name) is None:
                try:
                    await self.client.unload(name)
                except Unavailable as exc:
                    # Nothing is served by an unreachable server; remove the files so a restart
                    # with load-at-startup does not bring the model back.
                    log.warning("unloading %s: %s; removing its files", name, exc)
                except BerthError as exc:
                    return _event(name, generation, "UNLOAD_FAILED", started,
                                  message=f"MLServer at {self.client.base_url} failed to unload {name}: "
                                          f"{exc.message}")
                try:
                    await asyncio.to_thread(self._keep_evicted if keep_artifact else self._forget, name)
                except OSError as exc:
                    return _event(name, generation, "UNLOAD_FAILED", started,
                                  message=f"unloaded, but removing its files failed: {exc}")
            return _event(name, generation, "UNLOADED", started)

    # -- agree with the server after restarts --------------------------------------------------
    async def still_held(self) -> bool:
        """Whether the inference server still holds one model this agent loaded, the next in turn: a restart
        loses every model at once, so one ``GET /v2/models/{name}`` finds it (``resync`` reads the repository
        index, which parses the settings of every model there).  False only on a non-200 answer for a model
        whose record did not change meanwhile; True when there is nothing to ask or the server did not answer
        (its readiness is the readiness watcher's business)."""
        names = [name for name in sorted(self.loaded) if not self.lock(name).locked()]
        if not names:
            return True
        self._turn = (self._turn + 1) % len(names)
        name = names[self._turn]
        record = self.loaded[name]
        try:
            await self.client.metadata(name)
        except LoadError:
            return self.loaded.get(name) is not record or self.lock(name).locked()
        except BerthError:
            return True
        return True

    async def resync(self) -> None:
        """Drop models the server no longer holds; adopt models recorded on disk that it still holds.

        Safe beside loads and unloads (the agent runs it every ``resync_interval`` seconds): a model is dropped
        only when the very record it had before the index was read is still its record and no load or unload
        holds it, so a load that ends while the index is read is not undone by the index's older answer."""
        before = dict(self.loaded)
        try:
            index = await self.client.index()
        except BerthError as exc:
            log.info("cannot read the repository index to resync: %s", exc)
            return
        for name, model in before.items():
            if self.loaded.get(name) is not model or self.lock(name).locked() or index.get(name) == "READY":
                continue
            log.warning("the inference server no longer holds %s (generation %d; its state there: %s): restarted? "
                        "telling the control plane, which loads it again", name, model.generation,
                        index.get(name, "absent"))
            await asyncio.to_thread(self._forget, name)
            await self.emit(ModelEvent(name=name, generation=model.generation, state="UNLOADED",
                                       message="the inference server no longer holds this model "
                                               f"(state {index.get(name, 'absent')}; restarted?)"))
        for path in sorted(self.config.models_dir.glob(f"*/{STATE_FILE}")):
            if path.parent.name in self.loaded:  # (the usual case of a periodic resync: not read at all)
                continue
            try:
                model = LoadedModel.model_validate_json(path.read_text())
            except (OSError, ValueError):
                continue
            if model.name in self.loaded or self.lock(model.name).locked():
                continue
            if index.get(model.name) == "READY" and (self.config.repository / model.name).is_dir():
                self.loaded[model.name] = model
                log.info("adopted %s (generation %d), still loaded on the inference server",
                         model.name, model.generation)
                await self.emit(ModelEvent(name=model.name, generation=model.generation, state="LOADED",
                                           memory=model.memory, message="already loaded"))
            elif index.get(model.name) not in ("LOADING",):
                await asyncio.to_thread(self._forget, model.name)
