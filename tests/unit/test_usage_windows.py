"""How statistics windows are split into whole days, whole hours and raw edges (usage/windows.py)."""

from __future__ import annotations

import datetime
import itertools
import random

from qdata_server.usage import windows

T0 = datetime.datetime(2026, 1, 30, tzinfo=datetime.UTC)


def _random_window(rng: random.Random) -> tuple[datetime.datetime, datetime.datetime]:
    start = T0 + datetime.timedelta(seconds=rng.choice([0, rng.uniform(0, 40 * 86400)]))
    start = windows.floor_to(start, rng.choice([datetime.timedelta(microseconds=1), windows.HOUR, windows.DAY]))
    length = datetime.timedelta(seconds=rng.choice([60, 3599, 3600, 86400, rng.uniform(60, 70 * 86400)]))
    return start, start + length


def test_the_parts_of_a_window_tile_it_exactly():
    rng = random.Random(1)
    for _ in range(3000):
        start, end = _random_window(rng)
        s = windows.split(start, end)
        parts = [s.raw1, s.hours1, s.days, s.hours2, s.raw2]
        pieces = [p for p in parts if p[0] < p[1]]
        assert all(a <= b for a, b in parts)
        assert pieces[0][0] == start and pieces[-1][1] == end
        assert all(left[1] == right[0] for left, right in itertools.pairwise(pieces))
        for a, b in (s.hours1, s.hours2):
            assert a == b or (windows.floor_to(a, windows.HOUR) == a and windows.floor_to(b, windows.HOUR) == b)
        if s.days[0] < s.days[1]:
            assert windows.floor_to(s.days[0], windows.DAY) == s.days[0]
            assert windows.floor_to(s.days[1], windows.DAY) == s.days[1]
        for a, b in (s.raw1, s.raw2):
            assert b - a < windows.HOUR or (a, b) == (start, end)
        if s.aligned[0] < s.aligned[1]:
            assert s.aligned == (s.hours1[0], max(s.hours2[1], s.days[1], s.hours1[1]))


def test_the_bitmaps_name_exactly_the_whole_days_and_hours():
    rng = random.Random(2)
    for _ in range(500):
        start, end = _random_window(rng)
        s = windows.split(start, end)
        params = s.params()
        days = {
            month.replace(day=d + 1)
            for month, mask in zip(params["user_months"], params["user_month_masks"], strict=True)
            for d in range(31)
            if mask >> d & 1
        }
        expected_days, day = set(), s.days[0]
        while day < s.days[1]:
            expected_days.add(day)
            day += windows.DAY
        assert days == expected_days
        hours = {
            day + datetime.timedelta(hours=h)
            for day, mask in zip(params["user_days"], params["user_day_masks"], strict=True)
            for h in range(24)
            if mask >> h & 1
        }
        expected_hours = set()
        for a, b in (s.hours1, s.hours2):
            while a < b:
                expected_hours.add(a)
                a += windows.HOUR
        assert hours == expected_hours
        assert all(0 < m < 2**31 for m in params["user_month_masks"] + params["user_day_masks"])


def test_split_days_keeps_partial_days_raw():
    start = datetime.datetime(2026, 3, 1, 13, 5, tzinfo=datetime.UTC)
    s = windows.split_days(start, start + datetime.timedelta(days=2))
    assert s.days == (
        datetime.datetime(2026, 3, 2, tzinfo=datetime.UTC),
        datetime.datetime(2026, 3, 3, tzinfo=datetime.UTC),
    )
    assert s.raw1 == (start, s.days[0]) and s.raw2 == (s.days[1], start + datetime.timedelta(days=2))
    inside = windows.split_days(start, start + datetime.timedelta(hours=3))
    assert inside.days[0] == inside.days[1] and inside.raw1 == (start, start + datetime.timedelta(hours=3))
