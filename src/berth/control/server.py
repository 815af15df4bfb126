"""Assemble and run the control plane: store, agent hub, reconciler, routes, API, provisioner."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from berth.control.api import DEFAULT_MAX_BODY, ControlAPI
from berth.control.hub import AgentHub
from berth.control.metrics import ControlMetrics
from berth.control.provisioner import LocalProvisioner
from berth.control.reconcile import Reconciler
from berth.control.routes import RoutesPublisher
from berth.errors import ConfigError
from berth.store import open_store

log = logging.getLogger("berth.control")


@dataclass
class ControlOptions:
    host: str = "127.0.0.1"
    port: int = 9004
    data_dir: Path = Path(".berth")
    store_path: Path | None = None  # default: <data_dir>/berth.db; ":memory:" keeps nothing
    provision: bool = False  # run the local provisioner (berth up turns it on)
    replica_memory: int = 2 * 1024**3
    overcommit_percent: int = 10
    max_body: int = DEFAULT_MAX_BODY


async def run_control(opts: ControlOptions, stop: asyncio.Event,
                      started: asyncio.Event | None = None) -> None:
    opts.data_dir.mkdir(parents=True, exist_ok=True)
    path = opts.store_path or opts.data_dir / "berth.db"
    store = open_store(None if str(path) == ":memory:" else path)
    reconciler: Reconciler | None = None
    hub = AgentHub(lambda ns: reconciler.mark(ns) if reconciler is not None else None)
    routes = RoutesPublisher()
    control_url = f"http://{opts.host}:{opts.port}"
    provisioner = (LocalProvisioner(store, opts.host, opts.port, opts.data_dir, replica_memory=opts.replica_memory,
                                    overcommit_percent=opts.overcommit_percent) if opts.provision else None)
    metrics = ControlMetrics(store, hub)
    hub.on_model_event = lambda ns, state: metrics.loads.update([(ns, state)])
    reconciler = Reconciler(store, hub, routes, metrics=metrics,
                            on_servers_changed=provisioner.changed if provisioner is not None else None)
    api = ControlAPI(store, hub, routes, metrics)
    runner = web.AppRunner(api.app(max_body=opts.max_body), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, opts.host, opts.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        store.close()
        raise ConfigError(f"cannot listen on {opts.host}:{opts.port}: {exc.strerror or exc}; "
                          "is another control plane running? choose another port with --port") from exc
    log.info("control plane listening on %s (store %s)", control_url, path)
    tasks = [asyncio.create_task(reconciler.run(stop), name="reconcile")]
    if provisioner is not None:
        tasks.append(asyncio.create_task(provisioner.run(stop), name="provisioner"))
    if started is not None:
        started.set()
    try:
        await stop.wait()
    finally:
        api.close()
        reconciler.wake()
        if provisioner is not None:
            provisioner.changed()
        for ws_rec in list(hub.replicas.values()):
            if ws_rec.ws is not None and not ws_rec.ws.closed:
                await ws_rec.ws.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()
        store.close()
        log.info("control plane stopped")
