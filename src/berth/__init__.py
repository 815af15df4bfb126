"""Berth: multi-model ML serving with placement that explains itself."""

__version__ = "0.1.0"
