"""What a gateway tells the control plane about the traffic it carried: the usage report.

A gateway posts one :class:`UsageReport` to ``USAGE_PATH`` every few seconds (with its gateway token), for
the models that had traffic in the window plus those with requests still in flight.  The control plane
keeps the latest figures per model (:mod:`berth.control.usage`) and uses them for two decisions:

- eviction picks the least recently used models on a replica (``idle_s``);
- autoscaling follows the load per replica (a model's ``inflight_mean`` over its replicas, latency).

Times are durations measured on the gateway's own monotonic clock ("seconds since"), never timestamps, so
gateway and control plane need not agree on wall-clock time.  Bounds (models per report, replicas per
model, body size) are checked by the control plane before anything is recorded.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

USAGE_PATH = "/api/v1/gateway/usage"
MAX_MODELS_PER_REPORT = 20_000
MAX_REPLICAS_PER_MODEL = 1_000
MAX_REPORT_BYTES = 8 * 2**20
MAX_COUNT = 10**12  # requests, errors, in-flight: far above any real window, far below what breaks arithmetic
MAX_FIGURE = 1e9  # seconds, milliseconds, means: the same


class _Msg(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ReplicaLoad(_Msg):
    """One replica's share of a model's traffic in the window."""

    address: str = Field(max_length=300)  # the replica's REST host:port, as in the routing table's endpoints
    # requests in flight to this replica (all its models: the gateway balances per replica), time-averaged
    # over the window from samples, and the most seen in one sample
    inflight_mean: float = Field(default=0.0, ge=0, le=MAX_FIGURE)
    inflight_max: int = Field(default=0, ge=0, le=MAX_COUNT)


class ModelUsage(_Msg):
    """One model's traffic through this gateway in the window (experiments count their candidates)."""

    namespace: str = Field(max_length=63)
    name: str = Field(max_length=253)
    requests: int = Field(default=0, ge=0, le=MAX_COUNT)  # answers (any outcome) in the window
    errors: int = Field(default=0, ge=0, le=MAX_COUNT)
    idle_s: float = Field(ge=0, le=MAX_FIGURE)  # seconds since the last answer, at the time of the report
    latency_p50_ms: float | None = Field(default=None, ge=0, le=MAX_FIGURE)
    latency_p95_ms: float | None = Field(default=None, ge=0, le=MAX_FIGURE)
    inflight: int = Field(default=0, ge=0, le=MAX_COUNT)  # in flight to its replicas at the time of the report
    # its own requests in flight, time-averaged over the window: the seconds its answers took, summed, over
    # the window's length (Little's law; a replica's ``inflight_mean`` also counts the models it shares with)
    inflight_mean: float = Field(default=0.0, ge=0, le=MAX_FIGURE)
    replicas: list[ReplicaLoad] = Field(default_factory=list, max_length=MAX_REPLICAS_PER_MODEL)


class UsageReport(_Msg):
    gateway: str = Field(default="", max_length=253)  # the reporting gateway's name (for logs and metrics)
    window_s: float = Field(gt=0, le=3600)  # seconds the figures cover
    models: list[ModelUsage] = Field(default_factory=list, max_length=MAX_MODELS_PER_REPORT)
