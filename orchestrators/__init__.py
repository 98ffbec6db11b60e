"""Durable orchestrators: deterministic generator functions, no I/O and no clock but the
orchestration context's. Everything they touch goes through activities."""

from .score_window import bp

__all__ = ["bp"]
