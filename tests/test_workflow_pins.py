"""The pins Dependabot cannot see, in one place: `python -m tests.test_workflow_pins` prints them
(images, the Netdata chart, the K3s release and its installer's sha256, container images and K3s
images in the workflows, the test bed's Open WebUI/torch), each with the file it lives in.

Dependabot (.github/dependabot.yml) keeps the actions, requirements*.txt and tools/ fresh; these
are bumped by hand, and the tests below keep the ones that must agree in step: e2e's K3s pin
(.github/k3s.env) is k3stack's default K3S_VERSION, and any K3s image a workflow runs (k3d)
carries that same release.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
K3S_PIN = ROOT / ".github" / "k3s.env"
SETTINGS_FILE = "k3stack/settings.py"


def settings_defaults() -> dict[str, str]:
    from k3stack.settings import SETTINGS

    return {s.name: s.default for s in SETTINGS if s.default is not None}


def pinned_settings() -> list[str]:
    """Settings whose default is a pin: images, releases, chart versions and the chart's repository."""
    from k3stack.settings import SETTINGS

    return [
        s.name
        for s in SETTINGS
        if s.default
        and (getattr(s.check, "__name__", "") == "image" or s.name.endswith(("_IMAGE", "_VERSION", "_CHART_REPO")))
    ]


def k3s_pin() -> dict[str, str]:
    """.github/k3s.env: K3S_VERSION and K3S_INSTALL_SHA256 (comments and blank lines aside)."""
    pairs = {}
    for line in K3S_PIN.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def k3s_image_tags(text: str) -> list[str]:
    """Tags of rancher/k3s images named in a text (k3d's --image, a container image, ...)."""
    return re.findall(r"rancher/k3s:([\w.+-]+)", text)


def pins() -> list[tuple[str, str, str]]:
    """(what, pinned value, where) for every pin Dependabot does not update."""
    rows = []
    defaults = settings_defaults()
    for name in pinned_settings():
        rows.append((name, defaults[name], f"{SETTINGS_FILE} (default; env/example.env documents it)"))
    for key, value in k3s_pin().items():
        rows.append((f"e2e {key}", value or "(not pinned yet)", str(K3S_PIN.relative_to(ROOT))))
    for manifest in sorted((ROOT / "k8s").rglob("*.y*ml")):
        for image in re.findall(r"^\s*image:\s*([^\s$#]+)\s*$", manifest.read_text(), re.M):
            rows.append(("image", image, str(manifest.relative_to(ROOT))))
    for path in WORKFLOWS:
        text = path.read_text()
        for job_id, job in (yaml.safe_load(text).get("jobs") or {}).items():
            container = job.get("container")
            if container:
                image = container if isinstance(container, str) else container.get("image")
                rows.append((f"container of job {job_id}", image, f".github/workflows/{path.name}"))
        for tag in k3s_image_tags(text):
            rows.append(("K3s image (k3d)", f"rancher/k3s:{tag}", f".github/workflows/{path.name}"))
        for name, value in re.findall(r"^\s*(K3D_VERSION|K3D_SHA256):\s*(\S+)", text, re.M):
            rows.append((name, value, f".github/workflows/{path.name}"))
    bed = ROOT / "tests" / "testbed" / "real" / "open-webui.txt"
    for line in bed.read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            rows.append(("test bed (pip, not Dependabot)", line.strip(), str(bed.relative_to(ROOT))))
    return rows


def main() -> None:
    rows = [("pin", "value", "where"), *pins()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


# --- the tests ---------------------------------------------------------------------------------------


def test_every_pin_dependabot_cannot_see_is_listed():
    listed = {what for what, _, _ in pins()}
    values = {value for _, value, _ in pins()}
    for name in ("K3S_VERSION", "K8S_VERSION", "NETDATA_CHART_VERSION", "NETDATA_CHART_REPO"):
        assert name in listed, name
    defaults = settings_defaults()
    images = [n for n in pinned_settings() if n.endswith("_IMAGE")]
    assert len(images) >= 4, images  # Open WebUI, Ollama, PostgreSQL, Redis
    assert {defaults[n] for n in images} <= values
    assert {"e2e K3S_VERSION", "e2e K3S_INSTALL_SHA256"} <= listed
    assert "container of job test" in listed  # ci.yml's Debian 12
    assert any(value.startswith("open-webui[postgres]==") for value in values)


def test_e2e_installs_the_k3s_release_k3stack_pins():
    """.github/k3s.env's K3S_VERSION is k3stack's default, its checksum is a sha256 (or not pinned
    yet: e2e then warns), and e2e takes both from that file (no repository variable)."""
    pin = k3s_pin()
    assert set(pin) == {"K3S_VERSION", "K3S_INSTALL_SHA256"}, pin
    assert pin["K3S_VERSION"] == settings_defaults()["K3S_VERSION"], (
        f"{K3S_PIN.name}: K3S_VERSION={pin['K3S_VERSION']} but {SETTINGS_FILE} pins "
        f"{settings_defaults()['K3S_VERSION']}: bump both (and K3S_INSTALL_SHA256) with the command in {K3S_PIN.name}"
    )
    assert pin["K3S_INSTALL_SHA256"] == "" or re.fullmatch(r"[0-9a-f]{64}", pin["K3S_INSTALL_SHA256"])
    # once k3stack's settings carry the checksum as their default, the two agree
    default = settings_defaults().get("K3S_INSTALL_SHA256", "")
    if default and pin["K3S_INSTALL_SHA256"]:
        assert pin["K3S_INSTALL_SHA256"] == default, f"{K3S_PIN.name} and {SETTINGS_FILE} pin different installers"
    e2e = (ROOT / ".github" / "workflows" / "e2e.yml").read_text()
    assert ".github/k3s.env" in e2e
    assert "vars." not in e2e, "e2e needs nothing outside the repository"
    assert "secrets." not in e2e, "e2e needs nothing outside the repository"


def test_every_k3s_image_a_workflow_runs_is_the_pinned_release():
    """k3d (or any rancher/k3s image) in a workflow runs K3S_VERSION, not another release."""
    want = settings_defaults()["K3S_VERSION"].replace("+", "-")
    assert k3s_image_tags("k3d cluster create x --image rancher/k3s:v1.35.5-k3s1") == ["v1.35.5-k3s1"]
    for path in WORKFLOWS:
        for tag in k3s_image_tags(path.read_text()):
            assert tag == want, f"{path.name}: rancher/k3s:{tag}, but K3S_VERSION is {want}"


def test_the_pin_listing_command_prints_them():
    done = subprocess.run(
        [sys.executable, "-m", "tests.test_workflow_pins"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    for what, value, _ in pins():
        assert what in done.stdout
        assert value in done.stdout


if __name__ == "__main__":
    main()
