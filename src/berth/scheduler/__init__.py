"""Pure placement: snapshot in, plan with reasons out.  No I/O, no clock, no randomness."""

from berth.scheduler.plan import plan

__all__ = ["plan"]
