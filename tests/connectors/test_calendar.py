"""The calendar connector over real .ics files and an http source served through respx."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import respx

from homespun.connectors.calendar import DESCRIPTIONS, create_calendar_server
from homespun.connectors.registry import ConnectorConfigError
from tests.mcp_helpers import assert_descriptions, call, open_builtin, refused

WHERE = "tools.servers[0].options"

# Weekly stand-up on Mondays (the 17 March one cancelled), an all-day holiday, a two-day
# all-day trip, a one-off appointment given in UTC, and a yearly birthday.
HOME_ICS = """\
BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//homespun tests//EN
X-WR-CALNAME:Home
BEGIN:VEVENT
UID:standup@example
DTSTAMP:20250101T000000Z
DTSTART;TZID=Europe/Paris:20250303T093000
DTEND;TZID=Europe/Paris:20250303T094500
RRULE:FREQ=WEEKLY;BYDAY=MO
EXDATE;TZID=Europe/Paris:20250317T093000
SUMMARY:Team standup
LOCATION:Room 4
END:VEVENT
BEGIN:VEVENT
UID:piday@example
DTSTAMP:20250101T000000Z
DTSTART;VALUE=DATE:20250314
DTEND;VALUE=DATE:20250315
SUMMARY:Pi day (office closed)
END:VEVENT
BEGIN:VEVENT
UID:trip@example
DTSTAMP:20250101T000000Z
DTSTART;VALUE=DATE:20250321
DTEND;VALUE=DATE:20250323
SUMMARY:Weekend in Lyon
END:VEVENT
BEGIN:VEVENT
UID:dentist@example
DTSTAMP:20250101T000000Z
DTSTART:20250320T130000Z
DTEND:20250320T140000Z
SUMMARY:Dentist
DESCRIPTION:Bring the <b>insurance</b> card.
END:VEVENT
BEGIN:VEVENT
UID:birthday@example
DTSTAMP:20250101T000000Z
DTSTART;VALUE=DATE:19900312
RRULE:FREQ=YEARLY
SUMMARY:Ada's birthday
END:VEVENT
END:VCALENDAR
""".replace("\n", "\r\n")

WORK_ICS = """\
BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//homespun tests//EN
X-WR-CALNAME:Work
BEGIN:VEVENT
UID:review@example
DTSTAMP:20250101T000000Z
DTSTART;TZID=Europe/Paris:20250311T150000
DTEND;TZID=Europe/Paris:20250311T160000
SUMMARY:Quarterly review
END:VEVENT
END:VCALENDAR
""".replace("\n", "\r\n")

PRIVATE_URL = "https://cal.example.com/calendars/private-tok3n-abc/basic.ics"


@pytest.fixture
def home_ics(tmp_path: Path) -> Path:
    path = tmp_path / "home.ics"
    path.write_text(HOME_ICS, newline="")
    return path


def make_server(settings, *sources: str, **extra):
    options = {"sources": list(sources), "timezone": "Europe/Paris", **extra}
    return create_calendar_server(options, where=WHERE, settings=settings)


async def test_weekly_rule_is_expanded_within_the_window(home_ics, settings):
    server = make_server(settings, str(home_ics))
    text = await call(server, "list_events", start="2025-03-01", days=31)
    standups = [line for line in text.splitlines() if "Team standup" in line]
    assert [line.split()[0] for line in standups] == [
        "2025-03-03",
        "2025-03-10",
        "2025-03-24",
        "2025-03-31",
    ]  # 17 March is an EXDATE
    assert standups[0].startswith("2025-03-03 09:30–09:45  Team standup @ Room 4")
    assert "2025-03-12 (all day)  Ada's birthday" in text  # a 1990 yearly rule, in 2025
    assert "2025-03-20 14:00–15:00  Dentist — Bring the insurance card." in text  # UTC -> Paris
    assert "2025-03-21 – 2025-03-22 (all day)  Weekend in Lyon" in text
    lines = text.splitlines()[1:]
    assert lines == sorted(lines)  # in time order


async def test_window_filtering_and_all_day_events(home_ics, settings):
    server = make_server(settings, str(home_ics))
    week = await call(server, "list_events", start="2025-03-10", days=7)
    assert week.splitlines()[0] == "Events from 2025-03-10 to 2025-03-16:"
    assert "2025-03-10 09:30" in week and "2025-03-14 (all day)  Pi day" in week
    assert "Dentist" not in week and "2025-03-03" not in week and "2025-03-24" not in week

    pi_day = await call(server, "list_events", start="2025-03-14", days=1)
    assert pi_day == "Events from 2025-03-14:\n2025-03-14 (all day)  Pi day (office closed)"
    # an all-day event ends at midnight: it is not on the next day
    assert (
        await call(server, "list_events", start="2025-03-15", days=1)
        == "No events from 2025-03-15."
    )
    # a multi-day event shows on each day it covers
    assert "Weekend in Lyon" in await call(server, "list_events", start="2025-03-22", days=1)


async def test_start_defaults_to_today_and_bad_dates_are_refused(home_ics, settings):
    server = make_server(settings, str(home_ics))
    assert (await call(server, "list_events")).startswith(("Events from", "No events from"))
    assert "not a date" in await refused(server, "list_events", start="next funday")


async def test_search_events_by_words(home_ics, settings):
    server = make_server(settings, str(home_ics))
    assert (
        await call(server, "search_events", query="when is my dentist appointment?")
    ).startswith("2025-03-20 14:00–15:00  Dentist")
    standup = await call(server, "search_events", query="standup")
    assert standup == "2025-03-03 09:30–09:45  Team standup @ Room 4 (repeats weekly)"
    assert (await call(server, "search_events", query="insurance")).count("\n") == 0
    assert await call(server, "search_events", query="zebra") == "No events match 'zebra'."


async def test_url_source_is_fetched_once_and_merged_with_files(home_ics, settings):
    with respx.mock(assert_all_called=True) as mock:
        route = mock.get(PRIVATE_URL).mock(
            return_value=httpx.Response(
                200, content=WORK_ICS.encode(), headers={"content-type": "text/calendar"}
            )
        )
        server = make_server(settings, str(home_ics), PRIVATE_URL)
        text = await call(server, "list_events", start="2025-03-10", days=7)
        assert "2025-03-11 15:00–16:00  Quarterly review [Work]" in text
        assert "Team standup @ Room 4 [Home]" in text
        await call(server, "search_events", query="review")
        assert route.call_count == 1  # cached for cache_seconds


async def test_bad_sources_are_errors_that_name_them(tmp_path, settings):
    with respx.mock() as mock:
        mock.get(PRIVATE_URL).mock(return_value=httpx.Response(404))
        message = await refused(make_server(settings, PRIVATE_URL), "list_events")
    assert "https://cal.example.com/…/basic.ics: HTTP 404" in message
    assert "tok3n" not in message  # private calendar URLs carry secrets

    with respx.mock() as mock:
        mock.get(PRIVATE_URL).mock(side_effect=httpx.ConnectTimeout("slow"))
        message = await refused(make_server(settings, PRIVATE_URL), "list_events")
    assert "timed out" in message

    missing = tmp_path / "gone.ics"
    assert f"{missing}: no such file" in await refused(
        make_server(settings, str(missing)), "list_events"
    )

    broken = tmp_path / "broken.ics"
    broken.write_text("this is not a calendar")
    message = await refused(make_server(settings, str(broken)), "search_events", query="x")
    assert f"Calendar {broken} is not a valid .ics file" in message


def test_option_errors_name_the_field(settings):
    with pytest.raises(
        ConnectorConfigError, match=r"tools\.servers\[0\]\.options\.sources: is required"
    ):
        create_calendar_server({}, where=WHERE, settings=settings)
    with pytest.raises(ConnectorConfigError, match=r"options\.sources: must be a list of strings"):
        create_calendar_server({"sources": 5}, where=WHERE, settings=settings)
    with pytest.raises(ConnectorConfigError, match=r"options\.timezone: unknown time zone"):
        create_calendar_server(
            {"sources": ["a.ics"], "timezone": "Mars/Olympus"}, where=WHERE, settings=settings
        )
    with pytest.raises(ConnectorConfigError, match=r"options\.cache_seconds: must be a whole"):
        create_calendar_server(
            {"sources": ["a.ics"], "cache_seconds": True}, where=WHERE, settings=settings
        )


async def test_loads_through_the_spec_with_a_description_override(home_ics, settings):
    overrides = {"list_events": "Show the agenda."}
    async with open_builtin(
        settings,
        "calendar",
        "calendar",
        descriptions=overrides,
        options={"sources": [str(home_ics)], "timezone": "Europe/Paris"},
    ) as loaded:
        tools = loaded.by_name()
        assert set(tools) == {"list_events", "search_events"}
        assert tools["list_events"].description == "Show the agenda."
        assert_descriptions(tools, DESCRIPTIONS, overrides)
        result = await tools["list_events"].ainvoke({"start": "2025-03-14", "days": 1})
        assert "Pi day" in str(result)
