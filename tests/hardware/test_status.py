"""The tuner's line in `appliance status`."""

from typing import Any

from appliance.__main__ import render_status


def report(tuner: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "device": "d",
        "state": "ready",
        "led": "solid on",
        "version": "0",
        "pid": 1,
        "uptime_s": 65,
        "watchdog": {"enabled": False, "healthy": True},
        "services": [{"name": "tuner", "state": "ready", "restarts": 0, "last_error": None}],
        "engine": {
            "model": "minilm",
            "model_version": "1",
            "runtime": "ai-edge-litert 2.3.0",
            "threads": 3,
            "p50_ms": None,
            "count": 0,
            "errors": 0,
            "profile": "pi4-3t-xnnpack",
        },
        "tuner": tuner,
    }


def test_status_shows_the_tuned_profile_and_its_gain() -> None:
    text = render_status(
        report(
            {
                "state": "watching",
                "profile": "pi4-3t-xnnpack",
                "gain": 2.41,
                "reason": "no tuned profile yet",
            }
        )
    )
    lines = text.splitlines()
    assert lines[2].startswith("model minilm 1 on ai-edge-litert 2.3.0, 3 thread(s)")
    assert lines[3] == (
        "tuner watching: profile pi4-3t-xnnpack, 2.41x the runtime default (no tuned profile yet)"
    )


def test_status_before_the_first_tuning_run() -> None:
    text = render_status(
        report({"state": "measuring", "profile": None, "gain": None, "reason": "model changed"})
    )
    assert "tuner measuring: profile none yet (model changed)" in text


def test_status_without_a_tuner() -> None:
    assert "tuner" not in render_status(report(None)).split("SERVICE")[0]
