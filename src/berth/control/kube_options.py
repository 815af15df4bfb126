"""What ``berth control --store kubernetes`` needs to know about its cluster (no Kubernetes client imported
here: the control plane's other modes never load it)."""

from __future__ import annotations

from dataclasses import dataclass

STORE_WORD = "kubernetes"  # --store kubernetes (or BERTH_STORE=kubernetes)


@dataclass(frozen=True)
class KubeMode:
    """The cluster (kubeconfig and context as kubectl finds them; in-cluster config when neither is named and
    the process runs in a pod), the one namespace of a namespaced install (None: every namespace), and the
    install's facts the provisioner stamps on the pods it makes."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    image: str = "berth:0.1.0"
    control_namespace: str = "berth-system"
    control_service: str = "berth-control"
    audience: str = "berth"
    ca_secret: str | None = None  # TLS served: the Secret (ca.crt) agents and gateways trust, in each namespace
