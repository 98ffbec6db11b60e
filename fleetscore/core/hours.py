"""Hour arithmetic. A run covers hour H: the points labelled in (H:00, H+1:00].

Hours are written ``YYYY-MM-DDTHH`` (UTC) and are kept as whole hours since the epoch, so
arithmetic is integer arithmetic and never depends on the local time zone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fleetscore.errors import UsageError

MS_PER_HOUR = 3_600_000
_HOUR_RE = re.compile(r"\A(\d{4})-(\d{2})-(\d{2})T(\d{2})\Z")


@dataclass(frozen=True, order=True)
class Hour:
    index: int  # whole hours since 1970-01-01T00 UTC

    @classmethod
    def parse(cls, text: str) -> Hour:
        match = _HOUR_RE.match(text.strip()) if isinstance(text, str) else None
        if not match:
            raise UsageError(f"invalid hour {text!r}: expected YYYY-MM-DDTHH, e.g. 2018-08-29T01")
        try:
            year, month, day, hour = (int(g) for g in match.groups())
            start = datetime(year, month, day, hour, tzinfo=UTC)
        except ValueError as exc:
            raise UsageError(f"invalid hour {text!r}: {exc}") from exc
        return cls.from_datetime(start)

    @classmethod
    def from_datetime(cls, moment: datetime) -> Hour:
        """The hour that contains ``moment`` (naive datetimes are taken as UTC)."""
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return cls(int(moment.timestamp() // 3600))

    @classmethod
    def of_label_ms(cls, label_ms: int) -> Hour:
        """The hour whose run scores a window labelled ``label_ms`` (end of the window)."""
        return cls((label_ms - 1) // MS_PER_HOUR)

    @property
    def start(self) -> datetime:
        return datetime.fromtimestamp(self.index * 3600, tz=UTC)

    @property
    def start_ms(self) -> int:
        return self.index * MS_PER_HOUR

    @property
    def end_ms(self) -> int:
        return (self.index + 1) * MS_PER_HOUR

    @property
    def path(self) -> str:
        """``YYYY/MM/DD/HH``: the folder of this hour in the store."""
        return self.start.strftime("%Y/%m/%d/%H")

    def __str__(self) -> str:
        return self.start.strftime("%Y-%m-%dT%H")

    def __add__(self, hours: int) -> Hour:
        return Hour(self.index + hours)

    def __sub__(self, hours: int) -> Hour:
        return Hour(self.index - hours)


def hour_range(first: Hour, last: Hour) -> list[Hour]:
    """Every hour from ``first`` to ``last`` inclusive."""
    if last < first:
        raise UsageError(f"the range {first} .. {last} is reversed")
    return [Hour(i) for i in range(first.index, last.index + 1)]


def previous_full_hour(now: datetime) -> Hour:
    """The last hour whose windows have all closed at ``now``."""
    return Hour.from_datetime(now - timedelta(hours=1))
