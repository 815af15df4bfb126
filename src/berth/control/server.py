"""Assemble and run the control plane: store, agent hub, reconciler, routes, API, provisioner."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from berth.aiotasks import GuardedTask, guarded
from berth.control.api import DEFAULT_MAX_BODY, ControlAPI
from berth.control.autoscale_loop import Autoscaler
from berth.control.gcpolicy import GcPolicy
from berth.control.hub import AgentHub
from berth.control.kube_options import KubeMode
from berth.control.listener import GuardedSite, ListenerLimits
from berth.control.loopwatch import LoopWatch, LoopWatchCollector
from berth.control.metrics import ControlMetrics
from berth.control.provisioner import LocalProvisioner
from berth.control.reconcile import Reconciler
from berth.control.routes import RoutesPublisher
from berth.control.sealing import Keyring, SealingStore
from berth.control.storage_policy import custom_runtime_allowed, load_policy
from berth.control.tokens import TokenRegistry
from berth.control.ui import DashboardUI
from berth.control.usage import UsageBook
from berth.control.wake_api import WakeAPI
from berth.errors import ConfigError
from berth.resources.identity import ALL, new_token
from berth.store import open_store
from berth.store.base import Event, Store
from berth.store.files import write_private_atomic
from berth.wire.tls import serving_context

if TYPE_CHECKING:
    from berth.control.kube_provisioner import KubeProvisioner

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
    # Identity: tokens and audit live in <data_dir>/auth.db (in memory when the store is in memory).
    admin_token: str | None = None  # made valid as the admin of every namespace (tests, berth up)
    admin_token_file: Path | None = None  # berth up: created 0600 with a new admin token if absent
    gateway_token: str | None = None  # berth up: the token its gateway watches routes with
    gateway_token_file: Path | None = None  # ... or the file holding it (never on a command line)
    secrets_key_file: Path | None = None  # master key of sealed Secrets; default <data_dir>/secrets.key (0600)
    tls_cert: Path | None = None  # --tls-cert/--tls-key: serve HTTPS/WSS (wire/tls.py; docs/kubernetes.md)
    tls_key: Path | None = None
    # Slowloris guards of the HTTP listener (control/listener.py): seconds for a request's head, its body, and
    # an idle keep-alive pause.
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    idle_timeout: float = 75.0
    storage_policy: Path | None = None  # --storage-policy FILE (control/storage_policy.py); None: built-in
    kube: KubeMode | None = None  # --store kubernetes: the cluster is the store (control/kube_mode.py)
    gc_policy: bool = False  # the process's collector tuned for short pauses (control/gcpolicy.py): berth control


async def run_control(opts: ControlOptions, stop: asyncio.Event,
                      started: asyncio.Event | None = None) -> None:
    storage_policy = load_policy(opts.storage_policy)  # a bad file stops the start, naming the field
    private_dir(opts.data_dir)
    path = opts.store_path or opts.data_dir / "berth.db"
    in_memory = str(path) == ":memory:"
    store: Store
    if opts.kube is not None:
        try:
            from berth.control import kube_mode  # the Kubernetes client is loaded only in Kubernetes mode
        except ImportError as exc:
            raise ConfigError(f"--store kubernetes needs the Kubernetes client ({exc.name} is not installed): "
                              "pip install 'modelberth[kube]'") from exc
        if opts.provision:
            raise ConfigError("--provision starts local processes; with --store kubernetes the Kubernetes "
                              "provisioner makes the pods: drop --provision")
        store = await kube_mode.open_kube_store(opts.kube)
    else:
        store = open_sealed_store(opts, path, in_memory)
    tokens = open_tokens(opts, in_memory)
    reconciler: Reconciler | None = None
    hub = AgentHub(lambda ns: reconciler.mark(ns) if reconciler is not None else None, tokens=tokens)
    hub.allows_custom_runtime = PerServer(store, custom_runtime_allowed)  # berth.io/allow-custom-runtime
    routes = RoutesPublisher(tokens=tokens)
    tls = serving_context(opts.tls_cert, opts.tls_key)  # a bad file stops the start, naming it
    control_url = f"{'https' if tls else 'http'}://{opts.host}:{opts.port}"
    kube = await kube_mode.kube_parts(opts.kube, store, hub) if opts.kube is not None else None
    provisioner: LocalProvisioner | KubeProvisioner | None = (
        kube.provisioner if kube is not None else
        LocalProvisioner(store, opts.host, opts.port, opts.data_dir, replica_memory=opts.replica_memory,
                         overcommit_percent=opts.overcommit_percent, tokens=tokens) if opts.provision else None)
    metrics = ControlMetrics(store, hub)
    watch = LoopWatch()  # gc pauses, loop lag and stalls at /metrics; a long stall is logged with its place
    metrics.registry.register(LoopWatchCollector(watch))
    hub.on_model_event = lambda ns, state: metrics.loads.update([(ns, state)])
    usage = UsageBook(time.monotonic)  # the gateways' usage reports (control/usage_api.py)
    autoscaler = Autoscaler(store, usage, lambda ns: reconciler.mark(ns) if reconciler is not None else None)
    metrics.autoscaler = autoscaler  # berth_autoscale_decisions_total
    reconciler = Reconciler(store, hub, routes, metrics=metrics, autoscaler=autoscaler,
                            on_servers_changed=provisioner.changed if provisioner is not None else None,
                            usage=usage)
    autoscaler.plans = reconciler.plans  # Servers follow the room their models wait for
    if isinstance(provisioner, LocalProvisioner):
        provisioner.replicas_of = autoscaler.server_replicas
        autoscaler.on_server_change = lambda ns: provisioner.changed()
    elif provisioner is not None:  # Kubernetes: the StatefulSets' replicas
        provisioner.adjust = autoscaler.adjust
        autoscaler.on_server_change = provisioner.mark
    api = ControlAPI(store, hub, routes, metrics, tokens=tokens, storage_policy=storage_policy, usage=usage)
    if opts.kube is not None and opts.kube.namespace:  # a namespaced install takes reports of its namespace only
        api.usage.namespaces = frozenset({opts.kube.namespace})
    metrics.usage_reports = api.usage.outcomes  # berth_usage_reports_total
    if kube is not None:
        kube_mode.gateways_with(api.auth, kube.reviewer)  # namespace gateways' pod tokens: TokenReview
    limits = ListenerLimits(header_timeout=opts.header_timeout, body_timeout=opts.body_timeout,
                            idle_timeout=opts.idle_timeout)
    app = api.app(max_body=opts.max_body, limits=limits)
    DashboardUI(tokens, api.auth).mount(app)  # /ui and its sign-in codes
    WakeAPI(store, reconciler.evictor.book, reconciler.mark).add_routes(app.router)  # docs/overcommit.md
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = GuardedSite(runner, opts.host, opts.port, limits=limits, ssl_context=tls)  # head/body/idle timeouts
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        store.close()
        if kube is not None:
            await kube.close()
        raise ConfigError(f"cannot listen on {opts.host}:{opts.port}: {exc.strerror or exc}; "
                          "is another control plane running? choose another port with --port") from exc
    log.info("control plane listening on %s (store %s)", control_url, store if kube is not None else path)
    # Root tasks: a failure is logged at once and the loop restarted with backoff (both resume from the store).
    # The routes publisher has no task of its own (the reconciler drives it); the hub's per-agent work runs
    # inside aiohttp's WebSocket handlers.
    tasks: list[GuardedTask] = [guarded("reconcile", partial(reconciler.run, stop), restart=True, stop=stop),
                                guarded("autoscale", partial(autoscaler.run, stop), restart=True, stop=stop)]
    if provisioner is not None:
        tasks.append(guarded("provisioner", partial(provisioner.run, stop), restart=True, stop=stop))
    collector = GcPolicy(watch) if opts.gc_policy else None
    if collector is not None:
        collector.start()  # first: its start-up collection is not counted as a pause
    watch.start()
    if started is not None:
        started.set()
    try:
        await stop.wait()
    finally:
        if collector is not None:
            await collector.stop()
        await watch.stop()
        api.close()
        metrics.close()
        reconciler.wake()
        if provisioner is not None:
            provisioner.changed()
        for ws_rec in list(hub.replicas.values()):
            if ws_rec.ws is not None and not ws_rec.ws.closed:
                await ws_rec.ws.close()
        await asyncio.gather(*(t.wait() for t in tasks))
        await runner.cleanup()
        store.close()
        if kube is not None:
            await kube.close()
        tokens.close()
        log.info("control plane stopped")


class PerServer:
    """A fact about a Server (``read(store, namespace, name)``), read from the store once and kept until that
    Server changes: asked for every load sent, on the loop, it must not wait for the store's lock while the
    store thread commits a pass (a thousand loads once waited 20-150 ms each there)."""

    def __init__(self, store: Store, read: Callable[[Store, str, str], bool]) -> None:
        self.store, self.read = store, read
        self.known: dict[tuple[str, str], bool] = {}
        self.changes = 0  # Server events seen: a value read before one is not kept
        store.add_listener(self._on_event)

    def _on_event(self, ev: Event) -> None:  # in the writer's thread
        if ev.kind == "Server":
            self.changes += 1
            self.known.pop((ev.namespace, ev.name), None)

    def __call__(self, namespace: str, server: str) -> bool:
        key = (namespace, server)
        value = self.known.get(key)
        if value is None:
            changes = self.changes
            value = self.read(self.store, namespace, server)
            if changes == self.changes:
                self.known[key] = value
        return value


def open_sealed_store(opts: ControlOptions, path: Path, in_memory: bool) -> SealingStore:
    """The store, with Secrets sealed at rest (one keyring per store folder, beside the store file)."""
    keyring = (Keyring.ephemeral() if in_memory else
               Keyring.open(opts.secrets_key_file or opts.data_dir / "secrets.key",
                            keys_file=Path(path).parent / "secrets.keys"))
    inner = open_store(None if in_memory else path)
    try:
        return SealingStore(inner, keyring)
    except BaseException:
        inner.close()
        raise


def open_tokens(opts: ControlOptions, in_memory: bool) -> TokenRegistry:
    """The token registry, with the tokens Berth hands its own processes made valid."""
    tokens = TokenRegistry(None if in_memory else opts.data_dir / "auth.db")
    if opts.admin_token:
        tokens.ensure("admin", opts.admin_token, grants={ALL: "admin"})
    elif opts.admin_token_file is not None:
        existing = _read_token(opts.admin_token_file, "--admin-token-file") if opts.admin_token_file.exists() else None
        if existing:
            tokens.ensure("admin", existing, grants={ALL: "admin"})
        else:
            secret = new_token()
            tokens.ensure("admin", secret, grants={ALL: "admin"})
            opts.admin_token_file.parent.mkdir(parents=True, exist_ok=True)
            write_private_atomic(opts.admin_token_file, (secret + "\n").encode())
    gateway_token = opts.gateway_token or _read_token(opts.gateway_token_file, "--gateway-token-file")
    if gateway_token:
        tokens.ensure("gateway", gateway_token, grants={}, kind="gateway")
    return tokens


def _read_token(path: Path | None, flag: str) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text().strip() or None
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from exc


def private_dir(path: Path) -> None:
    """Create ``path`` (and its parents) readable only by this user; an existing one is narrowed to 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.chmod(path, 0o700)
    except OSError as exc:  # not ours (a shared folder): say so in the log, keep going
        log.warning("could not make the data dir %s private (0700): %s", path, exc)
