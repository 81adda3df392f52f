"""The probe on recorded board trees, and its parsers on generated input."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.hardware.machine import (
    PI_MEMORY_MIB,
    PI_SOCS,
    PI_TYPES,
    block_device_of,
    decode_pi_revision,
    parse_cpuinfo,
    parse_device_tree_string,
    parse_meminfo,
    parse_wireless,
    storage_kind,
)
from appliance.hardware.probe import no_runtimes, probe, read_throttling, read_wifi_signal
from appliance.hardware.throttling import Throttling, parse_get_throttled

BOARDS = Path(__file__).parent / "boards"


def recorded_vcgencmd(board: str) -> str | None:
    path = BOARDS / board / "vcgencmd.txt"
    return path.read_text() if path.exists() else None


def probe_board(board: str):  # type: ignore[no-untyped-def]
    return probe(BOARDS / board, vcgencmd=lambda: recorded_vcgencmd(board), runtimes=no_runtimes)


EXPECTED = {
    "pi-zero-2w": dict(
        board="Raspberry Pi Zero 2 W Rev 1.0",
        arch="aarch64",
        soc="BCM2837",
        cpu="Cortex-A53",
        cores=4,
        max_freq_mhz=1000.0,
        ram_mib=426,
        temp_c=61.224,
        storage="sd",
        governor="ondemand",
    ),
    "pi3": dict(
        board="Raspberry Pi 3 Model B Rev 1.2",
        arch="armv7l",
        soc="BCM2837",
        cpu="Cortex-A53",
        cores=4,
        max_freq_mhz=1200.0,
        ram_mib=926,
        temp_c=55.844,
        storage="sd",
        governor="ondemand",
    ),
    "pi4": dict(
        board="Raspberry Pi 4 Model B Rev 1.4",
        arch="aarch64",
        soc="BCM2711",
        cpu="Cortex-A72",
        cores=4,
        max_freq_mhz=1800.0,
        ram_mib=3793,
        temp_c=81.45,
        storage="usb",
        governor="ondemand",
    ),
    "pi5": dict(
        board="Raspberry Pi 5 Model B Rev 1.0",
        arch="aarch64",
        soc="BCM2712",
        cpu="Cortex-A76",
        cores=4,
        max_freq_mhz=2400.0,
        ram_mib=8052,
        temp_c=48.85,
        storage="nvme",
        governor="ondemand",
    ),
    "x86-laptop": dict(
        board="LENOVO 20XW0055GE",
        arch="x86_64",
        soc=None,
        cpu="11th Gen Intel(R) Core(TM) i7-1165G7 @ 2.80GHz",
        cores=8,
        max_freq_mhz=4700.0,
        ram_mib=15738,
        temp_c=52.0,
        storage="nvme",
        governor="powersave",
    ),
}


@pytest.mark.parametrize("board", sorted(EXPECTED))
def test_probe_decodes_each_recorded_board(board: str) -> None:
    machine = probe_board(board)
    for field, expected in EXPECTED[board].items():
        assert getattr(machine, field) == expected, field


def test_pi_revision_codes_give_board_type_and_memory() -> None:
    assert probe_board("pi-zero-2w").pi_revision.board_type == "Zero 2 W"  # type: ignore[union-attr]
    pi5 = probe_board("pi5").pi_revision
    assert pi5 is not None and (pi5.board_type, pi5.memory_mib) == ("5", 8192)
    assert probe_board("pi4").pi_revision.memory_mib == 4096  # type: ignore[union-attr]
    assert probe_board("x86-laptop").pi_revision is None


def test_features_show_the_simd_int8_kernels_use() -> None:
    assert probe_board("pi5").as_dict()["features"] == ["asimd", "asimddp"]
    assert probe_board("pi3").as_dict()["features"] == ["neon"]
    assert "avx512_vnni" in probe_board("x86-laptop").as_dict()["features"]


def test_zero_2w_throttling_bits_from_vcgencmd() -> None:
    throttling = probe_board("pi-zero-2w").throttling
    assert throttling == Throttling(0x50005, "vcgencmd")
    assert throttling.flags == (
        "under_voltage",
        "throttled",
        "under_voltage_occurred",
        "throttled_occurred",
    )
    assert throttling.throttled_now and throttling.under_voltage_now


def test_pi4_throttling_from_sysfs_when_there_is_no_vcgencmd() -> None:
    throttling = probe_board("pi4").throttling
    assert throttling is not None and throttling.source == "sysfs"
    assert throttling.flags == (
        "freq_capped",
        "throttled",
        "soft_temp_limit",
        "freq_capped_occurred",
        "throttled_occurred",
        "soft_temp_limit_occurred",
    )
    assert not throttling.under_voltage_now


def test_boards_without_any_throttling_source_report_none() -> None:
    assert probe_board("x86-laptop").throttling is None
    assert probe_board("pi5").throttling == Throttling(0, "vcgencmd")
    assert not probe_board("pi5").throttling.throttled_now  # type: ignore[union-attr]


def test_every_documented_bit_has_its_name() -> None:
    names = [Throttling(1 << bit).flags for bit in (0, 1, 2, 3, 16, 17, 18, 19)]
    assert names == [
        ("under_voltage",),
        ("freq_capped",),
        ("throttled",),
        ("soft_temp_limit",),
        ("under_voltage_occurred",),
        ("freq_capped_occurred",),
        ("throttled_occurred",),
        ("soft_temp_limit_occurred",),
    ]
    assert Throttling(1 << 5).flags == ("bit_5",)
    assert not Throttling(0xF0000).throttled_now  # "occurred" bits alone: not throttled now


def test_vcgencmd_garbage_falls_back_to_sysfs() -> None:
    throttling = read_throttling(BOARDS / "pi4", lambda: 'error=1 error_msg="no"')
    assert throttling is not None and throttling.source == "sysfs"


def test_the_real_machine_probes_without_error() -> None:
    machine = probe(vcgencmd=lambda: None, runtimes=no_runtimes)
    assert machine.cores >= 1 and machine.board


@given(st.integers(min_value=0, max_value=2**32 - 1), st.booleans())
def test_get_throttled_parses_both_spellings(value: int, vcgencmd: bool) -> None:
    text = f"throttled=0x{value:x}\n" if vcgencmd else f"{value:x}\n"
    parsed = parse_get_throttled(text)
    assert parsed is not None and parsed.value == value
    assert len(parsed.flags) == bin(value).count("1")


@given(st.text())
def test_get_throttled_never_raises(text: str) -> None:
    parse_get_throttled(text)


@given(
    st.sampled_from(sorted(PI_TYPES)),
    st.sampled_from(sorted(PI_SOCS)),
    st.sampled_from(sorted(PI_MEMORY_MIB)),
    st.integers(0, 15),
    st.integers(0, 15),
)
def test_revision_codes_decode_every_field(
    kind: int, soc: int, memory: int, maker: int, pcb: int
) -> None:
    code = 1 << 23 | memory << 20 | maker << 16 | soc << 12 | kind << 4 | pcb
    revision = decode_pi_revision(f"{code:06x}")
    assert revision is not None
    assert revision.board_type == PI_TYPES[kind]
    assert revision.soc == PI_SOCS[soc]
    assert revision.memory_mib == PI_MEMORY_MIB[memory]
    assert revision.pcb_revision == f"1.{pcb}"


@given(st.text())
def test_revision_decoding_never_raises(text: str) -> None:
    decode_pi_revision(text)


@given(st.integers(1, 64), st.sampled_from(["0xd03", "0xd08", "0xd0b"]))
def test_cpuinfo_counts_every_processor_block(cores: int, part: str) -> None:
    block = "processor\t: {}\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\nCPU part\t: {}\n"
    text = "\n".join(block.format(i, part) for i in range(cores)) + "\nRevision\t: c03114\n"
    info = parse_cpuinfo(text)
    assert info.cores == cores
    assert info.cpu.startswith("Cortex-A")
    assert info.revision == "c03114"


@given(st.text())
def test_cpuinfo_and_meminfo_parsers_never_raise(text: str) -> None:
    parse_cpuinfo(text)
    parse_meminfo(text)


@given(st.dictionaries(st.from_regex(r"[A-Za-z]\w{0,12}", fullmatch=True), st.integers(0, 2**40)))
def test_meminfo_reads_every_field_in_mib(fields: dict[str, int]) -> None:
    text = "".join(f"{key}:  {kb} kB\n" for key, kb in fields.items())
    assert parse_meminfo(text) == {key: kb // 1024 for key, kb in fields.items()}


def test_device_tree_strings_drop_the_nul() -> None:
    assert parse_device_tree_string(b"Raspberry Pi 5 Model B Rev 1.0\x00") == (
        "Raspberry Pi 5 Model B Rev 1.0"
    )


@pytest.mark.parametrize(
    ("source", "device", "kind"),
    [
        ("/dev/mmcblk0p2", "mmcblk0", "sd"),
        ("/dev/nvme0n1p2", "nvme0n1", "nvme"),
        ("/dev/sda2", "sda", "ssd"),
        ("/dev/vda1", "vda", "virtio"),
    ],
)
def test_storage_kind_by_device_name(source: str, device: str, kind: str) -> None:
    assert block_device_of(source) == device
    assert storage_kind(device) == kind


def test_emmc_and_usb_are_told_apart() -> None:
    assert storage_kind("mmcblk0", mmc_type="MMC\n") == "emmc"
    assert storage_kind("sda", usb=True) == "usb"
    assert block_device_of("/dev/root") is None
    assert block_device_of("tmpfs") is None


def test_wifi_signal_from_proc_net_wireless() -> None:
    assert read_wifi_signal(BOARDS / "pi4") == {"wlan0": -56.0}
    assert read_wifi_signal(BOARDS / "x86-laptop") == {}


@given(st.text())
def test_wireless_parsing_never_raises_and_keeps_dbm_only(text: str) -> None:
    assert all(-120.0 <= level < 0.0 for level in parse_wireless(text).values())
