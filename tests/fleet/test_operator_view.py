"""The `fleet status` table model: the session rule, unreadable payloads, rendering. Pure."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from appliance.fleet import payloads
from appliance.fleet.payloads import DeviceState, Envelope, HealthKind
from provisioning.fleet_view import UNREADABLE, FleetView, Outcome, format_age, render_table

FLEET = "f1"
BASE = f"appliance/v1/{FLEET}"
NOW = 1_800_000_100_000


def status(sid: int, state: str, *, ts: int = 1_800_000_000_000) -> bytes:
    doc = payloads.status_payload(Envelope(ts, sid, 0), DeviceState(state))
    return payloads.encode(doc)


def health(sid: int, *, ts: int = 1_800_000_050_000, **changes: Any) -> bytes:
    sample = {
        "overall": "healthy",
        "uptime_s": 5,
        "cpu_temp_c": 48.0,
        "mem_used_mb": 100,
        "mem_total_mb": 1000,
        "engine": {"p95_ms": 12.5},
        "queues": {"inbox": 0, "outbox": 4, "telemetry": 1},
        **changes,
    }
    doc = payloads.health_payload(
        Envelope(ts, sid, 3), HealthKind.SNAPSHOT, payloads.check_health(sample)
    )
    return payloads.encode(doc)


def test_a_ready_device_is_one_row_with_its_health() -> None:
    view = FleetView(FLEET)
    assert view.apply(f"{BASE}/kitchen-1/status", status(3, "ready")) is Outcome.ACCEPTED
    assert view.apply(f"{BASE}/kitchen-1/health", health(3)) is Outcome.ACCEPTED
    (row,) = view.rows(NOW)
    assert (row.device, row.state, row.sid) == ("kitchen-1", "ready", 3)
    assert (row.temp_c, row.p95_ms, row.queue_depth) == (48.0, 12.5, 5)
    assert row.last_seen_ms == 1_800_000_050_000
    assert row.problems == ()


def test_a_late_will_of_an_older_session_does_not_overwrite_ready() -> None:
    view = FleetView(FLEET)
    view.apply(f"{BASE}/d/status", status(5, "ready"))
    assert view.apply(f"{BASE}/d/status", status(4, "lost")) is Outcome.STALE
    (row,) = view.rows(NOW)
    assert row.state == "ready"
    assert any("older session" in p for p in row.problems)


def test_the_will_of_the_current_session_is_accepted() -> None:
    view = FleetView(FLEET)
    view.apply(f"{BASE}/d/status", status(5, "ready"))
    assert view.apply(f"{BASE}/d/status", status(5, "lost")) is Outcome.ACCEPTED
    assert view.rows(NOW)[0].state == "lost"


def test_a_new_session_replaces_lost() -> None:
    view = FleetView(FLEET)
    view.apply(f"{BASE}/d/status", status(5, "lost"))
    view.apply(f"{BASE}/d/status", status(6, "booting"))
    assert view.rows(NOW)[0].state == "booting"


def test_the_session_rule_holds_in_any_delivery_order() -> None:
    messages = [
        (f"{BASE}/d/status", status(4, "lost")),
        (f"{BASE}/d/health", health(5)),
    ]
    for order in itertools.permutations(messages):
        view = FleetView(FLEET)
        for topic, payload in order:
            view.apply(topic, payload)
        (row,) = view.rows(NOW)
        assert row.state is None, order
        assert row.temp_c == 48.0


def test_an_unreadable_status_shows_as_unreadable_and_keeps_the_health() -> None:
    view = FleetView(FLEET)
    view.apply(f"{BASE}/d/health", health(1))
    assert view.apply(f"{BASE}/d/status", b"{not json") is Outcome.UNREADABLE
    (row,) = view.rows(NOW)
    assert row.state == UNREADABLE
    assert row.temp_c == 48.0
    assert row.problems[0].startswith("status unreadable")


def test_a_good_status_after_an_unreadable_one_clears_the_problem() -> None:
    view = FleetView(FLEET)
    view.apply(f"{BASE}/d/status", b"[]")
    view.apply(f"{BASE}/d/status", status(1, "ready"))
    assert view.rows(NOW)[0].state == "ready" and view.rows(NOW)[0].problems == ()


def test_an_empty_retained_payload_removes_the_device() -> None:
    view = FleetView(FLEET)
    view.apply(f"{BASE}/d/status", status(1, "ready"))
    assert view.apply(f"{BASE}/d/status", b"") is Outcome.CLEARED
    assert view.rows(NOW) == []


def test_other_fleets_and_other_topics_are_ignored() -> None:
    view = FleetView(FLEET)
    for topic in [
        "appliance/v1/f2/d/status",
        f"{BASE}/d/event/update",
        f"{BASE}/d/cmd/res",
        f"{BASE}/BAD/status",
        "elsewhere/x",
    ]:
        assert view.apply(topic, status(1, "ready")) is Outcome.IGNORED
    assert view.rows(NOW) == []


def test_a_silent_or_unhealthy_device_has_a_problem() -> None:
    view = FleetView(FLEET)
    view.apply(f"{BASE}/d/status", status(1, "ready"))
    view.apply(f"{BASE}/d/health", health(1, ts=NOW - 3600_000, overall="degraded"))
    problems = view.rows(NOW)[0].problems
    assert "no health for 1h" in problems
    assert "health degraded" in problems


def test_the_document_counts_states() -> None:
    view = FleetView(FLEET)
    view.apply(f"{BASE}/a/status", status(1, "ready"))
    view.apply(f"{BASE}/b/status", status(1, "ready"))
    view.apply(f"{BASE}/c/status", status(1, "lost"))
    view.apply(f"{BASE}/d/health", health(1))
    doc = view.document(NOW)
    assert doc["counts"] == {"lost": 1, "ready": 2, "unknown": 1}
    assert [d["device"] for d in doc["devices"]] == ["a", "b", "c", "d"]
    assert doc["devices"][0]["age_s"] == 100.0
    json.dumps(doc)


def test_the_table_aligns_columns_and_strips_terminal_escapes() -> None:
    view = FleetView(FLEET)
    view.apply(f"{BASE}/kitchen-1/status", status(1, "ready"))
    view.apply(f"{BASE}/kitchen-1/health", health(1, model={"name": "m\x1b[2J", "version": "1"}))
    view.apply(f"{BASE}/b/status", status(1, "lost"))
    lines = render_table(view.rows(NOW), NOW).splitlines()
    assert lines[0].startswith("DEVICE     STATE")
    assert lines[1].split() == ["b", "lost", "1m", "ago", "-", "-", "-", "-"]
    assert lines[2].split()[:5] == ["kitchen-1", "ready", "50s", "ago", "m?[2J@1"]
    assert "\x1b" not in "".join(lines)
    assert lines[-1] == "2 devices: 1 lost, 1 ready"


def test_an_empty_fleet_says_so() -> None:
    assert "no devices" in render_table([], NOW)


def test_ages_are_short() -> None:
    assert [format_age(s) for s in (-1, 4.9, 61, 7200, 3 * 86400)] == ["0s", "4s", "1m", "2h", "3d"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
envelope_like = st.fixed_dictionaries(
    {
        "v": st.just(1),
        "ts": st.integers(-5, 2**64),
        "sid": st.integers(-5, 2**40),
        "seq": st.integers(-1, 9),
    },
    optional={
        "state": st.sampled_from(["ready", "lost", "weird", ""]) | json_values,
        "cpu_temp_c": json_values,
        "engine": json_values,
        "queues": json_values,
        "model": json_values,
        "overall": st.sampled_from(["healthy", "degraded"]) | json_values,
        "uptime_s": json_values,
        "mem_used_mb": json_values,
        "mem_total_mb": json_values,
        "kind": st.sampled_from(["snapshot", "delta"]),
    },
)
payload_bytes = (
    st.binary(max_size=64)
    | json_values.map(lambda v: json.dumps(v).encode())
    | envelope_like.map(lambda v: json.dumps(v).encode())
)
topics = st.builds(
    lambda device, leaf: f"{BASE}/{device}/{leaf}",
    st.sampled_from(["a", "b", "Bad", "x-1", ""]),
    st.sampled_from(["status", "birth", "health", "cmd/res", "status/x"]),
)


@given(st.lists(st.tuples(topics, payload_bytes), max_size=12), st.integers(0, 2**63))
def test_no_payload_crashes_the_view_and_everything_renders(
    messages: list[tuple[str, bytes]], now_ms: int
) -> None:
    view = FleetView(FLEET)
    for topic, payload in messages:
        assert isinstance(view.apply(topic, payload), Outcome)
    rows = view.rows(now_ms)
    for row in rows:
        assert row.state is None or isinstance(row.state, str)
        assert row.temp_c is None or isinstance(row.temp_c, float)
        assert row.queue_depth is None or isinstance(row.queue_depth, int)
    render_table(rows, now_ms)
    json.dumps(view.document(now_ms), allow_nan=False)


@given(st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()))
def test_a_malformed_status_is_shown_as_unreadable(payload: bytes) -> None:
    view = FleetView(FLEET)
    outcome = view.apply(f"{BASE}/d/status", payload)
    if outcome is Outcome.UNREADABLE:
        assert view.rows(0)[0].state == UNREADABLE
    else:
        assert outcome is Outcome.CLEARED and payload == b""
