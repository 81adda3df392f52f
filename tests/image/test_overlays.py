"""The files laid over the image's root: units parse, mounts are right, nothing writes the root."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.image.conftest import OVERLAYS, REPO, load_script
from tests.test_systemd import parse_unit

build = load_script(REPO / "image" / "build.py", "image_build")
RECIPE = build.load_recipe(REPO / "image" / "recipe.toml")
UNITS = OVERLAYS / "etc/systemd/system"
SCRIPTS = OVERLAYS / "usr/lib/appliance"
UNIT_FILES = sorted(UNITS.glob("*.service"))
# Run-time writable places: the data partition and the tmpfs mounts (/run, /tmp, /var with
# systemd.volatile=state). Everything else is the read-only root.
WRITABLE = ("/data/", "/run/", "/tmp/", "/var/", "/dev/", "/sys/", "/proc/")


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    return parse_unit((UNITS / name).read_text())


def fstab() -> dict[str, list[str]]:
    """Mount point → [what, type, options, dump, pass]."""
    entries = {}
    for line in (OVERLAYS / "etc/fstab").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            what, where, *rest = line.split()
            assert len(rest) == 4, line
            entries[where] = [what, *rest]
    return entries


def cmdline() -> list[str]:
    text = (OVERLAYS / "boot/firmware/cmdline.txt").read_text()
    assert text.count("\n") == 1 and text.endswith("\n"), "cmdline.txt is one line"
    return text.split()


# --- units ---


@pytest.mark.parametrize("path", UNIT_FILES, ids=lambda p: p.name)
def test_unit_parses_and_every_command_is_shipped(path: Path) -> None:
    parsed = parse_unit(path.read_text())
    assert "Description" in parsed["Unit"]
    for command in parsed["Service"].get("ExecStart", []):
        program = command.lstrip("-@:+!").split()[0]
        shipped = OVERLAYS / program.lstrip("/")
        assert program in {"/usr/bin/python3", "/opt/appliance/venv/bin/appliance"} or (
            shipped.is_file() and os.access(shipped, os.X_OK)
        ), program
        for arg in command.split()[1:]:
            if arg.startswith("/usr/lib/appliance/"):
                assert (OVERLAYS / arg.lstrip("/")).is_file(), arg


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
@pytest.mark.parametrize("path", UNIT_FILES, ids=lambda p: p.name)
def test_systemd_analyze_verify_finds_nothing_but_missing_image_files(path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--generators=no", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        # the commands exist in the image, not on the machine running the tests
        if not re.search(r"Command .* is not executable", line)
        # the build machine may not boot with systemd (no sysinit.target to link against)
        and "sysinit.target not found" not in line
        and line.strip()
    ]
    assert problems == []


def test_supervisor_unit_is_notify_with_watchdog_and_error_led_on_give_up() -> None:
    service = unit("appliance.service")
    assert service["Service"]["Type"] == ["notify"]
    assert int(service["Service"]["WatchdogSec"][-1]) > 0
    assert service["Service"]["Restart"] == ["on-failure"]
    assert service["Unit"]["OnFailure"] == ["appliance-error-led.service"]
    assert int(service["Unit"]["StartLimitBurst"][-1]) >= 3  # crashes are retried first


def test_error_led_runs_only_when_the_supervisor_cannot_start() -> None:
    led = unit("appliance-error-led.service")
    assert "Install" not in led  # never enabled: only OnFailure= starts it
    assert led["Unit"]["Conflicts"] == ["appliance.service"]  # a good start stops it
    starters = [p.name for p in UNIT_FILES if "appliance-error-led.service" in p.read_text()
                and "OnFailure=appliance-error-led.service" in p.read_text()]  # fmt: skip
    assert sorted(starters) == ["appliance-data.service", "appliance.service"]
    for path in UNIT_FILES:
        parsed = parse_unit(path.read_text())
        for key in ("Wants", "Requires", "WantedBy", "RequiredBy", "OnSuccess"):
            for section in parsed.values():
                assert "appliance-error-led.service" not in " ".join(section.get(key, []))
    assert "appliance-error-led.service" not in build.ENABLED_UNITS


def test_error_led_script_blinks_sos_and_ends_dark(tmp_path: Path) -> None:
    (tmp_path / "trigger").write_text("heartbeat\n")
    (tmp_path / "brightness").write_text("1\n")
    env = {**os.environ, "LED_DIR": str(tmp_path), "GPIO_LINE": "", "UNIT_S": "0", "ROUNDS": "2"}
    result = subprocess.run(["sh", str(SCRIPTS / "error-led")], env=env, capture_output=True,
                            text=True, timeout=30, check=True)  # fmt: skip
    assert result.stdout.split() == ["...---...", "...---..."]
    assert (tmp_path / "trigger").read_text().strip() == "none"
    assert (tmp_path / "brightness").read_text().strip() == "0"


def test_console_ready_line_comes_after_the_supervisor_is_ready() -> None:
    console = unit("appliance-console.service")
    assert "appliance.service" in console["Unit"]["After"]
    assert console["Service"]["StandardOutput"] == ["tty"]
    assert console["Service"]["TTYPath"] == ["/dev/console"]
    assert "APPLIANCE-READY" in (SCRIPTS / "console-ready").read_text()


def test_self_test_is_inert_without_the_test_switch_and_no_autologin() -> None:
    test = unit("appliance-image-test.service")
    assert test["Unit"]["ConditionKernelCommandLine"] == ["appliance.test=1"]
    assert "appliance.test=1" not in cmdline()
    for path in OVERLAYS.rglob("*"):
        if path.is_file():
            assert "--autologin" not in path.read_text(errors="replace"), path


def test_data_unit_runs_before_the_mount_and_is_pulled_by_fstab() -> None:
    data = unit("appliance-data.service")
    assert data["Unit"]["DefaultDependencies"] == ["no"]
    assert "data.mount" in data["Unit"]["Before"][0].split()
    assert "x-systemd.requires=appliance-data.service" in fstab()["/data"][2].split(",")


# --- mounts and the kernel command line ---


def test_fstab_root_is_read_only_squashfs_and_data_is_partition_three() -> None:
    mounts = fstab()
    disk = RECIPE.disk_id
    assert mounts["/"][:3] == [f"PARTUUID={disk}-02", RECIPE.root_fs, "ro"]
    assert mounts["/boot/firmware"][0] == f"PARTUUID={disk}-01"
    assert "ro" in mounts["/boot/firmware"][2].split(",")
    assert "nofail" in mounts["/boot/firmware"][2].split(",")
    data_what, data_type, data_options, *_ = mounts["/data"]
    options = data_options.split(",")
    assert (data_what, data_type) == (f"PARTUUID={disk}-03", "ext4")
    # a data partition that cannot be made usable must not drop the boot to an emergency shell,
    # yet tmpfiles (after local-fs.target) must see it mounted
    assert "nofail" in options and "x-systemd.before=local-fs.target" in options
    assert "noatime" in options
    assert mounts["/tmp"][1] == "tmpfs"
    assert all(entry[4] == "0" for entry in mounts.values())  # fsck: appliance-data does /data


def test_every_mount_point_exists_on_the_read_only_root() -> None:
    debian_dirs = {"/", "/tmp", "/boot/firmware"}  # made by Debian's packages
    for where in fstab():
        assert where in debian_dirs or where.lstrip("/") in build.MOUNT_POINTS, where


def test_cmdline_mounts_the_root_read_only_with_volatile_state() -> None:
    args = cmdline()
    assert f"root=PARTUUID={RECIPE.disk_id}-02" in args
    assert "ro" in args and "rw" not in args
    assert "systemd.volatile=state" in args
    assert f"rootfstype={RECIPE.root_fs}" in args
    assert "rootwait" in args


def test_initramfs_has_the_root_file_system_module() -> None:
    modules = (OVERLAYS / "etc/initramfs-tools/modules").read_text().split("\n")
    assert RECIPE.root_fs in modules
    assert "etc/initramfs-tools" in build.BASE_OVERLAYS


# --- nothing writable on the root ---


def test_overlays_hold_nothing_under_run_time_writable_trees() -> None:
    tops = {p.relative_to(OVERLAYS).parts[0] for p in OVERLAYS.rglob("*") if p.is_file()}
    assert tops <= {"README.md", "etc", "usr", "boot"}, tops


def test_every_path_written_at_run_time_is_on_data_or_a_tmpfs() -> None:
    service = unit("appliance.service")["Service"]
    for path in " ".join(service.get("ReadWritePaths", [])).split():
        assert path.startswith("/data/"), path
    assert service["ProtectSystem"] == ["strict"]
    for line in (OVERLAYS / "etc/tmpfiles.d/appliance.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert line.split()[1].startswith(WRITABLE), line
    config = tomllib.loads((OVERLAYS / "etc/appliance/config.toml").read_text())
    assert config["device"]["data_dir"].startswith("/data/")
    assert config["control"]["socket_path"].startswith("/run/")
    nm = configparser.ConfigParser()
    nm.read(OVERLAYS / "etc/NetworkManager/conf.d/appliance.conf")
    assert nm["keyfile"]["path"].startswith("/data/")
    journald = configparser.ConfigParser()
    journald.read(OVERLAYS / "etc/systemd/journald.conf.d/appliance.conf")
    assert journald["Journal"]["Storage"] == "volatile"  # logs in RAM, not on the card
    assert journald["Journal"]["RuntimeMaxUse"].endswith("M")
    assert build.ROOT_SYMLINKS["etc/resolv.conf"].endswith("/run/NetworkManager/resolv.conf")


def test_fleet_keys_live_on_the_read_only_root() -> None:
    readme = (OVERLAYS / "etc/appliance/fleet-keys/README").read_text()
    assert "APPLIANCE_FLEET_KEYS" in readme


def test_scripts_are_executable_with_a_shebang() -> None:
    for path in SCRIPTS.iterdir():
        assert os.access(path, os.X_OK), path
        assert path.read_text().startswith("#!/"), path
