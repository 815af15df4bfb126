"""The control plane's settings: ``ControlSettings``, one typed declaration (see
``berth.resources.process_settings``) from which ``berth control``'s options, its environment variables
(Berth's names, then Seldon's scheduler names where Seldon has one) and ``docs/settings.md`` all come."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from berth.control.api import DEFAULT_MAX_BODY
from berth.control.kube_options import STORE_WORD, KubeMode
from berth.control.server import ControlOptions
from berth.resources.process_settings import QUANTITY, ProcessSettings, setting

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ControlSettings(ProcessSettings):
    """Listener, store, identity files and local replicas of one control plane."""

    PROCESS: ClassVar[str] = "control plane"
    TITLE: ClassVar[str] = "Control plane"
    COMMAND: ClassVar[str] = "berth control"

    host: str = setting("127.0.0.1", "BERTH_CONTROL_BIND", flag="--host", doc="Address to listen on")
    port: int = setting(9004, "BERTH_CONTROL_PORT", "SELDON_SCHEDULER_PORT", flag="--port", ge=1, le=65535,
                        doc="Port of the API, the agents' WebSocket and the routes watch")
    data_dir: Path = setting(Path(".berth"), "BERTH_DATA_DIR", flag="--data-dir",
                             doc="State: the store, tokens and audit, the Secrets key, local replicas")
    store: str | None = setting(None, "BERTH_STORE", flag="--store",
                                doc="SQLite file (default DATA_DIR/berth.db), :memory: to keep nothing, or "
                                    "kubernetes: the cluster's API is the store (docs/kubernetes.md)")
    kubeconfig: Path | None = setting(None, "BERTH_KUBECONFIG", flag="--kubeconfig",
                                      doc="With --store kubernetes: kubeconfig file (default: KUBECONFIG, "
                                          "else in-cluster config in a pod, else ~/.kube/config)")
    kube_context: str | None = setting(None, "BERTH_KUBE_CONTEXT", flag="--context",
                                       doc="With --store kubernetes: the kubeconfig's context to use")
    watch_namespace: str | None = setting(None, "BERTH_WATCH_NAMESPACE", flag="--watch-namespace",
                                          doc="With --store kubernetes: serve this namespace only (a namespaced "
                                              "install); default every namespace")
    image: str = setting("berth:0.1.0", "BERTH_IMAGE", flag="--image",
                         doc="With --store kubernetes: the image of the agent, MLServer and gateway pods it makes")
    control_namespace: str = setting("berth-system", "BERTH_CONTROL_NAMESPACE", "POD_NAMESPACE",
                                     flag="--control-namespace",
                                     doc="With --store kubernetes: the namespace of this control plane's Service "
                                         "berth-control, which agents and gateways reach")
    provision: bool = setting(False, "BERTH_PROVISION", flag="--provision/--no-provision",
                              doc="Run each Server's replicas as local processes")
    replica_memory: int = setting(2 << 30, "BERTH_REPLICA_MEMORY", "MEMORY_REQUEST", flag="--replica-memory",
                                  fmt=QUANTITY, ge=1, doc="Memory each local replica offers")
    overcommit: int = setting(10, "BERTH_OVERCOMMIT_PERCENT", "SELDON_OVERCOMMIT_PERCENTAGE", flag="--overcommit",
                              ge=0, le=1000, doc="Overcommit percent of local replicas")
    max_body: int = setting(DEFAULT_MAX_BODY, "BERTH_MAX_BODY", flag="--max-body", fmt=QUANTITY, ge=1,
                            le=1 << 30, doc="Largest request body accepted")
    header_timeout: float = setting(10.0, "BERTH_HEADER_TIMEOUT", flag="--header-timeout", gt=0, le=3600,
                                    doc="Seconds a request's head may take to arrive (slowloris guard)")
    body_timeout: float = setting(60.0, "BERTH_BODY_TIMEOUT", flag="--body-timeout", gt=0, le=3600,
                                  doc="Seconds a request's body may take to arrive")
    idle_timeout: float = setting(75.0, "BERTH_IDLE_TIMEOUT", flag="--idle-timeout", gt=0, le=3600,
                                  doc="Seconds an idle keep-alive connection is kept")
    admin_token_file: Path | None = setting(
        None, "BERTH_ADMIN_TOKEN_FILE", flag="--admin-token-file",
        doc="File holding the admin token of every namespace; created 0600 with a new token if absent")
    gateway_token_file: Path | None = setting(
        None, "BERTH_GATEWAY_TOKEN_FILE", flag="--gateway-token-file",
        doc="File holding the token a gateway watches routes with (made valid as a gateway token)")
    secrets_key: Path | None = setting(
        None, "BERTH_SECRETS_KEY_FILE", flag="--secrets-key",
        doc="Master key file of sealed Secrets (default DATA_DIR/secrets.key, created 0600)")
    storage_policy: Path | None = setting(
        None, "BERTH_STORAGE_POLICY", flag="--storage-policy",
        doc="YAML file: which schemes, local roots, S3 endpoints and buckets each namespace may use "
            "(default: permissive, see docs/storage.md)")
    tls_cert: Path | None = setting(None, "BERTH_TLS_CERT", flag="--tls-cert",
                                    doc="PEM certificate (chain) to serve HTTPS and WSS with, e.g. a cert-manager "
                                        "Secret's tls.crt (with --tls-key)")
    tls_key: Path | None = setting(None, "BERTH_TLS_KEY", flag="--tls-key", doc="Its private key (tls.key)")
    kube_ca_secret: str = setting("berth-control-ca", "BERTH_KUBE_CA_SECRET", flag="--kube-ca-secret",
                                  doc="With --store kubernetes and --tls-cert: the Secret (key ca.crt), in each "
                                      "tenant namespace, mounted into agent and gateway pods, which then reach "
                                      "the control plane over wss:// and https:// trusting only that CA")
    log_level: str = setting("INFO", "BERTH_LOG_LEVEL", flag="--log-level", choices=LOG_LEVELS, doc="Log level")
    gc_policy: str = setting("on", "BERTH_GC_POLICY", flag="--gc-policy", choices=("on", "off"),
                             doc="on: garbage collections kept short, the full walk of the heap only when the loop is "
                                 "quiet (docs/responsiveness.md); off: CPython's own collector")

    def options(self) -> ControlOptions:
        """What ``run_control`` takes."""
        return ControlOptions(
            host=self.host, port=self.port, data_dir=self.data_dir,
            store_path=Path(self.store) if self.store and self._kube() is None else None, provision=self.provision,
            replica_memory=self.replica_memory, overcommit_percent=self.overcommit, max_body=self.max_body,
            admin_token_file=self.admin_token_file, gateway_token_file=self.gateway_token_file,
            secrets_key_file=self.secrets_key, header_timeout=self.header_timeout,
            body_timeout=self.body_timeout, idle_timeout=self.idle_timeout, storage_policy=self.storage_policy,
            kube=self._kube(), tls_cert=self.tls_cert, tls_key=self.tls_key)

    def _kube(self) -> KubeMode | None:
        if (self.store or "").lower() != STORE_WORD:
            return None
        return KubeMode(kubeconfig=str(self.kubeconfig) if self.kubeconfig else None, context=self.kube_context,
                        namespace=self.watch_namespace, image=self.image, control_namespace=self.control_namespace,
                        ca_secret=self.kube_ca_secret if self.tls_cert is not None else None)
