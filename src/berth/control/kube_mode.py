"""The control plane on Kubernetes (``berth control --store kubernetes``): the parts that differ from local.

- **Store**: :class:`~berth.store.kubernetes.KubernetesStore`, Berth's kinds as custom resources and
  Secrets as ``v1 Secret``s.  No sealing wrapper: Secrets stay in the API, encrypted at rest (or not) by the
  cluster's own configuration, and readable by whoever the cluster's RBAC lets read them.
- **Provisioner**: :class:`~berth.control.kube_provisioner.KubeProvisioner` makes StatefulSets, Services,
  the gateway and NetworkPolicies instead of local processes.
- **Agent enrolment**: the hub accepts an agent's projected ServiceAccount token, checked with TokenReview
  (:class:`~berth.control.kube_enrol.TokenReviewer`); Berth's own agent tokens keep working beside it.
- **Gateways**: the routing table's endpoints accept a namespace gateway pod's projected token (TokenReview
  again, :func:`gateways_with`), and answer it that namespace's routes only.

Only this module (and the store) import the Kubernetes client, so the other modes never need it installed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from berth.control.auth import Auth
from berth.control.hub import AgentHub
from berth.control.kube_enrol import TokenReviewer
from berth.control.kube_options import KubeMode
from berth.control.kube_provisioner import KubeProvisioner
from berth.kube.workloads import Install
from berth.kubeapi import Api, connect
from berth.store.base import Store
from berth.store.kubernetes import KubernetesStore


async def open_kube_store(mode: KubeMode) -> KubernetesStore:
    """The store over the API (its first list of every kind runs here, off the loop)."""
    return await asyncio.to_thread(KubernetesStore, kubeconfig=mode.kubeconfig, context=mode.context,
                                   namespace=mode.namespace)


@dataclass
class KubeParts:
    api: Api  # a client on the control plane's own loop (the store has its own, on its thread)
    reviewer: TokenReviewer
    provisioner: KubeProvisioner

    async def close(self) -> None:
        await self.api.close()


async def kube_parts(mode: KubeMode, store: Store, hub: AgentHub) -> KubeParts:
    """The provisioner and the token reviewer, the reviewer plugged into the hub's enrolment."""
    api = Api(await connect(mode.kubeconfig, mode.context), 30.0)
    install = Install(image=mode.image, control_namespace=mode.control_namespace,
                      control_service=mode.control_service, audience=mode.audience, ca_secret=mode.ca_secret)
    reviewer = TokenReviewer(api, audience=mode.audience)
    enrol_with(hub, reviewer)
    return KubeParts(api, reviewer, KubeProvisioner(store, api, install))


def enrol_with(hub: AgentHub, reviewer: TokenReviewer) -> None:
    """Agent tokens the hub's registry does not know are reviewed by ``reviewer`` (TokenReview)."""
    hub.review_token = reviewer.principal
    hub.review_valid = reviewer.still_valid


def gateways_with(auth: Auth, reviewer: TokenReviewer) -> None:
    """Tokens the registry does not know, on the routing table's endpoints, are reviewed by ``reviewer``."""
    auth.review_gateway = reviewer.gateway
