"""The QEMU boot test's reading of the serial console (image/qemu_test.py), without QEMU."""

from __future__ import annotations

from tests.image.conftest import REPO, load_script

qemu = load_script(REPO / "image" / "qemu_test.py", "image_qemu_test")

GOOD = """\
[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x410fd083]
appliance-data: grow partition 3 of /dev/vda: done
appliance-data: /dev/vda3 grown to 1464 MiB
APPLIANCE-READY version=0.1.0 state=ready not_ready=[] uptime_s=41.20
APPLIANCE-SERVICE leds backoff restarts=1 last_error=boom
IMAGE-TEST boot=1 root=squashfs,ro data_mib=1430 token=abc-1 release=0123abcd failed=[]
IMAGE-TEST REBOOT
[   40.1] reboot: Restarting system
APPLIANCE-READY version=0.1.0 state=setup not_ready=[] uptime_s=30.02
IMAGE-TEST boot=2 root=squashfs,ro data_mib=1430 token=abc-1 release=0123abcd failed=[]
IMAGE-TEST DONE
[   33.0] reboot: Power down
"""


def test_two_good_boots_pass() -> None:
    console = qemu.parse_console(GOOD)
    assert len(console.ready) == 2 and console.done
    assert console.boots[1]["token"] == "abc-1"
    assert console.services == ["leds backoff restarts=1 last_error=boom"]
    assert qemu.verdict(console) == []


def test_a_parked_service_fails_the_boot() -> None:
    text = GOOD.replace(
        "state=ready not_ready=[] uptime_s=41.20",
        "state=degraded not_ready=[skills:parked] uptime_s=41.20",
    )
    assert any("parked" in p for p in qemu.verdict(qemu.parse_console(text)))


def test_lost_file_changed_root_and_failed_units_are_each_reported() -> None:
    text = (
        GOOD.replace("boot=2 root=squashfs,ro", "boot=2 root=squashfs,rw")
        .replace("token=abc-1 release=0123abcd failed=[]\nIMAGE-TEST DONE",
                 "token=other release=0123abcd failed=[a.service b.service]\nIMAGE-TEST DONE")
    )  # fmt: skip
    problems = qemu.verdict(qemu.parse_console(text))
    assert any("not read-only" in p for p in problems)
    assert any("did not survive" in p for p in problems)
    assert any("[a.service b.service]" in p for p in problems)


def test_data_that_did_not_grow_fails() -> None:
    problems = qemu.verdict(qemu.parse_console(GOOD.replace("data_mib=1430", "data_mib=60")))
    assert any("did not grow" in p for p in problems)


def test_not_ready_panic_and_missing_boot_fail() -> None:
    assert qemu.verdict(qemu.parse_console("APPLIANCE-NOT-READY appliance.service=failed\n"))
    panic = qemu.parse_console("Kernel panic - not syncing: VFS: Unable to mount root fs\n")
    assert panic.failures and qemu.verdict(panic)
    half = GOOD.split("[   40.1]")[0]
    assert "the self-test did not report both boots" in qemu.verdict(qemu.parse_console(half))


def test_self_test_failure_line_is_a_failure() -> None:
    console = qemu.parse_console("IMAGE-TEST FAIL root accepted a write\n")
    assert console.failures == ["FAIL root accepted a write"]


def test_qemu_cmdline_swaps_the_consoles_and_adds_the_test_switch() -> None:
    line = qemu.qemu_cmdline("console=tty0 console=ttyS1,115200 root=PARTUUID=5eed0001-02 ro\n")
    assert line.split() == [
        "console=ttyAMA0,115200",
        "root=PARTUUID=5eed0001-02",
        "ro",
        "appliance.test=1",
    ]
