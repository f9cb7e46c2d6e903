"""Spec for the user-facing time and duration syntax."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from dropwatch.timeparse import TimeParseError, format_iso, parse_duration, parse_time

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)


class TestParseTime:
    @pytest.mark.parametrize("text", ["now", "NOW", "  now  "])
    def test_now_is_the_given_now(self, text: str) -> None:
        assert parse_time(text, NOW) == NOW

    @pytest.mark.parametrize(
        ("text", "back"),
        [
            ("-90s", timedelta(seconds=90)),
            ("-15m", timedelta(minutes=15)),
            ("-2h", timedelta(hours=2)),
            ("-7d", timedelta(days=7)),
            ("-1h30m", timedelta(hours=1, minutes=30)),
            ("-1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
            ("-0s", timedelta(0)),
        ],
    )
    def test_relative_counts_back_from_now(self, text: str, back: timedelta) -> None:
        assert parse_time(text, NOW) == NOW - back

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2026-11-24T10:00:00Z", datetime(2026, 11, 24, 10, 0, tzinfo=UTC)),
            ("2026-11-24T10:00:00+00:00", datetime(2026, 11, 24, 10, 0, tzinfo=UTC)),
            ("2026-11-24T12:30:00+02:00", datetime(2026, 11, 24, 10, 30, tzinfo=UTC)),
            ("2026-11-24T05:00:00-05:00", datetime(2026, 11, 24, 10, 0, tzinfo=UTC)),
            ("2026-11-24T10:00:00", datetime(2026, 11, 24, 10, 0, tzinfo=UTC)),  # naive = UTC
            ("2026-11-24T10:00:00.250Z", datetime(2026, 11, 24, 10, 0, 0, 250000, tzinfo=UTC)),
            ("2026-11-24", datetime(2026, 11, 24, tzinfo=UTC)),
        ],
    )
    def test_iso8601(self, text: str, expected: datetime) -> None:
        got = parse_time(text, NOW)
        assert got == expected
        assert got.tzinfo is UTC

    def test_result_is_always_aware_utc(self) -> None:
        local = timezone(timedelta(hours=5))
        got = parse_time("-1h", NOW.astimezone(local))
        assert got.tzinfo is UTC
        assert got == NOW - timedelta(hours=1)

    def test_naive_now_is_taken_as_utc(self) -> None:
        assert parse_time("-1m", datetime(2026, 11, 24, 10, 0)) == NOW - timedelta(minutes=1)

    @pytest.mark.parametrize(
        "text",
        [
            "yesterday",
            "",
            "   ",
            "-1w",
            "-15",
            "-5 min",
            "-30m1h",
            "-1m1m",
            "+5m",
            "15m",
            "2026-13-01",
        ],
    )
    def test_rejects_other_forms_and_names_the_accepted_ones(self, text: str) -> None:
        with pytest.raises(TimeParseError) as err:
            parse_time(text, NOW)
        msg = str(err.value)
        assert repr(text) in msg
        assert "'now'" in msg and "-15m" in msg and "2026-11-24T10:00:00Z" in msg

    def test_error_message_matches_documented_wording(self) -> None:
        with pytest.raises(TimeParseError) as err:
            parse_time("yesterday", NOW)
        assert str(err.value) == (
            "invalid time 'yesterday': use 'now', a relative time like -15m/-2h/-7d, "
            "or ISO 8601 like 2026-11-24T10:00:00Z"
        )

    def test_absurdly_far_back_is_an_error_not_a_crash(self) -> None:
        with pytest.raises(TimeParseError, match="too far"):
            parse_time("-999999999d", NOW)

    def test_time_parse_error_is_a_value_error(self) -> None:
        assert issubclass(TimeParseError, ValueError)


class TestParseDuration:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("1s", 1.0),
            ("500ms", 0.5),
            ("10s", 10.0),
            ("5m", 300.0),
            ("1h", 3600.0),
            ("2d", 172800.0),
            ("1m30s", 90.0),
            ("1.5s", 1.5),
            ("15", 15.0),
            ("0.25", 0.25),
            (" 10s ", 10.0),
        ],
    )
    def test_accepted_forms(self, text: str, seconds: float) -> None:
        assert parse_duration(text) == pytest.approx(seconds)

    @pytest.mark.parametrize("text", ["0", "0s", "0ms"])
    def test_must_be_positive(self, text: str) -> None:
        with pytest.raises(TimeParseError, match="greater than zero"):
            parse_duration(text)

    @pytest.mark.parametrize("text", ["", "-5s", "10x", "s", "5 m", "1w", "abc", "5m garbage"])
    def test_rejects_malformed(self, text: str) -> None:
        with pytest.raises(TimeParseError) as err:
            parse_duration(text)
        msg = str(err.value)
        assert f"invalid duration {text!r}" in msg
        assert "500ms" in msg and "ms/s/m/h/d" in msg


class TestFormatIso:
    def test_utc_with_z_and_second_precision(self) -> None:
        assert format_iso(datetime(2026, 11, 24, 10, 0, 0, 999999, tzinfo=UTC)) == (
            "2026-11-24T10:00:00Z"
        )

    def test_converts_offsets_to_utc(self) -> None:
        dt = datetime(2026, 11, 24, 12, 0, tzinfo=timezone(timedelta(hours=2)))
        assert format_iso(dt) == "2026-11-24T10:00:00Z"

    def test_naive_is_taken_as_utc(self) -> None:
        assert format_iso(datetime(2026, 11, 24, 10, 0)) == "2026-11-24T10:00:00Z"

    def test_round_trips_through_parse_time(self) -> None:
        assert parse_time(format_iso(NOW), NOW) == NOW
