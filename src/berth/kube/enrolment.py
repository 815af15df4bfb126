"""Which replica an agent is, from its pod's ServiceAccount token as TokenReview and the pod describe it (pure).

An agent presents the projected token of its pod (audience ``berth``).  The control plane asks the API
server to review it (``TokenReview`` with that audience) and reads the pod it names.  The agent is
(namespace, server, replica) only when all of these hold; each refusal says which did not:

- the API server authenticated the token, for the audience ``berth`` (a token minted for anything else,
  such as the pod's default API token, is refused);
- its user is the ServiceAccount ``berth-server`` of the namespace (not a tenant's own ServiceAccount);
- it is bound to a pod (``authentication.kubernetes.io/pod-name`` and ``pod-uid``), and that pod exists
  with that uid, is not being deleted, and is owned by the StatefulSet of the Server it names: pod
  ``SERVER-N`` is replica ``N`` of Server ``SERVER``.

A namespace's gateway proves itself the same way (:func:`gateway_namespace`): a token for the audience
``berth`` of the ServiceAccount ``berth-gateway``, bound to a pod that exists, is not being deleted, carries
the gateway's labels and is controlled by a ReplicaSet of the ``berth-gateway`` Deployment.  It is then the
gateway of exactly that namespace, and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from berth.errors import Unauthenticated
from berth.kube.flows import COMPONENT, GATEWAY, SERVER
from berth.kube.workloads import GATEWAY_NAME, SERVER_ACCOUNT
from berth.resources.identity import AgentIdentity

POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
_POD = re.compile(r"^(?P<server>[a-z0-9]([-a-z0-9]*[a-z0-9])?)-(?P<replica>[0-9]+)$")


def _refuse(reason: str, who: str = "agent enrolment") -> Unauthenticated:
    return Unauthenticated(f"{who} refused: {reason}")


def review_request(token: str, audience: str) -> dict[str, Any]:
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]}}


def claimed_pod(review: Mapping[str, Any], audience: str, account: str = SERVER_ACCOUNT,
                who: str = "agent enrolment") -> tuple[str, str, str]:
    """(namespace, pod name, pod uid) a reviewed token of ServiceAccount ``account`` is bound to, or
    Unauthenticated saying why not."""
    status = review.get("status") or {}
    if not status.get("authenticated"):
        raise _refuse(f"the API server did not authenticate the token ({status.get('error') or 'no reason given'})",
                      who)
    if audience not in (status.get("audiences") or []):
        raise _refuse(f"the token is not for the audience {audience!r}; mount a projected ServiceAccount token "
                      f"with audience {audience}", who)
    user = status.get("user") or {}
    parts = str(user.get("username") or "").split(":")
    if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"] or parts[3] != account:
        raise _refuse(f"the token belongs to {user.get('username')!r}, not to a namespace's ServiceAccount "
                      f"{account}", who)
    extra = user.get("extra") or {}
    names, uids = extra.get(POD_NAME) or [], extra.get(POD_UID) or []
    if len(names) != 1 or len(uids) != 1:
        raise _refuse("the token is not bound to a pod; use the pod's projected token, not a Secret's", who)
    return parts[2], str(names[0]), str(uids[0])


def agent_identity(namespace: str, pod_name: str, pod_uid: str, pod: Mapping[str, Any] | None) -> AgentIdentity:
    """The replica the pod is, once the API server's copy of the pod confirms the token's claims."""
    where = f"pod {namespace}/{pod_name}"
    match = _POD.match(pod_name)
    if match is None:
        raise _refuse(f"{where} is not named SERVER-REPLICA as a Server's StatefulSet names its pods")
    if pod is None:
        raise _refuse(f"{where} does not exist (the token outlived it)")
    meta = pod.get("metadata") or {}
    if meta.get("uid") != pod_uid:
        raise _refuse(f"{where} was replaced since the token was issued (uid {meta.get('uid')}, token's {pod_uid})")
    if meta.get("deletionTimestamp"):
        raise _refuse(f"{where} is being deleted")
    server = match.group("server")
    owners = [o for o in meta.get("ownerReferences") or []
              if o.get("kind") == "StatefulSet" and o.get("name") == server and o.get("controller")]
    if not owners or (meta.get("labels") or {}).get(SERVER) != server:
        raise _refuse(f"{where} is not a pod of Server {server}'s StatefulSet")
    return AgentIdentity(namespace, server, int(match.group("replica")))


def gateway_namespace(namespace: str, pod_name: str, pod_uid: str, pod: Mapping[str, Any] | None) -> str:
    """The namespace whose gateway the pod is, once the API server's copy of the pod confirms the token's
    claims (the pod of the ``berth-gateway`` Deployment there)."""
    who, where = "gateway authentication", f"pod {namespace}/{pod_name}"
    if pod is None:
        raise _refuse(f"{where} does not exist (the token outlived it)", who)
    meta = pod.get("metadata") or {}
    if meta.get("uid") != pod_uid:
        raise _refuse(f"{where} was replaced since the token was issued (uid {meta.get('uid')}, token's {pod_uid})",
                      who)
    if meta.get("deletionTimestamp"):
        raise _refuse(f"{where} is being deleted", who)
    owners = [o for o in meta.get("ownerReferences") or []
              if o.get("kind") == "ReplicaSet" and str(o.get("name", "")).startswith(GATEWAY_NAME + "-")
              and o.get("controller")]
    if not owners or (meta.get("labels") or {}).get(COMPONENT) != GATEWAY:
        raise _refuse(f"{where} is not a pod of the {GATEWAY_NAME} Deployment Berth makes for the namespace", who)
    return namespace
