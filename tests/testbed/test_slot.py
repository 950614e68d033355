"""A bed killed without teardown is swept by the next one; a released slot leaves nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from .local import run
from .slot import Slot


def test_a_killed_bed_is_swept_on_the_next_start(bed_slot):
    # A separate process claims a slot, makes a namespace and a process, and dies by SIGKILL.
    script = textwrap.dedent("""
        import os, signal, subprocess
        from tests.testbed.slot import Slot
        slot = Slot.claim()
        netns = slot.add_netns("stale", [slot.allocate_ip()])
        child = subprocess.Popen(["sleep", "300"], start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        slot.record_process(child.pid)
        print(slot.path, netns, slot.name, child.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    path, netns, bridge, pid = done.stdout.split()
    assert netns in run(["ip", "netns", "list"])
    assert Path(path).exists()

    Slot.sweep_stale()

    assert netns not in run(["ip", "netns", "list"])
    assert not Path(f"/sys/class/net/{bridge}").exists()
    assert not Path(path).exists()
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert Path(bed_slot.path).exists()  # a live bed's slot is left alone


def test_release_removes_bridge_namespaces_and_state(bed_slot):  # bed_slot: root + ip, or skip
    slot = Slot.claim()
    netns = slot.add_netns("tmp", [slot.allocate_ip()])
    slot.release()
    assert netns not in run(["ip", "netns", "list"])
    assert not Path(f"/sys/class/net/{slot.name}").exists()
    assert not slot.path.exists()


def test_a_bridge_of_a_bed_with_another_tmp_is_left_alone(bed_slot):
    """Beds in a container or chroot have their own /tmp but share the machine's links: an index
    whose bridge exists without a slot here is skipped, and that bridge is never swept."""
    from . import slot as slots

    index = next(i for i in range(1, slots.MAX_SLOTS + 1) if not (slots.ROOT / f"{slots.PREFIX}{i}").exists())
    foreign = f"k3stb{index}"
    run(["ip", "link", "add", foreign, "type", "bridge"])
    try:
        claimed = Slot.claim()
        try:
            assert claimed.index != index
        finally:
            claimed.release()
        Slot.sweep_stale()
        assert Path(f"/sys/class/net/{foreign}").exists()
    finally:
        run(["ip", "link", "del", foreign])
