"""The image recipe and the build's pure parts: layout, mmdebstrap call, release record."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.image.conftest import REPO, load_script

build = load_script(REPO / "image" / "build.py", "image_build")
RECIPE = build.load_recipe(REPO / "image" / "recipe.toml")
MIB = 1024 * 1024


def test_recipe_installs_kernel_firmware_and_the_runtime() -> None:
    packages = set(RECIPE.packages)
    assert RECIPE.kernel_package in packages
    for needed in ("raspi-firmware", "firmware-brcm80211", "network-manager", "systemd-sysv",
                   "python3", "python3-venv", "fdisk", "e2fsprogs", "login"):  # fmt: skip
        assert needed in packages, needed
    assert RECIPE.arch == "arm64"


def test_kernel_is_a_setting_and_pi5_is_documented() -> None:
    text = (REPO / "image" / "recipe.toml").read_text()
    assert 'package = "linux-image-arm64"' in text
    assert "linux-image-rpi-2712" in text  # the Pi 5 swap is spelled out where it is made


def test_python_of_the_suite_is_the_wheels_python() -> None:
    assert {"bookworm": "3.11", "trixie": "3.13"}[RECIPE.suite] == RECIPE.python
    assert build.python_tag(RECIPE.python) == "cp" + RECIPE.python.replace(".", "")


def test_lock_pins_every_runtime_dependency_exactly() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    needed = {
        re.split(r"[<>=!;\[ ]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]
    }
    pins = {}
    for line in (REPO / RECIPE.lock).read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not pinned exactly: {line}"
            pins[name.lower()] = version
    assert needed <= set(pins), needed - set(pins)


def test_pip_platforms_cover_every_manylinux_up_to_the_c_library() -> None:
    tags = build.pip_platforms("2.41")
    assert "manylinux2014_aarch64" in tags
    assert "manylinux_2_17_aarch64" in tags and "manylinux_2_41_aarch64" in tags
    assert "manylinux_2_42_aarch64" not in tags


def test_apt_sources_include_updates_and_security() -> None:
    sources = build.apt_sources(RECIPE)
    assert [line.split()[2] for line in sources] == [
        RECIPE.suite,
        f"{RECIPE.suite}-updates",
        f"{RECIPE.suite}-security",
    ]
    assert all(line.endswith("non-free-firmware") for line in sources)


def test_mmdebstrap_builds_the_initramfs_once_and_keeps_the_cache(tmp_path: Path) -> None:
    command = build.mmdebstrap_command(
        RECIPE, tmp_path / "root", tmp_path / "apt", REPO / "overlays"
    )
    text = "\n".join(command)
    assert command[0] == "mmdebstrap" and "--arch=arm64" in command
    assert "dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs" in text
    assert text.count("update-initramfs -c") == 1
    assert (
        f"sync-in {tmp_path / 'apt'}" in text
        and f"sync-out /var/cache/apt/archives {tmp_path / 'apt'}" in text
    )
    include = next(arg for arg in command if arg.startswith("--include="))
    assert include.removeprefix("--include=").split(",") == list(RECIPE.packages)


def test_base_key_changes_with_packages_and_initramfs_files() -> None:
    files = {"etc/initramfs-tools/modules": b"squashfs\n"}
    key = build.base_key(RECIPE, files)
    assert key == build.base_key(RECIPE, dict(files))
    assert key != build.base_key(RECIPE, {"etc/initramfs-tools/modules": b"erofs\n"})
    other = build.Recipe(**{**RECIPE.__dict__, "include": (*RECIPE.include, "vim")})
    assert key != build.base_key(other, files)
    assert key.startswith(RECIPE.suite + "-")


@given(root_bytes=st.integers(min_value=1, max_value=8 * 1024 * MIB))
def test_layout_is_aligned_ordered_and_fits_the_root(root_bytes: int) -> None:
    layout = build.partition_layout(RECIPE, root_bytes)
    starts = (layout.boot_start, layout.root_start, layout.data_start)
    assert all(start % RECIPE.align_mib == 0 for start in starts)
    assert layout.boot_start + layout.boot_size <= layout.root_start
    assert layout.root_start + layout.root_size <= layout.data_start
    assert layout.root_size * MIB >= root_bytes + RECIPE.root_slack_mib * MIB
    assert layout.disk_mib == layout.data_start + RECIPE.data_mib


@pytest.mark.skipif(shutil.which("sfdisk") is None, reason="sfdisk (fdisk) is not installed")
def test_sfdisk_script_makes_the_table_cmdline_and_fstab_expect(tmp_path: Path) -> None:
    layout = build.partition_layout(RECIPE, 300 * MIB)
    disk = tmp_path / "disk.img"
    with disk.open("wb") as handle:
        handle.truncate(layout.disk_mib * MIB)
    subprocess.run(["sfdisk", "-q", str(disk)], input=build.sfdisk_script(layout, RECIPE.disk_id),
                   text=True, check=True)  # fmt: skip
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]  # fmt: skip
    assert table["label"] == "dos" and table["id"] == f"0x{RECIPE.disk_id}"
    parts = table["partitions"]
    assert [p["type"] for p in parts] == ["c", "83", "83"]
    assert parts[0].get("bootable") is True
    assert [p["start"] * 512 // MIB for p in parts] == [
        layout.boot_start,
        layout.root_start,
        layout.data_start,
    ]


NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.+-", min_size=1, max_size=12)


@given(
    debian=st.dictionaries(NAMES, NAMES, max_size=5),
    python=st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=5),
)
def test_release_record_is_toml_that_round_trips(
    debian: dict[str, str], python: dict[str, str]
) -> None:
    info = {"image": "appliance-0.1.0-arm64", "image_version": "0.1.0", "source_date_epoch": 7}
    parsed = tomllib.loads(build.release_toml(info, debian, python))
    assert parsed["image_version"] == "0.1.0" and parsed["source_date_epoch"] == 7
    assert parsed["debian_packages"] == debian
    assert parsed["python_packages"] == python


def test_dpkg_and_dist_info_listings_are_parsed_sorted() -> None:
    assert build.parse_dpkg_list("zstd\t1.5\nbash\t5.2-1\n\n") == {"bash": "5.2-1", "zstd": "1.5"}
    names = ["pi_appliance-0.1.0.dist-info", "pydantic_core-2.50.5.dist-info", "numpy", "x.pth"]
    assert build.parse_dist_infos(names) == {"pi-appliance": "0.1.0", "pydantic-core": "2.50.5"}


def test_image_name_carries_the_project_version() -> None:
    version = build.project_version(REPO)
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", version)
    assert build.image_name(RECIPE, version) == f"appliance-{version}-arm64"


def test_built_in_model_files_exist_and_match_the_default_config() -> None:
    from appliance.config import EngineConfig

    for name in build.MODEL_FILES:
        assert (REPO / "models" / "minilm" / name).is_file(), name
    default = EngineConfig().model_path
    assert default.parent == Path("/opt/appliance/models/minilm")
    assert default.name in build.MODEL_FILES


def test_every_data_file_of_the_packages_is_in_the_wheel() -> None:
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    for package in ("appliance", "provisioning"):
        for path in sorted((REPO / package).rglob("*")):
            if path.is_file() and path.suffix not in {".py", ".pyc"}:
                owner = ".".join(path.parent.relative_to(REPO).parts)
                assert path.name in package_data.get(owner, []), f"{owner}: {path.name}"
