import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.store import AtomicWriteError, atomic_write, atomic_write_text

ROOT = Path(__file__).resolve().parents[2]
SIZE = 2 * 1024 * 1024
OLD, NEW = b"A" * SIZE, b"B" * SIZE

_WRITER = """
import sys
from pathlib import Path
from appliance.store.files import atomic_write
path, size = Path(sys.argv[1]), int(sys.argv[2])
contents = (b"A" * size, b"B" * size)
print("ready", flush=True)
n = 0
while True:
    atomic_write(path, contents[n % 2])
    n += 1
"""


def _leftovers(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


def test_atomic_write_creates_and_replaces_the_content(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    atomic_write(target, b"first")
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert _leftovers(tmp_path) == []


def test_atomic_write_sets_the_mode_exactly(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    atomic_write(target, b"secret", mode=0o600)
    assert target.stat().st_mode & 0o777 == 0o600
    atomic_write(target, b"public", mode=0o644)
    assert target.stat().st_mode & 0o777 == 0o644


def test_atomic_write_text_encodes_utf8(tmp_path: Path) -> None:
    target = tmp_path / "name.txt"
    atomic_write_text(target, "Küche")
    assert target.read_text(encoding="utf-8") == "Küche"


def test_a_failed_write_leaves_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, b"old")

    def fail_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail_fsync)
    with pytest.raises(AtomicWriteError) as caught:
        atomic_write(target, b"new")
    assert caught.value.code == "file_write_failed"
    assert "unchanged" in str(caught.value)
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == [] and os.listdir(tmp_path) == ["state.json"]


def test_an_interrupted_write_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, b"old")

    def interrupt(src: str, dst: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_a_missing_directory_is_an_atomic_write_error(tmp_path: Path) -> None:
    with pytest.raises(AtomicWriteError):
        atomic_write(tmp_path / "absent" / "file", b"x")


def test_a_killed_writer_leaves_one_complete_version(tmp_path: Path) -> None:
    rng = random.Random(20240517)
    target = tmp_path / "model.bin"
    for _ in range(5):
        atomic_write(target, OLD)
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(target), str(SIZE)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        assert writer.stdout is not None
        assert writer.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.005, 0.12))
        writer.send_signal(signal.SIGKILL)
        writer.communicate()
        assert target.read_bytes() in (OLD, NEW)
