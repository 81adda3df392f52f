#!/usr/bin/env python3
"""Boot the built image under QEMU ``virt`` and check it end to end (``make image-test``).

The image's own kernel, initramfs and ``cmdline.txt`` are taken from its boot partition; the
command line gets the ``virt`` serial console and ``appliance.test=1``, which only this test
passes. A copy of the image, grown to a bigger "card", boots twice in one QEMU run:

1. boot 1 grows /data, starts the supervisor; ``appliance-console.service`` prints
   ``APPLIANCE-READY``; ``appliance-image-test.service`` checks the root is read-only and /data
   writable, writes a token to /data and reboots;
2. boot 2 prints ``APPLIANCE-READY`` again and the token it reads back, then powers off.

On the host: both boots reached ready, no unit failed, /data grew and kept the token, the root
partition's bytes are unchanged. Any failure or the time limit stops the VM and prints the
console log's tail; the exit code is 1. Pure parts (marker parsing, verdict) are tested by
``tests/image/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTOR = 512
# The copy is grown to this size, so the first boot has to grow /data (image: 64 MiB of data).
CARD_MIB = 2048
# /data must be at least this big after the first boot, i.e. it was grown into the free space.
GROWN_DATA_MIB = 1024
TAIL_LINES = 60
MARKER = re.compile(r"(APPLIANCE-READY|APPLIANCE-NOT-READY|APPLIANCE-SERVICE|IMAGE-TEST)\b(.*)")
FATAL = ("Kernel panic", "You are in emergency mode", "Give root password for maintenance")


@dataclass
class Console:
    """What the serial console said, as far as the test cares."""

    ready: list[str] = field(default_factory=list)
    not_ready: list[str] = field(default_factory=list)
    services: list[str] = field(default_factory=list)
    boots: dict[int, dict[str, str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    done: bool = False


def parse_console(text: str) -> Console:
    """The markers of a serial log: ready lines, per-boot test results, failures."""
    console = Console()
    for line in text.splitlines():
        if any(fatal in line for fatal in FATAL):
            console.failures.append(line.strip())
        match = MARKER.search(line)
        if match is None:
            continue
        kind, rest = match[1], match[2].strip()
        if kind == "APPLIANCE-READY":
            console.ready.append(rest)
        elif kind == "APPLIANCE-NOT-READY":
            console.not_ready.append(rest)
        elif kind == "APPLIANCE-SERVICE":
            console.services.append(rest)
        elif rest.startswith("FAIL"):
            console.failures.append(rest)
        elif rest == "DONE":
            console.done = True
        elif rest.startswith("boot="):
            fields = _fields(rest)
            console.boots[int(fields["boot"])] = fields
    return console


def _fields(rest: str) -> dict[str, str]:
    """key=value pairs; a value in [brackets] may hold spaces."""
    return {key: value for key, value in re.findall(r"(\w+)=(\[[^\]]*\]|\S*)", rest)}


def verdict(console: Console) -> list[str]:
    """Every problem the console log shows; empty when both boots passed."""
    problems = list(console.failures)
    problems += [f"appliance not ready: {line}" for line in console.not_ready]
    # Ready with a parked service is `degraded`: something on the image is broken.
    problems += [
        f"a service is parked: {line}"
        for line in console.ready
        if "parked" in _fields(line).get("not_ready", "")
    ]
    if len(console.ready) < 2:
        problems.append(f"APPLIANCE-READY seen {len(console.ready)} times, expected one per boot")
    first, second = console.boots.get(1), console.boots.get(2)
    if first is None or second is None:
        return [*problems, "the self-test did not report both boots"]
    for boot in (first, second):
        if not boot.get("root", "").endswith(",ro"):
            problems.append(f"boot {boot['boot']}: root is not read-only ({boot.get('root')})")
        if boot.get("failed") != "[]":
            problems.append(f"boot {boot['boot']}: failed units {boot.get('failed')}")
    if int(first.get("data_mib", "0")) < GROWN_DATA_MIB:
        problems.append(f"/data did not grow to the card: {first.get('data_mib')} MiB")
    if not first.get("token") or first.get("token") != second.get("token"):
        problems.append("the file written to /data did not survive the reboot")
    if first.get("release") != second.get("release"):
        problems.append("/etc/appliance/release changed across the reboot")
    if not console.done:
        problems.append("the self-test did not finish")
    return problems


def qemu_cmdline(cmdline_txt: str) -> str:
    """The image's kernel command line for QEMU virt: its PL011 console and the test switch."""
    kept = [arg for arg in cmdline_txt.split() if not arg.startswith("console=")]
    return " ".join(["console=ttyAMA0,115200", *kept, "appliance.test=1"])


# --- I/O below ---------------------------------------------------------------------------------


def partitions(disk: Path) -> list[dict[str, int]]:
    """Start and size (sectors) of each partition, from sfdisk."""
    out = subprocess.run(
        ["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True
    ).stdout
    return [
        {"start": int(p["start"]), "size": int(p["size"])}
        for p in json.loads(out)["partitiontable"]["partitions"]
    ]


def read_boot_file(disk: Path, offset: int, pattern: str) -> tuple[str, bytes]:
    """The newest file on the FAT boot partition whose name matches pattern."""
    image = f"{disk}@@{offset}"
    names = subprocess.run(
        ["mdir", "-b", "-i", image, "::"], capture_output=True, text=True, check=True
    ).stdout.split()
    matches = sorted(n.removeprefix("::/") for n in names if re.search(pattern, n))
    if not matches:
        raise FileNotFoundError(f"no {pattern} on the boot partition")
    name = matches[-1]
    data = subprocess.run(
        ["mtype", "-i", image, f"::{name}"], capture_output=True, check=True
    ).stdout
    return name, data


def partition_digest(disk: Path, part: dict[str, int]) -> str:
    """sha256 of a partition's bytes."""
    digest = hashlib.sha256()
    with disk.open("rb") as handle:
        handle.seek(part["start"] * SECTOR)
        left = part["size"] * SECTOR
        while left:
            chunk = handle.read(min(left, 1 << 20))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last lines of the console log, for a failure report."""
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def boot_and_check(image: Path, work: Path, timeout_s: float) -> int:
    """Run the two-boot test on a copy of image; 0 when it passes."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    disk = work / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True)
    with disk.open("r+b") as handle:
        handle.truncate(CARD_MIB * 1024 * 1024)
    parts = partitions(disk)
    boot_offset = parts[0]["start"] * SECTOR
    kernel_name, kernel = read_boot_file(disk, boot_offset, r"vmlinuz-")
    initrd_name, initrd = read_boot_file(disk, boot_offset, r"initrd\.img-")
    _, cmdline = read_boot_file(disk, boot_offset, r"^(::/)?cmdline\.txt$")
    (work / "vmlinuz").write_bytes(kernel)
    (work / "initrd").write_bytes(initrd)
    append = qemu_cmdline(cmdline.decode())
    print(f"==> kernel {kernel_name}, initramfs {initrd_name}")
    print(f"    command line: {append}")
    root_before = partition_digest(disk, parts[1])
    log = work / "console.log"
    log.write_bytes(b"")
    qemu = [
        os.environ.get("QEMU", "qemu-system-aarch64"),
        "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "1024",
        "-kernel", str(work / "vmlinuz"), "-initrd", str(work / "initrd"), "-append", append,
        "-drive", f"file={disk},format=raw,if=none,id=hd0",
        "-device", "virtio-blk-device,drive=hd0",
        "-netdev", "user,id=n0", "-device", "virtio-net-device,netdev=n0",
        "-display", "none", "-monitor", "none", "-serial", f"file:{log}",
    ]  # fmt: skip
    print(f"==> booting {image.name} twice under QEMU virt (limit {timeout_s:.0f} s)")
    started = time.monotonic()
    process = subprocess.Popen(qemu, stdin=subprocess.DEVNULL)
    seen_ready = 0
    ready_at: list[float] = []
    limit: list[str] = []
    try:
        while True:
            console = parse_console(log.read_text(encoding="utf-8", errors="replace"))
            while seen_ready < len(console.ready):
                ready_at.append(time.monotonic() - started)
                print(f"    boot {seen_ready + 1}: APPLIANCE-READY {console.ready[seen_ready]} "
                      f"at {ready_at[-1]:.0f} s")  # fmt: skip
                seen_ready += 1
            if console.failures or console.not_ready or process.poll() is not None:
                break
            if time.monotonic() - started > timeout_s:
                limit.append(f"time limit of {timeout_s:.0f} s reached")
                break
            time.sleep(1)
        if console.done and process.poll() is None:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    elapsed = time.monotonic() - started
    console = parse_console(log.read_text(encoding="utf-8", errors="replace"))
    problems = limit + verdict(console)
    if partition_digest(disk, parts[1]) != root_before:
        problems.append("the root partition's bytes changed")
    for line in dict.fromkeys(console.services):
        print(f"    service not ready: {line}")
    for number, boot in sorted(console.boots.items()):
        print(f"    boot {number}: " + " ".join(f"{k}={v}" for k, v in boot.items() if k != "boot"))
    if problems:
        print(f"--- last {TAIL_LINES} lines of {log} ---\n{tail(log)}\n---")
        for problem in problems:
            print(f"image-test FAILED: {problem}")
        return 1
    times = ", ".join(f"{t:.0f} s" for t in ready_at)
    print(f"==> image-test passed in {elapsed:.0f} s; QEMU start to APPLIANCE-READY: {times}")
    print("    root read-only and unchanged; /data grown, written and kept across the reboot")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Boot-test an image; exit 1 on any failure."""
    parser = argparse.ArgumentParser(description="Boot-test the appliance image under QEMU.")
    parser.add_argument("image", type=Path)
    parser.add_argument("--work", type=Path, default=REPO / "build" / "image-test")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for both boots")
    args = parser.parse_args(argv)
    if not args.image.exists():
        print(f"image-test: {args.image} does not exist; run `make image` first", file=sys.stderr)
        return 1
    return boot_and_check(args.image, args.work, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
