"""How numbers read in messages: one format everywhere (thousands separators, plurals)."""

from __future__ import annotations

# Nouns whose plural is not noun + "s".
_PLURALS = {"anomaly": "anomalies", "is": "are", "was": "were"}


def plural(n: int, noun: str) -> str:
    return noun if n == 1 else _PLURALS.get(noun, noun + "s")


def count(n: int, noun: str) -> str:
    """``count(1, "hour")`` is "1 hour", ``count(12316, "row")`` is "12,316 rows"."""
    return f"{n:,} {plural(n, noun)}"


def duration(seconds: float) -> str:
    """Seconds under two minutes, minutes above: "45 s", "4.2 min"."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
