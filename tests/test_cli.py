"""The `appliance` command, run as a real process the way a person or systemd runs it."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.__main__ import main, render_status
from appliance.control import request
from appliance.errors import ControlError

ROOT = Path(__file__).parent.parent


def appliance(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
        **kwargs,
    )  # type: ignore[call-overload]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        yield Path(tmp)


def dev_config(directory: Path) -> Path:
    config = directory / "config.toml"
    config.write_text(
        f'[device]\nname = "bench-pi"\ndata_dir = "{directory}/data"\n'
        f'[control]\nsocket_path = "{directory}/control.sock"\n'
        "[status]\nled_pin = 17\n"
        f'[engine]\nmodel_path = "{ROOT}/models/minilm/minilm-l6-v2-int8.json"\n',
        encoding="utf-8",
    )
    return config


def wait_for_ready(sock: Path, proc: subprocess.Popen[str]) -> dict[str, object]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            report = request(sock, "status")
            if report["state"] == "ready":
                return report
        except ControlError:
            pass
        time.sleep(0.05)
    raise AssertionError("appliance did not become ready")


def start(*args: str, **env: str) -> subprocess.Popen[str]:
    """`appliance run ARGS` as a child process, with output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
    )


@pytest.mark.integration
def test_run_reaches_ready_answers_status_and_stops_on_sigterm(short_dir: Path) -> None:
    config = dev_config(short_dir)
    proc = start("--config", str(config))
    try:
        # Not a Pi and not --dev: the LED pin factory is unavailable and the appliance says so,
        # but still runs.
        report = wait_for_ready(short_dir / "control.sock", proc)
        assert report["device"] == "bench-pi"
        assert report["led"] == "solid on"
        names = [s["name"] for s in report["services"]]  # type: ignore[union-attr]
        assert names == ["leds", "control", "store", "engine", "skills", "tuner", "chat"]

        status = appliance("status", "--config", str(config), "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["state"] == "ready"
        human = appliance("status", "--config", str(config))
        assert "bench-pi: ready (LED: solid on)" in human.stdout
        assert (short_dir / "data" / "appliance.db").exists()

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - started < 5
    finally:
        proc.kill()
        _, stderr = proc.communicate()
    assert "Supervisor stopped" in stderr
    assert not (short_dir / "control.sock").exists()


@pytest.mark.integration
def test_dev_mode_shows_the_led_in_the_terminal_and_stops_on_ctrl_c() -> None:
    proc = start("--dev")  # data under the checkout's .dev-data/, as `make run` does
    try:
        wait_for_ready(ROOT / ".dev-data" / "control.sock", proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        stdout, _ = proc.communicate()
    assert "ready" in stdout and "solid on" in stdout


def test_status_without_a_running_instance_fails_clearly(short_dir: Path) -> None:
    result = appliance("status", "--config", str(dev_config(short_dir)))
    assert result.returncode == 1
    assert "No appliance is running" in result.stderr


def test_check_config_reports_file_line_and_key(short_dir: Path) -> None:
    bad = short_dir / "bad.toml"
    bad.write_text("[device]\nname = 'x'\ncolour = 'red'\n", encoding="utf-8")
    result = appliance("check-config", str(bad))
    assert result.returncode == 2
    assert f"{bad}:3: device.colour: unknown key" in result.stderr
    result = appliance("check-config", str(bad), "--json")
    problem = json.loads(result.stdout)["problems"][0]
    assert (problem["line"], problem["key"]) == (3, "device.colour")
    assert appliance("check-config", str(dev_config(short_dir))).returncode == 0


def test_run_with_an_invalid_config_exits_with_ex_config(short_dir: Path) -> None:
    bad = short_dir / "bad.toml"
    bad.write_text("[status\n", encoding="utf-8")
    result = appliance("run", "--config", str(bad))
    assert result.returncode == 78
    assert "TOML syntax" in result.stderr


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["appliance"]
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("run", "status", "check-config", "version"):
        assert command in out


def test_render_status_shows_each_service() -> None:
    text = render_status(
        {
            "device": "d",
            "state": "degraded",
            "led": "long-short",
            "version": "0",
            "pid": 1,
            "uptime_s": 3725,
            "watchdog": {"enabled": True, "healthy": True},
            "services": [
                {
                    "name": "engine",
                    "state": "parked",
                    "restarts": 5,
                    "last_error": "RuntimeError: boom",
                }
            ],
            "chat": {"telegram": {"status": "failed", "detail": "401: token refused"}},
        }
    )
    assert "d: degraded (LED: long-short)" in text
    assert "telegram     failed      401: token refused" in text
    assert "up 1h02m05s" in text
    assert "engine       parked            5  RuntimeError: boom" in text


@pytest.mark.integration
def test_run_under_systemd_notifies_ready_watchdog_and_stopping(short_dir: Path) -> None:
    import socket
    import uuid

    name = f"appliance-notify-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind("\0" + name)
        notify.settimeout(10)
        proc = start(
            "--config",
            str(dev_config(short_dir)),
            NOTIFY_SOCKET="@" + name,
            WATCHDOG_USEC="1000000",
        )
        try:
            messages: list[str] = []
            while messages.count("WATCHDOG=1") < 2:
                messages.append(notify.recv(4096).decode())
            proc.send_signal(signal.SIGTERM)
            while "STOPPING=1" not in messages:
                messages.append(notify.recv(4096).decode())
            assert proc.wait(timeout=5) == 0
        finally:
            proc.kill()
            proc.communicate()
    assert messages[0].startswith("READY=1")
    assert any(m.startswith("STATUS=ready: 7/7 services ready") for m in messages)
    assert messages.index("STOPPING=1") > messages.index("WATCHDOG=1")


def test_ask_prints_one_json_object() -> None:
    result = appliance("ask", "hello there", "--json", "--dev")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert set(answer) == {"intent", "confidence", "reply", "latency_ms"}
    assert answer["intent"] == "greeting"


def test_ask_reads_one_message_per_line_and_answers_from_the_faq() -> None:
    faq = ROOT / "models" / "eval" / "faq_sample.md"
    result = appliance(
        "ask",
        "-",
        "--json",
        "--dev",
        "--faq",
        str(faq),
        input="thanks a lot\n\nwhen do you open on sunday?\nbanana bread recipe\n",
    )
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert [a["intent"] for a in answers] == ["thanks", "faq", "unknown"]
    assert "Sunday" in answers[1]["reply"]


def test_ask_with_a_missing_model_fails_clearly(short_dir: Path) -> None:
    config = short_dir / "c.toml"
    config.write_text(f'[engine]\nmodel_path = "{short_dir}/none.json"\n', encoding="utf-8")
    result = appliance("ask", "hi", "--config", str(config))
    assert result.returncode == 1
    assert "Cannot read" in result.stderr and "none.json" in result.stderr


@pytest.mark.integration
def test_ask_to_identify_makes_the_running_appliance_blink(short_dir: Path) -> None:
    config = dev_config(short_dir)
    proc = start("--config", str(config))
    try:
        wait_for_ready(short_dir / "control.sock", proc)
        result = appliance("ask", "blink your led so I can find you", "--config", str(config))
        assert "Blinking my LED" in result.stdout, result.stderr
        report = request(short_dir / "control.sock", "status")
        assert report["state"] == "identify" and report["led"] == "rapid blink"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.communicate()
