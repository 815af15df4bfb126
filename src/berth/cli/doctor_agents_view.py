"""`berth doctor`'s row "agents → control plane (as the agents see it)", from each Server's status.

Each agent reports what it saw reaching the control plane (its lookup of the control URL's host, its last
connect attempts, since when and through which address it is connected: ``replicaStatus[i].controlPlane``,
docs/doctor.md).  One row per replica: ok when connected with no failed attempt in the last ``window``
seconds, else one line naming the replica, the address and what failed, e.g. "replica 1 of financial-ml/mlserver
could not resolve berth-control.berth.svc (NXDOMAIN (name not known)) 3 times in the last 5 min; connected
since 12:01:07 through 10.0.0.5:9004".  A pure function of the Server documents and the time.
"""

from __future__ import annotations

import calendar
import time
from datetime import datetime
from typing import Any

from berth.cli.doctor_rows import Row

CHECK = "agents → control plane (as the agents see it)"
WINDOW = 300.0

_WHAT = {"dns": "could not resolve {host}", "refused": "was refused by {address}",
         "timeout": "timed out connecting to {address}", "tls": "failed TLS with {address}",
         "rejected": "was turned away by the control plane at {address}", "error": "could not connect to {address}"}


def _ts(text: Any) -> float | None:
    try:
        return float(calendar.timegm(time.strptime(str(text or ""), "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def _clock(text: Any) -> str:
    ts = _ts(text)
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S") if ts is not None else "?"


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def failures(view: dict[str, Any], now: float, window: float = WINDOW) -> list[str]:
    """One phrase per kind of failed attempt in the last ``window`` seconds, most frequent first."""
    host = (view.get("resolution") or {}).get("host") or view.get("url") or "?"
    counts: dict[tuple[str, str, str], int] = {}
    for a in view.get("attempts") or []:
        at = _ts(a.get("at"))
        if a.get("outcome") == "ok" or at is None or now - at > window:
            continue
        k = (str(a.get("outcome")), str(a.get("address") or "?"), str(a.get("error") or ""))
        counts[k] = counts.get(k, 0) + 1
    phrases = []
    for (outcome, address, error), n in sorted(counts.items(), key=lambda item: -item[1]):
        what = _WHAT.get(outcome, _WHAT["error"]).format(host=host, address=address)
        phrases.append(f"{what} ({error or outcome}) {_times(n)}")
    return phrases


def connection(view: dict[str, Any]) -> str:
    rtt = view.get("rttSeconds")
    resolved = view.get("resolution") or {}
    how = [f"ping {float(rtt) * 1000:.1f} ms"] if rtt is not None else []
    if resolved.get("addresses"):
        how.append(f"{resolved.get('host')} resolved to {', '.join(resolved['addresses'])} in "
                   f"{float(resolved.get('seconds') or 0) * 1000:.0f} ms")
    return (f"connected since {_clock(view.get('connectedSince'))} through {view.get('connectedTo') or '?'}"
            + (f" ({'; '.join(how)})" if how else ""))


def agents_view_rows(servers: list[dict[str, Any]], now: float, window: float = WINDOW) -> list[Row]:
    rows: list[Row] = []
    minutes = f"{window / 60:g} min"
    for doc in servers:
        ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
        for r in (doc.get("status") or {}).get("replicaStatus") or []:
            index = r.get("index")
            target = f"{ns}/{name}/{index}"
            view = r.get("controlPlane")
            if not isinstance(view, dict):
                if r.get("connected"):
                    rows.append(Row(CHECK, target, None, "this agent does not report its view (an older agent)"))
                continue
            failed = failures(view, now, window)
            streak = int(view.get("failures") or 0)
            before = f" ({streak} failed in a row before it got through)" if streak > len(view.get("attempts") or []) \
                else ""
            if not r.get("connected"):
                last = "; ".join(failed) or "no failed attempt reported"
                rows.append(Row(CHECK, target, None,
                                f"agent not connected now: it reports its failed attempts when it gets through (the "
                                f"'control plane → agent' row says why it left); its last report: {last}"))
            elif failed:
                rows.append(Row(CHECK, target, True,
                                f"replica {index} of {ns}/{name} {', '.join(failed)} in the last {minutes}{before}; "
                                f"{connection(view)}"))
            else:
                rows.append(Row(CHECK, target, True, connection(view) + before))
    return rows
