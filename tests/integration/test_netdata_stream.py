"""Issue 14 #9: the stream API key k3stack generates (k3stack/secrets.py, Secret netdata-stream)
works with a REAL Netdata (Debian's 1.37, what `inv setup` installs for the bed), exactly as the
stream.conf files land in the pods: a child streaming with the generated key is taken in by the
parent; a child with the chart's published default key is refused. Parent and children are real
netdata processes on loopback, each with its own directories; only the child's `destination`
(the chart's Service name in the pod) is pointed at the parent's loopback port."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from k3stack import secrets
from tests.prereqs import unavailable

pytestmark = pytest.mark.timeout(180)
NETDATA = "/usr/sbin/netdata"
CHART_DEFAULT_KEY = "11111111-2222-3333-4444-555555555555"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Agent:
    """One real netdata: `stream_conf` as its /etc/netdata/stream.conf, listening on 127.0.0.1."""

    def __init__(self, root: Path, hostname: str, stream_conf: str):
        self.port = free_port()
        self.hostname = hostname
        owner = pwd.getpwnam("netdata")
        dirs = {d: root / hostname / d for d in ("etc", "cache", "lib", "log", "run")}
        for path in dirs.values():
            path.mkdir(parents=True)
            os.chown(path, owner.pw_uid, owner.pw_gid)
        (dirs["etc"] / ".opt-out-from-anonymous-statistics").touch()
        (dirs["etc"] / "stream.conf").write_text(stream_conf)
        os.chmod(dirs["etc"] / "stream.conf", 0o444)
        off = "\n".join(
            f"    {p} = no"
            for p in ("apps", "cgroups", "tc", "python.d", "charts.d", "go.d", "ebpf", "diskspace", "statsd")
        )
        conf = root / hostname / "netdata.conf"
        conf.write_text(
            f"[global]\n    run as user = netdata\n    hostname = {hostname}\n    memory mode = ram\n"
            f"    update every = 1\n    error log = {dirs['log']}/error.log\n    access log = none\n"
            f"[directories]\n    config = {dirs['etc']}\n    cache = {dirs['cache']}\n    lib = {dirs['lib']}\n"
            f"    log = {dirs['log']}\n    run = {dirs['run']}\n"
            f"[web]\n    bind to = 127.0.0.1:{self.port}\n[registry]\n    enabled = no\n[health]\n    enabled = no\n"
            f"[ml]\n    enabled = no\n[plugins]\n    enable running new plugins = no\n{off}\n"
        )
        self.log = dirs["log"] / "error.log"
        self.process = subprocess.Popen(
            [NETDATA, "-D", "-c", str(conf)],
            env={"DO_NOT_TRACK": "1", "PATH": "/usr/sbin:/usr/bin:/bin"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def info(self) -> dict:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/info", timeout=2) as answer:
                return json.loads(answer.read())
        except OSError:
            return {}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def until(probe, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if result := probe():
            return result
        time.sleep(0.5)
    return probe()


@pytest.fixture
def agents():
    if not Path(NETDATA).exists():
        unavailable(f"{NETDATA} missing (Debian's netdata, installed by inv setup)")
    if os.geteuid() != 0:
        unavailable("netdata's test agents drop to user netdata: run as root")
    # netdata drops to its own user: its directories must be reachable by it (pytest's tmp_path is 0700)
    root = Path(tempfile.mkdtemp(prefix="k3stack-netdata-"))
    root.chmod(0o755)
    started: list[Agent] = []

    def start(hostname: str, stream_conf: str) -> Agent:
        agent = Agent(root, hostname, stream_conf)
        started.append(agent)
        return agent

    try:
        yield start
    finally:
        for agent in started:
            agent.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_a_child_streams_with_the_generated_key_and_the_charts_default_key_is_refused(agents):
    files = secrets.netdata_stream(secrets.GENERATE["NETDATA_STREAM_API_KEY"]())
    parent = agents("k3stack-parent", files["parent-stream.conf"])
    assert until(parent.info, 30), "the parent did not start"
    to_parent = f"destination = 127.0.0.1:{parent.port}"
    child = files["child-stream.conf"].replace("destination = netdata:19999", to_parent)
    assert to_parent in child
    impostor = child.replace(f"api key = {files['api-key']}", f"api key = {CHART_DEFAULT_KEY}")
    assert CHART_DEFAULT_KEY in impostor
    agents("k3stack-child", child)
    agents("k3stack-impostor", impostor)

    def mirrored() -> list[str]:
        return [h for h in parent.info().get("mirrored_hosts") or [] if h != "k3stack-parent"]

    assert until(lambda: "k3stack-child" in mirrored(), 60), f"the child never streamed: {mirrored()}"
    time.sleep(6)  # the impostor has retried by now (reconnect delay 5 s)
    assert "k3stack-impostor" not in mirrored()
