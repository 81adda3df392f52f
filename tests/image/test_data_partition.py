"""The first-boot data partition script: its plan, and its actions on disk image files."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.image.conftest import OVERLAYS, load_script

data = load_script(OVERLAYS / "usr/lib/appliance/data-partition", "appliance_data_partition")
MIB = 1024 * 1024
SECTORS_PER_MIB = MIB // 512
TOOLS = ("sfdisk", "mkfs.ext4", "e2fsck", "resize2fs", "dumpe2fs", "blkid", "debugfs")
needs_tools = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in TOOLS),
    reason="needs fdisk, e2fsprogs and util-linux (installed by .ci/run)",
)


def part(number: int, start_mib: int, size_mib: int) -> object:
    return data.Partition(number, start_mib * SECTORS_PER_MIB, size_mib * SECTORS_PER_MIB)


# --- the plan (pure) ---


def test_missing_data_partition_is_created_aligned_after_the_root() -> None:
    plan = data.plan_table([part(1, 8, 256), part(2, 264, 300)], 2048 * SECTORS_PER_MIB)
    assert plan is not None and plan[0] == "create"
    start = int(plan[1].split(",")[0].removeprefix("start="))
    assert start == 568 * SECTORS_PER_MIB  # 264 + 300 rounded up to 8 MiB
    assert "size" not in plan[1]  # the rest of the disk


def test_small_data_partition_is_grown_and_a_full_one_left_alone() -> None:
    parts = [part(1, 8, 256), part(2, 264, 304), part(3, 568, 64)]
    assert data.plan_table(parts, 2048 * SECTORS_PER_MIB) == ("grow", ", +\n")
    assert data.plan_table(parts, (568 + 64 + 1) * SECTORS_PER_MIB) is None


def test_a_disk_without_a_root_partition_is_not_touched() -> None:
    with pytest.raises(data.DataPartitionError, match="partition 2"):
        data.plan_table([part(1, 8, 256)], 2048 * SECTORS_PER_MIB)


def test_no_room_for_data_is_an_error() -> None:
    with pytest.raises(data.DataPartitionError, match="no free space"):
        data.plan_table([part(1, 8, 256), part(2, 264, 300)], 570 * SECTORS_PER_MIB)


@given(
    root_end=st.integers(min_value=1, max_value=60_000),
    data_mib=st.integers(min_value=1, max_value=4096),
    disk_extra=st.integers(min_value=0, max_value=100_000),
)
def test_plan_never_overlaps_the_root_and_converges(
    root_end: int, data_mib: int, disk_extra: int
) -> None:
    root = data.Partition(2, 2048, root_end * SECTORS_PER_MIB)
    start = -(-root.end // data.ALIGN_SECTORS) * data.ALIGN_SECTORS
    disk = start + (data_mib + disk_extra) * SECTORS_PER_MIB
    plan = data.plan_table([root, data.Partition(3, start, data_mib * SECTORS_PER_MIB)], disk)
    if plan is None:
        assert disk - (start + data_mib * SECTORS_PER_MIB) <= data.SLACK_SECTORS
    else:
        assert plan[0] == "grow"
    created = data.plan_table([root], disk) if disk - start >= data.SLACK_SECTORS else None
    if created is not None:
        assert int(created[1].split(",")[0].removeprefix("start=")) >= root.end


def test_parse_table_numbers_partitions_by_device_name() -> None:
    text = json.dumps({"partitiontable": {"partitions": [
        {"node": "/dev/mmcblk0p1", "start": 16384, "size": 524288},
        {"node": "/dev/mmcblk0p3", "start": 1000000, "size": 5},
    ]}})  # fmt: skip
    assert data.parse_table(text) == [
        data.Partition(1, 16384, 524288),
        data.Partition(3, 1000000, 5),
    ]


# --- the actions, on files standing in for the card and the partition ---


def make_disk(path: Path, size_mib: int, table: str) -> None:
    with path.open("wb") as handle:
        handle.truncate(size_mib * MIB)
    subprocess.run(["sfdisk", "-q", str(path)], input=table, text=True, check=True)


def table_of(path: Path) -> list[object]:
    out = subprocess.run(
        ["sfdisk", "--json", str(path)], capture_output=True, text=True, check=True
    )
    return list(data.parse_table(out.stdout))


IMAGE_TABLE = (
    "label: dos\nlabel-id: 0x5eed0001\n"
    "start=8MiB, size=16MiB, type=c\nstart=24MiB, size=16MiB, type=83\n"
)


@needs_tools
def test_missing_partition_is_created_to_the_end_of_the_card(tmp_path: Path) -> None:
    disk = tmp_path / "card.img"
    make_disk(disk, 128, IMAGE_TABLE)
    assert data.ensure_table(str(disk)) == "create"
    parts = {p.number: p for p in table_of(disk)}
    assert parts[3].start == 40 * SECTORS_PER_MIB
    assert parts[3].end == 128 * SECTORS_PER_MIB
    assert parts[2] == data.Partition(2, 24 * SECTORS_PER_MIB, 16 * SECTORS_PER_MIB)
    assert data.ensure_table(str(disk)) is None  # second boot: nothing to do


@needs_tools
def test_image_sized_partition_grows_on_a_bigger_card(tmp_path: Path) -> None:
    disk = tmp_path / "card.img"
    make_disk(disk, 64, IMAGE_TABLE + "start=40MiB, size=8MiB, type=83\n")
    with disk.open("r+b") as handle:
        handle.truncate(256 * MIB)  # the image written to a bigger card
    assert data.ensure_table(str(disk)) == "grow"
    parts = {p.number: p for p in table_of(disk)}
    assert (parts[3].start, parts[3].end) == (40 * SECTORS_PER_MIB, 256 * SECTORS_PER_MIB)


def ext4_with_file(path: Path, size_mib: int) -> None:
    with path.open("wb") as handle:
        handle.truncate(size_mib * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "data", str(path)], check=True)
    note = path.with_suffix(".note")
    note.write_text("kept\n")
    subprocess.run(["debugfs", "-w", "-R", f"write {note} note", str(path)],
                   capture_output=True, check=True)  # fmt: skip


def read_note(path: Path) -> str:
    out = subprocess.run(["debugfs", "-R", "cat note", str(path)], capture_output=True, text=True)
    return out.stdout


def fs_type(path: Path) -> str:
    return subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", str(path)],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip


@needs_tools
def test_empty_partition_is_formatted_as_ext4_labelled_data(tmp_path: Path) -> None:
    device = tmp_path / "p3"
    with device.open("wb") as handle:
        handle.truncate(32 * MIB)
    assert data.ensure_filesystem(str(device)) == ["formatted (found no file system)"]
    assert fs_type(device) == "ext4"
    label = subprocess.run(["blkid", "-p", "-o", "value", "-s", "LABEL", str(device)],
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    assert label == "data"


@needs_tools
def test_corrupt_partition_is_recreated_rather_than_left_unbootable(tmp_path: Path) -> None:
    device = tmp_path / "p3"
    ext4_with_file(device, 32)
    with device.open("r+b") as handle:  # wipe the superblock and the group descriptors
        handle.seek(0)
        handle.write(b"\xa5" * (4 * MIB))
    done = data.ensure_filesystem(str(device))
    assert len(done) == 1 and done[0].startswith(("formatted", "recreated", "repaired"))
    assert fs_type(device) == "ext4"
    assert subprocess.run(["e2fsck", "-n", "-f", str(device)], capture_output=True).returncode == 0


@needs_tools
def test_clean_partition_keeps_its_files_and_grows_into_its_partition(tmp_path: Path) -> None:
    device = tmp_path / "p3"
    ext4_with_file(device, 32)
    assert data.ensure_filesystem(str(device)) == []
    assert read_note(device) == "kept\n"
    with device.open("r+b") as handle:
        handle.truncate(96 * MIB)  # the partition was grown by ensure_table
    assert data.ensure_filesystem(str(device)) == ["grown to 96 MiB"]
    assert read_note(device) == "kept\n"
    size = data.parse_dumpe2fs(subprocess.run(["dumpe2fs", "-h", str(device)], capture_output=True,
                                              text=True, check=True).stdout)  # fmt: skip
    assert size == 96 * MIB
