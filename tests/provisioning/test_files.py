"""Atomic writes: final mode from the first byte, never an accidental overwrite, no leftovers."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from provisioning.files import PRIVATE, PUBLIC, FileExists, write_atomic


def test_a_new_file_gets_its_mode_and_content(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "key.pem"
    write_atomic(path, b"secret", mode=PRIVATE)
    assert path.read_bytes() == b"secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["key.pem"]


def test_an_existing_file_is_kept_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "ca.crt"
    write_atomic(path, b"one", mode=PUBLIC)
    with pytest.raises(FileExists) as raised:
        write_atomic(path, b"two", mode=PUBLIC)
    assert raised.value.code == "file_exists"
    assert path.read_bytes() == b"one"
    write_atomic(path, b"two", mode=PRIVATE, force=True)
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_file_that_appears_while_writing_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "key.pem"
    real_link = os.link

    def racing_link(src: str, dst: str) -> None:
        Path(dst).write_bytes(b"theirs")
        real_link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    with pytest.raises(FileExists, match="appeared"):
        write_atomic(path, b"mine", mode=PRIVATE)
    assert path.read_bytes() == b"theirs"
    assert os.listdir(tmp_path) == ["key.pem"]
