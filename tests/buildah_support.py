"""Build and run OCI images without a Docker engine: Debian's buildah (chroot isolation, vfs storage
under a folder of the test's own) and a `python:3.11-slim` stand-in made with debootstrap.

* `Buildah(root)`: buildah with its storage, run root and config files all under `root`, so nothing
  of the host's buildah state matters; as root, or through `sudo -n` when that works.
* `base_rootfs(cache)`: a Debian bookworm + python3.11 + pip tree, built once by debootstrap from the
  host's own Debian mirror and kept in `cache` under a key of what went into it.
* `import_python_base(b, rootfs)`: that tree as `docker.io/library/python:3.11-slim`, made like the real
  slim image where the Dockerfile relies on it (`python`, `pip`, root pip installs allowed: Debian's
  PEP 668 marker dropped), carrying this machine's CA certificates so pip in the build reaches the
  registries as the host does.
* `standin_ollama_image(b, tag, work)`: an image with tests/standin_ollama.py as `/usr/bin/ollama`,
  its code under `/usr/lib/ollama` (the official image's layout).
* `skip_reason()`: why these cannot run here, or None.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import psutil

from tests.procs import ROOT

SUITE = "bookworm"  # python:3.11-slim's Python on Debian: bookworm's python3 is 3.11
PACKAGES = ["python3", "python3-pip", "ca-certificates"]
DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
DEBOOTSTRAP = shutil.which("debootstrap") or "/usr/sbin/debootstrap"  # sbin: off a plain user's PATH
SLIM_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]
# Run in the imported tree: what python:3.11-slim has that a debootstrap tree lacks, minus apt's leftovers.
SLIMMING = ("rm -f /usr/lib/python3*/EXTERNALLY-MANAGED && ln -sf python3 /usr/bin/python "
            "&& rm -rf /var/cache/apt/archives/*.deb /var/lib/apt/lists/*")


def as_root() -> list[str] | None:
    """The prefix that runs a command as root ([] when already root), or None when there is none."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def skip_reason() -> str | None:
    missing = [name for name, found in (("buildah", shutil.which("buildah")),
                                        ("debootstrap", os.access(DEBOOTSTRAP, os.X_OK))) if not found]
    if missing:
        return f"{' and '.join(missing)} not installed (tests/run.sh installs them on Debian/Ubuntu)"
    if as_root() is None:
        return "building the Space image needs root (debootstrap, buildah's chroot isolation): not root, no sudo -n"
    return None


def apt_mirror() -> str:
    """The host's Debian mirror (its apt sources), else deb.debian.org."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for uri in re.findall(r"^\s*(?:URIs:|deb(?:\s+\[[^]]*\])?)\s+(\S+)", text, flags=re.M):
            if re.search(r"/debian/?$", uri):
                return uri.rstrip("/")
    return DEFAULT_MIRROR


def base_rootfs(cache: Path) -> Path:
    """The debootstrap tree for the base image, built into `cache` unless already there."""
    mirror = apt_mirror()
    key = hashlib.sha256(json.dumps([SUITE, PACKAGES, mirror]).encode()).hexdigest()[:16]
    done = cache / f"{SUITE}-{key}"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:  # one build at a time when two test runs share the cache
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (done / "usr" / "bin" / "python3").exists():
            _debootstrap(mirror, done)
    return done


def _debootstrap(mirror: str, done: Path) -> None:
    partial = done.with_name(f"{done.name}.partial")
    root = as_root()
    subprocess.run([*root, "rm", "-rf", str(partial)], check=True)
    result = subprocess.run([*root, DEBOOTSTRAP, "--variant=minbase", f"--include={','.join(PACKAGES)}",
                             SUITE, str(partial), mirror], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"debootstrap {SUITE} from {mirror} failed:\n{result.stdout[-3000:]}{result.stderr}")
    subprocess.run([*root, "mv", str(partial), str(done)], check=True)


class Buildah:
    """buildah with everything it keeps under `root` (storage, run root, config)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.prefix = as_root()
        root.mkdir(parents=True, exist_ok=True)
        storage_conf, registries_conf = root / "storage.conf", root / "registries.conf"
        storage_conf.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{root}/storage"\n'
                                f'runroot = "{root}/run"\n')
        registries_conf.write_text("unqualified-search-registries = []\n")
        self.argv = [*self.prefix, "env", f"CONTAINERS_STORAGE_CONF={storage_conf}",
                     f"CONTAINERS_REGISTRIES_CONF={registries_conf}", "BUILDAH_ISOLATION=chroot", "buildah",
                     "--root", f"{root}/storage", "--runroot", f"{root}/run", "--storage-driver", "vfs"]

    def __call__(self, *args: str, check: bool = True) -> str:
        """Run `buildah ARGS`; its stdout, stripped (a failure raises with its output)."""
        result = subprocess.run([*self.argv, *args], capture_output=True, text=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"buildah {' '.join(args)} exited {result.returncode}:\n"
                               f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result.stdout.strip()

    def popen(self, *args: str, log: Path) -> subprocess.Popen:
        """`buildah ARGS` in its own session, output to `log`."""
        with open(log, "ab") as out:
            return subprocess.Popen([*self.argv, *args], stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def config(self, image: str) -> dict:
        """The image's OCI config (User, WorkingDir, Env, Cmd, ExposedPorts...)."""
        return json.loads(self("inspect", "--type", "image", image))["OCIv1"]["config"]

    def remove_all(self) -> None:
        """Delete every container and image, then the folder."""
        self("rm", "--all", check=False)
        subprocess.run([*self.prefix, "rm", "-rf", str(self.root)], check=False)


def import_python_base(b: Buildah, rootfs: Path, tag: str = "docker.io/library/python:3.11-slim") -> None:
    ctr = b("from", "scratch")
    b("copy", ctr, f"{rootfs}/", "/")
    b("copy", ctr, str(HOST_CA), str(HOST_CA))
    b("run", "--isolation", "chroot", ctr, "--", "sh", "-c", SLIMMING)
    b("config", *(f"--env={env}" for env in SLIM_ENV), "--cmd", "python3", ctr)
    b("commit", "--quiet", "--rm", ctr, tag)


def standin_ollama_image(b: Buildah, tag: str, work: Path) -> None:
    """`tag` holding the stand-in Ollama where the official image has the real one."""
    tree = work / "standin-ollama"
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "usr" / "lib" / "ollama").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "standin_ollama.py", tree / "usr" / "lib" / "ollama" / "standin_ollama.py")
    exe = tree / "usr" / "bin" / "ollama"
    exe.write_text('#!/bin/sh\nexec python3 /usr/lib/ollama/standin_ollama.py "$@"\n')
    exe.chmod(0o755)
    ctr = b("from", "scratch")
    b("copy", ctr, f"{tree}/", "/")
    b("commit", "--quiet", "--rm", ctr, tag)


def session_members(pid: int) -> set[int]:
    """The sessions `pid` and its descendants lead or belong to (buildah's chroot runs its command in one)."""
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return set()
    sessions = set()
    for proc in procs:
        try:
            sessions.add(os.getsid(proc.pid))
        except OSError:
            pass
    return sessions - {os.getsid(0)}


def signal_pids(pids: list[int], sig: signal.Signals) -> None:
    """Send `sig` to `pids`, as root (what runs in the image is uid 1000)."""
    if pids:
        subprocess.run([*as_root(), "kill", f"-{sig.name.removeprefix('SIG')}", *map(str, pids)],
                       capture_output=True)


def kill_sessions(sessions: set[int]) -> None:
    """SIGKILL every process left in `sessions` (what start.sh started outlives a killed `buildah run`)."""
    pids = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) in sessions:
                pids.append(proc.pid)
        except OSError:
            pass
    signal_pids(pids, signal.SIGKILL)
