"""An agent's view of the control plane as a Server's status carries it: ``replicaStatus[i].controlPlane``.

The agent reports it (wire/control_view.py: its lookup of the control URL's host, its last connect attempts,
since when and through which address it is connected, its ping's round trip); the control plane writes it
into the Server's status as below, with RFC 3339 times, so ``kubectl get server -o yaml``, ``berth describe
server`` and ``berth doctor`` (local or against a cluster) read the same thing.
"""

from __future__ import annotations

from berth.control.clock import rfc3339
from berth.resources.statuses import AttemptStatus, ControlPlaneStatus
from berth.wire.control_view import ControlView


def control_plane_status(view: ControlView) -> ControlPlaneStatus:
    out: ControlPlaneStatus = {"url": view.url, "failures": view.failures, "attempts": []}
    for a in view.attempts:
        attempt: AttemptStatus = {"at": rfc3339(a.at), "outcome": a.outcome, "address": a.address}
        if a.error:
            attempt["error"] = a.error
        out["attempts"].append(attempt)
    r = view.resolution
    if r is not None:
        out["resolution"] = {"host": r.host, "addresses": list(r.addresses), "seconds": r.seconds, "at": rfc3339(r.at)}
        if r.error:
            out["resolution"]["error"] = r.error
    if view.connected_since is not None:
        out["connectedSince"] = rfc3339(view.connected_since)
        out["connectedTo"] = view.connected_to
    if view.rtt is not None:
        out["rttSeconds"] = view.rtt
    return out
