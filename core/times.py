"""Times: cftime datetimes from text, and back.

Cadence is an explicit schedule of datetimes, not indices (DESIGN.md), so every layer reads
times the same way: :func:`parse_time` for configs, command-line options and file names,
:func:`iso` for records and file contents.
"""

from __future__ import annotations

import re

import cftime
from diffda.core.config import ConfigError

_TIME = re.compile(
    r"^(\d{1,4})-(\d{1,2})-(\d{1,2})(?:[T ](\d{1,2})(?::(\d{1,2}))?(?::(\d{1,2}))?)?$"
)


def parse_time(text: str, calendar: str, key: str = "time") -> cftime.datetime:
    """``YYYY-MM-DD[THH[:MM[:SS]]]`` (also with a space; years may have fewer than four
    digits: the nature run starts in year 1) -> cftime datetime in ``calendar``.

    Raises :class:`~diffda.core.config.ConfigError` (a ``ValueError``) naming ``key``, the
    text and the calendar."""
    match = _TIME.match(str(text).strip())
    if match is None:
        raise ConfigError(f"{key} = {text!r}: cannot read time: expected YYYY-MM-DD or "
                          f"YYYY-MM-DDTHH[:MM[:SS]] (calendar {calendar!r})")
    y, mo, d, h, mi, s = (int(g) if g else 0 for g in match.groups())
    try:
        return cftime.datetime(y, mo, d, h, mi, s, calendar=calendar)
    except ValueError as err:
        raise ConfigError(f"{key} = {text!r}: not a valid {calendar} date ({err})") from None


def iso(t: cftime.datetime) -> str:
    """ISO 8601 text of a cftime datetime, ``YYYY-MM-DDTHH:MM:SS`` (4-digit year)."""
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
