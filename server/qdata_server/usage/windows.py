"""How a statistics window is split so that rollups answer most of it.

A window [start, end) becomes whole UTC days (daily rollups), the whole UTC hours before and
after them (hourly rollups) and at most two stretches shorter than an hour at its edges (raw
usage records). Queued rows not yet folded into the rollups are added for the aligned part
[aligned_start, aligned_end) = hours before + days + hours after. Empty parts are (t, t).

    start 09:20 ........ 10:00 ....... day 1 00:00 ======== day 3 00:00 ....... 14:00 .. 14:35 end
          |-- raw 1 --|-- hours 1 --|--------- days ---------|-- hours 2 --|-- raw 2 --|

Unique users come from bitmaps: for the whole days, one row per user and UTC month whose day
bits are tested against the window's days in that month (user_months); for the whole hours
before and after them, one row per user and UTC day whose hour bits are tested against the
window's hours in that day (user_days); then queued rows and the raw edges as above.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def floor_to(value: datetime.datetime, step: datetime.timedelta) -> datetime.datetime:
    """value rounded down to a multiple of step since the Unix epoch (UTC hours and days)."""
    return value - (value - _EPOCH) % step


def ceil_to(value: datetime.datetime, step: datetime.timedelta) -> datetime.datetime:
    floored = floor_to(value, step)
    return floored if floored == value else floored + step


@dataclasses.dataclass(frozen=True)
class Segments:
    start: datetime.datetime
    end: datetime.datetime
    raw1: tuple[datetime.datetime, datetime.datetime]
    raw2: tuple[datetime.datetime, datetime.datetime]
    hours1: tuple[datetime.datetime, datetime.datetime]
    hours2: tuple[datetime.datetime, datetime.datetime]
    days: tuple[datetime.datetime, datetime.datetime]
    aligned: tuple[datetime.datetime, datetime.datetime]

    def params(self) -> dict[str, Any]:
        """The query parameters of usage_model_stats and usage_model_activity."""
        out: dict[str, Any] = {}
        for name in ("raw1", "raw2", "hours1", "hours2", "aligned"):
            out[f"{name}_start"], out[f"{name}_end"] = getattr(self, name)
        out["day_start"], out["day_end"] = self.days
        months = month_masks(*self.days)
        out["user_months"], out["user_month_masks"] = [m for m, _ in months], [b for _, b in months]
        days = day_masks(*self.hours1) + day_masks(*self.hours2)
        out["user_days"], out["user_day_masks"] = [d for d, _ in days], [b for _, b in days]
        return out


def _month_start(value: datetime.datetime) -> datetime.datetime:
    return value.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def month_masks(start: datetime.datetime, end: datetime.datetime) -> list[tuple[datetime.datetime, int]]:
    """For whole UTC days [start, end): (month start, bit d-1 set for each day d in the range)."""
    masks: dict[datetime.datetime, int] = {}
    day = start
    while day < end:
        month = _month_start(day)
        masks[month] = masks.get(month, 0) | 1 << (day.day - 1)
        day += DAY
    return list(masks.items())


def day_masks(start: datetime.datetime, end: datetime.datetime) -> list[tuple[datetime.datetime, int]]:
    """For whole UTC hours [start, end): (day start, bit h set for each hour h in the range)."""
    masks: dict[datetime.datetime, int] = {}
    hour = start
    while hour < end:
        day = floor_to(hour, DAY)
        masks[day] = masks.get(day, 0) | 1 << hour.hour
        hour += HOUR
    return list(masks.items())


def split(start: datetime.datetime, end: datetime.datetime) -> Segments:
    """Splits [start, end) (aware datetimes, start < end) into days, hours and raw edges."""
    first_hour, last_hour = ceil_to(start, HOUR), floor_to(end, HOUR)
    if first_hour >= last_hour:
        # Within one hour, or across one hour boundary: all raw.
        empty = (start, start)
        return Segments(start, end, (start, end), (end, end), empty, empty, empty, empty)
    first_day, last_day = ceil_to(first_hour, DAY), floor_to(last_hour, DAY)
    raw1, raw2 = (start, first_hour), (last_hour, end)
    if first_day >= last_day:
        days = (first_hour, first_hour)
        hours1, hours2 = (first_hour, last_hour), (last_hour, last_hour)
    else:
        days = (first_day, last_day)
        hours1, hours2 = (first_hour, first_day), (last_day, last_hour)
    return Segments(start, end, raw1, raw2, hours1, hours2, days, (first_hour, last_hour))


@dataclasses.dataclass(frozen=True)
class DaySegments:
    """A range split into whole UTC days (rollups and queued rows) and raw partial days."""

    days: tuple[datetime.datetime, datetime.datetime]
    raw1: tuple[datetime.datetime, datetime.datetime]
    raw2: tuple[datetime.datetime, datetime.datetime]

    def params(self) -> dict[str, datetime.datetime]:
        return {
            "day_start": self.days[0],
            "day_end": self.days[1],
            "raw1_start": self.raw1[0],
            "raw1_end": self.raw1[1],
            "raw2_start": self.raw2[0],
            "raw2_end": self.raw2[1],
        }


def split_days(start: datetime.datetime, end: datetime.datetime) -> DaySegments:
    """Splits [start, end) into whole UTC days and the partial days at its edges."""
    first_day, last_day = ceil_to(start, DAY), floor_to(end, DAY)
    if first_day >= last_day:
        return DaySegments((start, start), (start, end), (end, end))
    return DaySegments((first_day, last_day), (start, first_day), (last_day, end))
