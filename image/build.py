#!/usr/bin/env python3
"""Build the appliance's Raspberry Pi image, build/appliance-<version>-arm64.img (DESIGN §12).

Stages, each announced on standard output as it starts and timed when it ends:

1. host: ``binfmt_misc`` mounted and qemu-user registered for arm64 (``arch-test``);
2. wheels: the project's wheel from the checkout and the pinned aarch64 wheels of its
   dependencies (``image/wheels.lock``) for the image's Python, from the cache or PyPI;
3. base: Debian's arm64 root file system from ``mmdebstrap`` (kernel, firmware, systemd,
   NetworkManager, Python), with the initramfs built once; cached under the recipe's key;
4. root: ``overlays/`` laid verbatim, the appliance user, units enabled, the virtual
   environment under ``/opt/appliance/venv``, the built-in model, ``/etc/appliance/release``;
5. disk: FAT boot, squashfs root and ext4 data partitions, joined under an MBR with a fixed
   disk id, without loop devices.

Runs as root on the build machine (Debian, x86_64 or arm64). Downloads go to a cache outside the
clone (``APPLIANCE_IMAGE_CACHE``, default ``/var/cache/appliance-image``) so a second build,
or CI on a fresh clone, needs no network. The pure parts (recipe, layout, release record) are
functions tested by ``tests/image/``; this module must never be imported by the appliance.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path("/var/cache/appliance-image")
MIB = 1024 * 1024
# Files of overlays/ the base stage depends on: laid before the kernel so the initramfs has them.
BASE_OVERLAYS = ("etc/initramfs-tools",)
# Built-in model files copied to /opt/appliance/models/minilm (config.py's default model_path).
MODEL_FILES = ("minilm-l6-v2-int8.json", "minilm-l6-v2-int8.tflite", "tokenizer.json")
# Units the image starts at boot; appliance-image-test.service only acts with appliance.test=1.
# appliance-data.service comes from fstab (x-systemd.requires=), appliance-error-led.service
# from OnFailure= only.
ENABLED_UNITS = (
    "appliance.service",
    "appliance-console.service",
    "appliance-setup-import.service",
    "appliance-image-test.service",
)
# Mount points of overlays/etc/fstab that Debian does not make: a read-only root cannot get
# them at boot.
MOUNT_POINTS = ("data",)
# Symlinks a read-only root needs, which overlays/ (plain files) cannot carry: link -> target.
ROOT_SYMLINKS = {"etc/resolv.conf": "../run/NetworkManager/resolv.conf"}
# Timers that write to a root that is read-only or make no sense on an immutable image.
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer")
CHROOT_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_NO_CACHE_DIR": "1",
    # No bytecode written as a side effect of imports (a .pth of setuptools runs at every
    # start): compileall below writes all of it, hash-based.
    "PYTHONDONTWRITEBYTECODE": "1",
}


@dataclass(frozen=True)
class Recipe:
    """The image recipe (image/recipe.toml) as typed values."""

    name: str
    arch: str
    boards: tuple[str, ...]
    suite: str
    mirror: str
    security_mirror: str
    components: tuple[str, ...]
    python: str
    glibc: str
    kernel_package: str
    firmware: tuple[str, ...]
    include: tuple[str, ...]
    lock: str
    disk_id: str
    align_mib: int
    boot_mib: int
    root_fs: str
    root_slack_mib: int
    data_mib: int

    @property
    def packages(self) -> tuple[str, ...]:
        """Every package mmdebstrap installs: the kernel, its firmware and the list."""
        return (self.kernel_package, *self.firmware, *self.include)


@dataclass(frozen=True)
class Layout:
    """Where each partition starts and how long it is, in MiB from the start of the disk."""

    boot_start: int
    boot_size: int
    root_start: int
    root_size: int
    data_start: int
    data_size: int

    @property
    def disk_mib(self) -> int:
        """Size of the whole disk image."""
        return self.data_start + self.data_size


def load_recipe(path: Path) -> Recipe:
    """Read the recipe TOML; a missing key raises KeyError naming it."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    image, debian, parts = data["image"], data["debian"], data["partitions"]
    return Recipe(
        name=image["name"],
        arch=image["arch"],
        boards=tuple(image["boards"]),
        suite=debian["suite"],
        mirror=debian["mirror"],
        security_mirror=debian["security_mirror"],
        components=tuple(debian["components"]),
        python=debian["python"],
        glibc=debian["glibc"],
        kernel_package=data["kernel"]["package"],
        firmware=tuple(data["kernel"]["firmware"]),
        include=tuple(data["packages"]["include"]),
        lock=data["python"]["lock"],
        disk_id=parts["disk_id"],
        align_mib=int(parts["align_mib"]),
        boot_mib=int(parts["boot_mib"]),
        root_fs=parts["root_fs"],
        root_slack_mib=int(parts["root_slack_mib"]),
        data_mib=int(parts["data_mib"]),
    )


def apt_sources(recipe: Recipe) -> list[str]:
    """The one-line apt sources: the suite, its -updates and its security archive."""
    comps = " ".join(recipe.components)
    return [
        f"deb {recipe.mirror} {recipe.suite} {comps}",
        f"deb {recipe.mirror} {recipe.suite}-updates {comps}",
        f"deb {recipe.security_mirror} {recipe.suite}-security {comps}",
    ]


def pip_platforms(glibc: str) -> list[str]:
    """Every manylinux aarch64 tag a wheel for this C library may carry (PEP 600, newest last)."""
    major, minor = (int(part) for part in glibc.split("."))
    tags = ["manylinux2014_aarch64"]
    tags += [f"manylinux_{major}_{m}_aarch64" for m in range(17, minor + 1)]
    return tags


def python_tag(python: str) -> str:
    """The CPython tag of a version, e.g. cp313 for 3.13."""
    major, minor = python.split(".")[:2]
    return f"cp{major}{minor}"


def base_key(recipe: Recipe, base_files: Mapping[str, bytes]) -> str:
    """Cache key of the base root file system: everything that decides its content."""
    digest = hashlib.sha256()
    for part in (recipe.arch, *apt_sources(recipe), *recipe.packages):
        digest.update(part.encode() + b"\0")
    for name in sorted(base_files):
        digest.update(name.encode() + b"\0" + base_files[name] + b"\0")
    return f"{recipe.suite}-{digest.hexdigest()[:16]}"


def mmdebstrap_command(recipe: Recipe, target: Path, apt_cache: Path, overlays: Path) -> list[str]:
    """The mmdebstrap call for the base: kernel and packages, the initramfs built exactly once."""
    lay_base = " ".join(BASE_OVERLAYS)
    return [
        "mmdebstrap",
        f"--arch={recipe.arch}",
        "--variant=apt",
        "--include=" + ",".join(recipe.packages),
        '--aptopt=Acquire::Retries "3"',
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        # keep the essential set's .debs too, so the cache below holds every package
        "--skip=essential/unlink",
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
        f"--setup-hook=sync-in {apt_cache} /var/cache/apt/archives/",
        f'--essential-hook=tar -C {overlays} -c {lay_base} | tar -C "$1" -x --no-same-owner',
        # Every kernel and initramfs-tools trigger would rebuild the initramfs under emulation
        # (minutes each): divert update-initramfs while apt runs, build it once at the end.
        '--essential-hook=chroot "$1" dpkg-divert --quiet --local --rename '
        '--add /usr/sbin/update-initramfs && ln -s /bin/true "$1"/usr/sbin/update-initramfs',
        f"--customize-hook=sync-out /var/cache/apt/archives {apt_cache}",
        '--customize-hook=rm "$1"/usr/sbin/update-initramfs && chroot "$1" dpkg-divert '
        "--quiet --local --rename --remove /usr/sbin/update-initramfs",
        '--customize-hook=for k in "$1"/lib/modules/*; do '
        'chroot "$1" update-initramfs -c -k "${k##*/}" || exit 1; done',
        recipe.suite,
        str(target),
        *apt_sources(recipe),
    ]


def partition_layout(recipe: Recipe, root_bytes: int) -> Layout:
    """Partition starts and sizes: boot, root sized to its content plus slack, then data."""
    align = recipe.align_mib
    root_mib = -(-root_bytes // MIB) + recipe.root_slack_mib
    root_mib = -(-root_mib // align) * align
    boot_start = align
    root_start = boot_start + recipe.boot_mib
    data_start = root_start + root_mib
    return Layout(boot_start, recipe.boot_mib, root_start, root_mib, data_start, recipe.data_mib)


def sfdisk_script(layout: Layout, disk_id: str) -> str:
    """The sfdisk(8) input: MBR, FAT32 LBA boot (bootable), Linux root, Linux data."""
    return (
        "label: dos\n"
        f"label-id: 0x{disk_id}\n"
        f"start={layout.boot_start}MiB, size={layout.boot_size}MiB, type=c, bootable\n"
        f"start={layout.root_start}MiB, size={layout.root_size}MiB, type=83\n"
        f"start={layout.data_start}MiB, size={layout.data_size}MiB, type=83\n"
    )


def parse_dpkg_list(text: str) -> dict[str, str]:
    """Package → version from tab-separated ``dpkg-query -W`` output."""
    packages: dict[str, str] = {}
    for line in text.splitlines():
        if "\t" in line:
            name, version = line.split("\t", 1)
            packages[name] = version
    return dict(sorted(packages.items()))


def parse_dist_infos(names: Sequence[str]) -> dict[str, str]:
    """Distribution → version from ``<name>-<version>.dist-info`` directory names."""
    found: dict[str, str] = {}
    for name in names:
        match = re.fullmatch(r"(.+?)-([^-]+)\.dist-info", name)
        if match:
            found[match[1].lower().replace("_", "-")] = match[2]
    return dict(sorted(found.items()))


def _toml_str(value: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, plus DEL, which JSON leaves alone."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def release_toml(
    info: Mapping[str, str | int], debian: Mapping[str, str], python: Mapping[str, str]
) -> str:
    """The release record: image and project versions, then every package with its version."""
    lines = [
        "# What this image is: written by image/build.py (DESIGN §12), never edited on a device.",
        "# Two builds from the same inputs give the same record; see image/README.md.",
    ]
    for key, value in info.items():
        lines.append(
            f"{key} = {value}" if isinstance(value, int) else f"{key} = {_toml_str(value)}"
        )
    lines.append("\n[debian_packages]")
    lines += [f"{_toml_str(name)} = {_toml_str(version)}" for name, version in debian.items()]
    lines.append("\n[python_packages]")
    lines += [f"{_toml_str(name)} = {_toml_str(version)}" for name, version in python.items()]
    return "\n".join(lines) + "\n"


def project_version(repo: Path) -> str:
    """``appliance.__version__`` read from the source, without importing the package."""
    text = (repo / "appliance" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    if match is None:
        raise ValueError("appliance/__init__.py has no __version__")
    return match[1]


def image_name(recipe: Recipe, version: str) -> str:
    """The output's file name stem: appliance-<version>-arm64."""
    return f"{recipe.name}-{version}-{recipe.arch}"


# --- I/O below: commands, mounts, copies -----------------------------------------------------


class BuildError(Exception):
    """A build step failed; the message says which and what to do."""


class Progress:
    """Numbered, timed step lines on standard output."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.number = 0
        self.started = time.monotonic()

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        """Announce a step, then report how long it took."""
        self.number += 1
        print(f"==> [{self.number}/{self.total}] {title}", flush=True)
        t0 = time.monotonic()
        yield
        elapsed = time.monotonic() - t0
        print(f"    done in {elapsed:.0f} s (total {time.monotonic() - self.started:.0f} s)")

    def note(self, text: str) -> None:
        """One indented detail line under the current step."""
        print(f"    {text}", flush=True)


def run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    quiet: bool = False,
    chroot_env: bool = False,
) -> str:
    """Run a command, return its standard output; raise BuildError when it fails.

    With chroot_env the command gets a minimal environment plus env: nothing of the build
    machine's (PIP_* settings, locale, proxies) leaks into commands run inside the image.
    """
    base = CHROOT_ENV if chroot_env else os.environ
    result = subprocess.run(
        list(cmd),
        env={**base, **(env or {})},
        input=input,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL if quiet else None,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BuildError(f"{cmd[0]} failed with exit code {result.returncode}: {' '.join(cmd)}")
    return result.stdout


def run_shown(cmd: Sequence[str], *, env: Mapping[str, str] | None = None) -> None:
    """Run a command whose own progress output goes straight to the terminal."""
    result = subprocess.run(list(cmd), env={**os.environ, **(env or {})}, check=False)
    if result.returncode != 0:
        raise BuildError(f"{cmd[0]} failed with exit code {result.returncode}")


def in_root(root: Path, cmd: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """Run a command inside the image's root (chroot, qemu-user), in a minimal environment."""
    return run(["chroot", str(root), *cmd], env=env, chroot_env=True)


def prepare_host(progress: Progress) -> None:
    """Mount binfmt_misc and register qemu-aarch64 so arm64 maintainer scripts run here."""
    missing = [
        tool
        for tool in ("mmdebstrap", "mksquashfs", "mkfs.vfat", "mcopy", "sfdisk", "mkfs.ext4")
        if shutil.which(tool) is None
    ]
    if missing:
        raise BuildError(
            f"missing tools: {' '.join(missing)}; install the packages listed in image/README.md"
        )
    if os.uname().machine != "aarch64":
        binfmt = Path("/proc/sys/fs/binfmt_misc")
        if not (binfmt / "register").exists():
            run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)])
        if not (binfmt / "qemu-aarch64").exists() and shutil.which("update-binfmts"):
            run(["update-binfmts", "--enable", "qemu-aarch64"])
        progress.note(run(["arch-test", "arm64"]).strip())


def source_date_epoch(repo: Path) -> int:
    """SOURCE_DATE_EPOCH from the environment, else the last commit's time, else 0."""
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    result = subprocess.run(
        ["git", "-C", str(repo), "log", "-1", "--format=%ct"],
        capture_output=True,
        text=True,
        check=False,
    )
    return int(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip() else 0


def git_commit(repo: Path) -> str:
    """The checkout's commit, with -dirty when the working tree differs from it."""
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    if head.returncode != 0:
        return "unknown"
    dirty = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


def build_wheels(recipe: Recipe, cache: Path, work: Path, progress: Progress) -> Path:
    """Collect the project's wheel and its dependencies' aarch64 wheels into work/wheels."""
    out = work / "wheels"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    build_cache = cache / "wheels" / "build"
    build_cache.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    # setuptools>=77 for the project's build backend: offline from the cache when it is there.
    if not list(build_cache.glob("setuptools-*.whl")):
        run([*pip, "download", "--quiet", "--dest", str(build_cache), "setuptools>=77"])
    run(
        [
            *pip,
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--find-links",
            str(build_cache),
            "--wheel-dir",
            str(out),
            str(REPO),
        ],
        env={"SOURCE_DATE_EPOCH": os.environ["SOURCE_DATE_EPOCH"]},
    )
    own = next(out.glob("pi_appliance-*.whl"))
    target_cache = cache / "wheels" / python_tag(recipe.python)
    target_cache.mkdir(parents=True, exist_ok=True)
    download = [
        *pip, "download", "--quiet", "--dest", str(target_cache), "--only-binary=:all:",
        "--python-version", recipe.python, "--implementation", "cp",
        *(arg for tag in pip_platforms(recipe.glibc) for arg in ("--platform", tag)),
        "--constraint", str(REPO / recipe.lock), str(own),
    ]  # fmt: skip
    try:
        run([*download, "--no-index", "--find-links", str(target_cache)], quiet=True)
        progress.note(f"aarch64 wheels for Python {recipe.python}: all in the cache")
    except BuildError:
        progress.note(f"downloading aarch64 wheels for Python {recipe.python} from PyPI")
        try:
            run(download)
        except BuildError as err:
            raise BuildError(
                f"a dependency has no manylinux aarch64 wheel for Python {recipe.python} "
                f"(glibc {recipe.glibc}) at the version in {recipe.lock}; see pip's message above"
            ) from err
    for wheel in target_cache.glob("*.whl"):
        if wheel.name.startswith("pi_appliance-"):
            # `pip download` of the project's own wheel leaves a copy in the cache; a stale
            # one from an earlier checkout of the same version must never replace this build's.
            wheel.unlink()
            continue
        shutil.copy2(wheel, out / wheel.name)
    progress.note(f"{len(list(out.glob('*.whl')))} wheels, project wheel {own.name}")
    return out


def build_base(recipe: Recipe, cache: Path, progress: Progress) -> Path:
    """The Debian root file system for the recipe: from the cache, else built by mmdebstrap."""
    overlays = REPO / "overlays"
    base_files = {
        str(path.relative_to(overlays)): path.read_bytes()
        for top in BASE_OVERLAYS
        for path in sorted((overlays / top).rglob("*"))
        if path.is_file()
    }
    key = base_key(recipe, base_files)
    base = cache / "base" / key
    if (base / "etc" / "os-release").exists():
        progress.note(f"cached base root file system {base}")
        return base
    apt_cache = cache / "apt" / recipe.suite
    apt_cache.mkdir(parents=True, exist_ok=True)
    partial = base.with_name(key + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.parent.mkdir(parents=True, exist_ok=True)
    cached = len(list(apt_cache.glob("*.deb")))
    progress.note(f"mmdebstrap {recipe.suite} arm64 ({cached} packages cached); 10-17 min")
    run_shown(mmdebstrap_command(recipe, partial, apt_cache, overlays))
    partial.rename(base)
    return base


@contextlib.contextmanager
def chroot_mounts(root: Path) -> Iterator[None]:
    """/proc, /sys and /dev inside the root while commands run in it."""
    mounts = [
        (["-t", "proc", "proc"], root / "proc"),
        (["-t", "sysfs", "sysfs"], root / "sys"),
        (["--bind", "/dev"], root / "dev"),
    ]
    done: list[Path] = []
    try:
        for args, where in mounts:
            run(["mount", *args, str(where)])
            done.append(where)
        yield
    finally:
        for where in reversed(done):
            subprocess.run(["umount", "-l", str(where)], check=False)


def lay_overlays(overlays: Path, root: Path) -> list[str]:
    """Copy overlays/ over the root verbatim (owner root, 0755 if executable else 0644)."""
    laid: list[str] = []
    for source in sorted(overlays.rglob("*")):
        relative = source.relative_to(overlays)
        if relative.as_posix() == "README.md" or not source.is_file():
            continue
        target = root / relative
        for parent in reversed(target.relative_to(root).parents[:-1]):
            directory = root / parent
            if not directory.exists():
                directory.mkdir(mode=0o755)
                os.chown(directory, 0, 0)
        if target.is_symlink() or target.exists():
            target.unlink()
        shutil.copyfile(source, target)
        os.chown(target, 0, 0)
        os.chmod(target, 0o755 if os.access(source, os.X_OK) else 0o644)
        laid.append(relative.as_posix())
    return laid


def customize_root(
    recipe: Recipe, base: Path, wheels: Path, work: Path, epoch: int, progress: Progress
) -> tuple[Path, str]:
    """A copy of the base with the appliance laid in; returns the root and its release record."""
    root = work / "rootfs"
    if root.exists():
        run(["rm", "-rf", "--one-file-system", str(root)])
    run(["cp", "-a", str(base), str(root)])
    laid = lay_overlays(REPO / "overlays", root)
    progress.note(f"overlays: {len(laid)} files")
    for point in MOUNT_POINTS:
        (root / point).mkdir(mode=0o755, exist_ok=True)
    for link, target in ROOT_SYMLINKS.items():
        (root / link).unlink(missing_ok=True)
        (root / link).symlink_to(target)
    fleet_keys = os.environ.get("APPLIANCE_FLEET_KEYS")
    if fleet_keys:
        for key in sorted(Path(fleet_keys).glob("*.pub")):
            shutil.copyfile(key, root / "etc" / "appliance" / "fleet-keys" / key.name)
            os.chmod(root / "etc" / "appliance" / "fleet-keys" / key.name, 0o644)
            progress.note(f"fleet key {key.name}")
    version = project_version(REPO)
    epoch_env = {"SOURCE_DATE_EPOCH": str(epoch)}
    with chroot_mounts(root):
        in_root(root, ["systemd-sysusers"])
        in_root(root, ["systemctl", "enable", *ENABLED_UNITS])
        in_root(root, ["systemctl", "mask", *MASKED_UNITS])
        progress.note("virtual environment /opt/appliance/venv (pip under qemu-user)")
        stage = root / "tmp" / "wheels"
        shutil.copytree(wheels, stage)
        own = next(stage.glob("pi_appliance-*.whl")).name
        in_root(root, ["python3", "-m", "venv", "/opt/appliance/venv"], env=epoch_env)
        in_root(
            root,
            ["/opt/appliance/venv/bin/pip", "install", "--quiet", "--no-index", "--no-compile",
             "--find-links", "/tmp/wheels", "--constraint",
             f"/tmp/wheels/{Path(recipe.lock).name}", f"/tmp/wheels/{own}"],
            env=epoch_env,
        )  # fmt: skip
        shutil.rmtree(stage)
        # The root is read-only at run time, so bytecode is compiled now, on both CPUs (pip
        # compiles on one); SOURCE_DATE_EPOCH makes the .pyc files hash-based, reproducible.
        in_root(
            root,
            ["/opt/appliance/venv/bin/python", "-m", "compileall", "-q", "-f", "-j", "0",
             "/opt/appliance/venv/lib"],
            env=epoch_env,
        )  # fmt: skip
        dpkg = in_root(root, ["dpkg-query", "-W", "-f", "${Package}\t${Version}\n"])
    models = root / "opt" / "appliance" / "models" / "minilm"
    models.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copyfile(REPO / "models" / "minilm" / name, models / name)
        os.chmod(models / name, 0o644)
    site = next((root / "opt" / "appliance" / "venv" / "lib").glob("python3*/site-packages"))
    kernels = sorted(p.name for p in (root / "lib" / "modules").iterdir())
    info: dict[str, str | int] = {
        "image": image_name(recipe, version),
        "image_version": version,
        "appliance_version": version,
        "git_commit": git_commit(REPO),
        "source_date_epoch": epoch,
        "suite": recipe.suite,
        "kernel": ",".join(kernels),
        "python": recipe.python,
        "boards": ", ".join(recipe.boards),
    }
    release = release_toml(
        info, parse_dpkg_list(dpkg), parse_dist_infos([p.name for p in site.iterdir()])
    )
    (root / "etc" / "appliance" / "release").write_text(release, encoding="utf-8")
    # A read-only root: an empty machine-id makes systemd use a fresh one per boot (tmpfs).
    (root / "etc" / "machine-id").write_text("", encoding="utf-8")
    with contextlib.suppress(FileNotFoundError):
        (root / "var" / "lib" / "dbus" / "machine-id").unlink()
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "var/log", "tmp"):
        for entry in (root / junk).glob("*"):
            if entry.is_file() or entry.is_symlink():
                entry.unlink()
    return root, release


def make_disk(
    recipe: Recipe, root: Path, work: Path, output: Path, epoch: int, progress: Progress
) -> Layout:
    """Boot, root and data file systems as files, then the disk image: no loop devices."""
    boot_dir = work / "bootfs"
    shutil.rmtree(boot_dir, ignore_errors=True)
    shutil.move(root / "boot" / "firmware", boot_dir)
    (root / "boot" / "firmware").mkdir(mode=0o755)
    env = {"SOURCE_DATE_EPOCH": str(epoch), "E2FSPROGS_FAKE_TIME": str(epoch)}
    run(["find", str(boot_dir), "-exec", "touch", "-h", "-d", f"@{epoch}", "{}", "+"])
    boot_img, root_img, data_img = work / "boot.vfat", work / "root.squashfs", work / "data.ext4"
    for stale in (boot_img, root_img, data_img):
        stale.unlink(missing_ok=True)
    run(["mkfs.vfat", "-C", "-F", "32", "-n", "BOOT", "-i", recipe.disk_id, "-S", "512",
         str(boot_img), str(recipe.boot_mib * 1024)])  # fmt: skip
    entries = sorted(str(p) for p in boot_dir.iterdir())
    run(["mcopy", "-s", "-p", "-m", "-i", str(boot_img), *entries, "::"])
    progress.note(f"boot: {len(entries)} entries from raspi-firmware and overlays/boot/firmware")
    run(["mksquashfs", str(root), str(root_img), "-comp", "zstd", "-Xcompression-level", "15",
         "-noappend", "-quiet", "-no-progress"],
        env=env)  # fmt: skip
    progress.note(f"root: squashfs {root_img.stat().st_size / MIB:.0f} MiB")
    data_uuid = f"{recipe.disk_id}-0000-4000-8000-000000000003"
    run(["mkfs.ext4", "-q", "-F", "-L", "data", "-U", data_uuid, "-E", f"hash_seed={data_uuid}",
         str(data_img), f"{recipe.data_mib}M"], env=env)  # fmt: skip
    layout = partition_layout(recipe, root_img.stat().st_size)
    partial = output.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    with partial.open("wb") as disk:
        disk.truncate(layout.disk_mib * MIB)
    run(["sfdisk", "-q", str(partial)], input=sfdisk_script(layout, recipe.disk_id))
    for image, start in ((boot_img, layout.boot_start), (root_img, layout.root_start),
                         (data_img, layout.data_start)):  # fmt: skip
        run(["dd", f"if={image}", f"of={partial}", "bs=1M", f"seek={start}",
             "conv=notrunc,sparse", "status=none"])  # fmt: skip
    partial.rename(output)
    return layout


def main(argv: Sequence[str] | None = None) -> int:
    """Build the image; exit 1 with a one-line reason on failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--recipe", type=Path, default=REPO / "image" / "recipe.toml")
    parser.add_argument("--out", type=Path, default=REPO / "build")
    parser.add_argument("--keep-work", action="store_true", help="keep build/image-work")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("image/build.py must run as root (mmdebstrap, chroot, mounts)", file=sys.stderr)
        return 1
    recipe = load_recipe(args.recipe)
    cache = Path(os.environ.get("APPLIANCE_IMAGE_CACHE", str(DEFAULT_CACHE)))
    epoch = source_date_epoch(REPO)
    os.environ["SOURCE_DATE_EPOCH"] = str(epoch)
    version = project_version(REPO)
    work = args.out / "image-work"
    work.mkdir(parents=True, exist_ok=True)
    output = args.out / f"{image_name(recipe, version)}.img"
    progress = Progress(total=5)
    print(f"Building {output.name}: Debian {recipe.suite} {recipe.arch}, cache {cache}")
    try:
        with progress.step("host: binfmt_misc and qemu-user for arm64"):
            prepare_host(progress)
        with progress.step(
            f"wheels: the project and its aarch64 wheels for Python {recipe.python}"
        ):
            wheels = build_wheels(recipe, cache, work, progress)
            shutil.copyfile(REPO / recipe.lock, wheels / Path(recipe.lock).name)
        with progress.step(f"base: Debian {recipe.suite} arm64 root file system"):
            base = build_base(recipe, cache, progress)
        with progress.step("root: overlays, appliance user, venv, model, release record"):
            root, release = customize_root(recipe, base, wheels, work, epoch, progress)
        with progress.step(f"disk: boot, {recipe.root_fs} root and data partitions"):
            layout = make_disk(recipe, root, work, output, epoch, progress)
    except BuildError as err:
        print(f"image build failed: {err}", file=sys.stderr)
        return 1
    release_path = output.with_suffix(".release.toml")
    release_path.write_text(release, encoding="utf-8")
    digest = hashlib.sha256(output.read_bytes()).hexdigest()
    output.with_suffix(".img.sha256").write_text(f"{digest}  {output.name}\n", encoding="utf-8")
    if not args.keep_work:
        run(["rm", "-rf", "--one-file-system", str(work)])
    print(f"==> {output} ({layout.disk_mib} MiB, sha256 {digest[:16]}...)")
    print(f"    release record {release_path} (also /etc/appliance/release in the image)")
    print(f"    built in {time.monotonic() - progress.started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
