"""The stack's real components, each started the way its image does it, from its live Deployment
(or, for Netdata, its HelmChart): PostgreSQL (the postgres image's entrypoint: initdb with
POSTGRES_USER/POSTGRES_PASSWORD_FILE/POSTGRES_DB on an empty PGDATA), Redis (the container's
command, as rendered), Open WebUI (start.sh: WEBUI_SECRET_KEY_FILE, then the server on :8080)
and Netdata (the chart's parent on :19999).

The images are newer than Debian's packages (postgres 17 / PostgreSQL 15, redis 7.4 / 7.0,
Netdata v2 / 1.37); Open WebUI is the image's exact version (PyPI)."""

from __future__ import annotations

import http.client
import json
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import ClassVar

from k3stack.kube import Kube

from ..local import BedError
from . import PG_BIN, webui_venv
from .pods import Process, Volumes, container_of, materialize_volumes, resolve_env, wait_until

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def http_get(ip: str, port: int, path: str, timeout: float = 5) -> int:
    connection = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


class Component:
    """One of the stack's workloads as a real process. Subclasses say how its image starts."""

    name = ""
    port = 0
    user = "root"
    labels: ClassVar[dict[str, str]] = {}
    start_timeout = 60.0
    # Services of its namespace that must have a ready endpoint before it starts (its init
    # container waits for one; and the bed's /etc/hosts names only Services with ready endpoints,
    # where a cluster's DNS would name them all)
    needs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, kube: Kube, namespace: str, netns: str, ip: str, workdir: Path, volume_root: Path):
        self.kube = kube
        self.namespace = namespace
        self.netns = netns
        self.ip = ip
        self.workdir = workdir / self.name
        self.volume_root = volume_root
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chown(self.workdir, pwd.getpwnam(self.user).pw_uid, pwd.getpwnam(self.user).pw_gid)
        self.process = Process(self.name, self.workdir / f"{self.name}.log")
        self.template: dict | None = None  # the pod template the process runs
        self.held = False  # stopped by a test: the background kubelet does not restart it
        self.started_seconds = 0.0

    # -- what the kubelet reads from the cluster
    def live_template(self) -> dict | None:
        deployment = self.kube.get("apps/v1", "Deployment", self.name, self.namespace)
        return deployment["spec"]["template"] if deployment else None

    def prepare(self, template: dict) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def ready(self) -> bool:
        with socket.create_connection((self.ip, self.port), timeout=2):
            return True

    # -- lifecycle
    def start(self, template: dict, hosts: Path | None, resolv: Path, record=None) -> None:
        begun = time.monotonic()
        argv, env = self.prepare(template)
        if hosts is None:
            raise BedError(f"{self.name}: no ready endpoint for a Service it needs ({', '.join(self.needs)})")
        self.process.start(
            argv,
            netns=self.netns,
            env={"PATH": BASE_PATH, "LANG": "C.UTF-8", "HOME": str(self.workdir), **env},
            hosts=hosts,
            resolv=resolv,
            cwd=self.workdir,
            user=None if self.user == "root" else self.user,
            record=record,
        )
        self.template = template
        wait_until(self.ready, f"{self.name} at {self.ip}", self.process, self.start_timeout)
        self.started_seconds = time.monotonic() - begun  # initdb included

    def stop(self) -> None:
        """Stop the process and keep it down: the bed's kubelet leaves a stopped component alone
        until the next explicit RealStack.sync() (a test's outage lasts as long as the test wants)."""
        self.halt()
        self.held = True

    def halt(self) -> None:
        """Stop the process (its pod template changed or its workload is gone)."""
        self.process.stop()
        self.template = None

    def _container(self, template: dict) -> tuple[dict, dict[str, str], Volumes]:
        container = container_of(template, self.name)
        volumes = materialize_volumes(
            self.kube, self.namespace, template, container, self.workdir, self.volume_root, self.user
        )
        env = {k: volumes.translate(v) for k, v in resolve_env(self.kube, self.namespace, container).items()}
        return container, env, volumes


class Postgres(Component):
    name, port, user = "postgres", 5432, "postgres"
    labels: ClassVar[dict[str, str]] = {"app.kubernetes.io/name": "postgres"}

    def prepare(self, template: dict) -> tuple[list[str], dict[str, str]]:
        _, env, volumes = self._container(template)
        pgdata = Path(env["PGDATA"])
        if not (pgdata / "PG_VERSION").exists():
            self._initialise(env, pgdata)
        run = volumes.path("/var/run/postgresql")
        argv = [str(PG_BIN / "postgres"), "-D", str(pgdata), "-c", "listen_addresses=*"]
        return [*argv, "-c", f"unix_socket_directories={run}"], {"PGDATA": str(pgdata)}

    def _initialise(self, env: dict[str, str], pgdata: Path) -> None:
        """The image's entrypoint on an empty data directory: initdb with the user and password
        file, host connections by password (scram-sha-256), then CREATE DATABASE POSTGRES_DB."""
        user = env.get("POSTGRES_USER", "postgres")
        database = env.get("POSTGRES_DB", user)
        owner = pwd.getpwnam(self.user)
        pgdata.mkdir(parents=True, exist_ok=True)
        os.chown(pgdata, owner.pw_uid, owner.pw_gid)
        pgdata.chmod(0o700)
        as_postgres = ["setpriv", f"--reuid={self.user}", f"--regid={owner.pw_gid}", "--init-groups", "--"]
        initdb = [str(PG_BIN / "initdb"), "-D", str(pgdata), f"--username={user}", "--auth-local=trust"]
        initdb += ["--auth-host=scram-sha-256", f"--pwfile={env['POSTGRES_PASSWORD_FILE']}"]
        self._run([*as_postgres, *initdb])
        with open(pgdata / "pg_hba.conf", "a") as hba:
            hba.write("host all all all scram-sha-256\n")
        if database != "postgres":
            single = [str(PG_BIN / "postgres"), "--single", "-D", str(pgdata), "postgres"]
            self._run([*as_postgres, *single], stdin=f'CREATE DATABASE "{database}";\n')

    def _run(self, argv: list[str], stdin: str | None = None) -> None:
        with open(self.process.log, "ab") as log:
            done = subprocess.run(
                argv, input=(stdin or "").encode(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, check=False
            )
        if done.returncode != 0:
            raise BedError(f"postgres: `{' '.join(argv[5:7])}` exited {done.returncode}: {self.process.tail()}")

    def ready(self) -> bool:
        probe = [str(PG_BIN / "pg_isready"), "-q", "-h", self.ip, "-p", str(self.port)]
        return subprocess.run(probe, check=False, timeout=5).returncode == 0


class Redis(Component):
    name, port, user = "redis", 6379, "redis"
    labels: ClassVar[dict[str, str]] = {"app.kubernetes.io/name": "redis"}

    def prepare(self, template: dict) -> tuple[list[str], dict[str, str]]:
        container, env, volumes = self._container(template)
        argv = [volumes.translate(a) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
        if not argv or Path(argv[0]).name != "redis-server":
            raise BedError(f"redis: the bed runs `redis-server ...`; the container runs {argv[:1]}")
        return [shutil.which("redis-server") or "redis-server", *argv[1:]], env

    def ready(self) -> bool:
        with socket.create_connection((self.ip, self.port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"-NOAUTH", b"+PONG"))


class OpenWebUI(Component):
    name, port = "open-webui", 8080
    labels: ClassVar[dict[str, str]] = {"app.kubernetes.io/name": "open-webui"}
    start_timeout = 240.0
    needs = ("postgres", "redis", "ollama")  # init container wait-for-postgres; the others at start
    DATA = "/app/backend/data"  # the image's DATA_DIR (its default: BACKEND_DIR/data)

    def prepare(self, template: dict) -> tuple[list[str], dict[str, str]]:
        _, env, volumes = self._container(template)
        env.setdefault("DATA_DIR", volumes.path(self.DATA))
        # start.sh: with neither WEBUI_SECRET_KEY nor WEBUI_JWT_SECRET_KEY set, the key is read
        # from WEBUI_SECRET_KEY_FILE (default .webui_secret_key, generated when missing).
        if not env.get("WEBUI_SECRET_KEY") and not env.get("WEBUI_JWT_SECRET_KEY"):
            key_file = Path(env.get("WEBUI_SECRET_KEY_FILE") or self.workdir / ".webui_secret_key")
            if not key_file.exists():
                key_file.write_text(os.urandom(12).hex())
            env["WEBUI_SECRET_KEY"] = key_file.read_text().strip()
        venv = webui_venv()
        env["PATH"] = f"{venv / 'bin'}:{BASE_PATH}"
        return [str(venv / "bin" / "open-webui"), "serve", "--host", "0.0.0.0", "--port", str(self.port)], env

    def ready(self) -> bool:
        return http_get(self.ip, self.port, "/health") == 200


class Netdata(Component):
    """The Netdata chart's parent. No helm runs in the bed: the HelmChart's values decide what a
    test checks (the ingress the chart would create: see ingress.py); the dashboard itself is
    Debian's Netdata with the chart's port and no outbound telemetry."""

    name, port, user = "netdata", 19999, "netdata"

    def live_template(self) -> dict | None:
        chart = self.kube.get("helm.cattle.io/v1", "HelmChart", "netdata", self.namespace)
        return {"valuesContent": chart["spec"].get("valuesContent", "")} if chart else None

    def prepare(self, template: dict) -> tuple[list[str], dict[str, str]]:
        owner = pwd.getpwnam(self.user)
        dirs = {d: self.workdir / d for d in ("etc", "cache", "lib", "log", "run")}
        for path in dirs.values():
            path.mkdir(exist_ok=True)
            os.chown(path, owner.pw_uid, owner.pw_gid)
        (dirs["etc"] / ".opt-out-from-anonymous-statistics").touch()
        plugins_off = "\n".join(
            f"    {p} = no"
            for p in (
                "apps",
                "cgroups",
                "tc",
                "idlejitter",
                "python.d",
                "charts.d",
                "go.d",
                "node.d",
                "ebpf",
                "diskspace",
                "statsd",
                "timex",
                "perf",
                "slabinfo",
                "nfacct",
                "ioping",
                "fping",
                "freeipmi",
                "cups",
                "debugfs",
                "logs-management",
            )
        )
        conf = self.workdir / "netdata.conf"
        conf.write_text(
            f"""[global]
    run as user = {self.user}
    hostname = netdata-parent
    memory mode = ram
    update every = 5
    error log = {dirs["log"]}/error.log
    access log = none
    debug log = none
[directories]
    config = {dirs["etc"]}
    cache = {dirs["cache"]}
    lib = {dirs["lib"]}
    log = {dirs["log"]}
    run = {dirs["run"]}
[web]
    bind to = *:{self.port}
[registry]
    enabled = no
[health]
    enabled = no
[ml]
    enabled = no
[plugins]
    enable running new plugins = no
    proc = yes
{plugins_off}
"""
        )
        return ["/usr/sbin/netdata", "-D", "-c", str(conf)], {"DO_NOT_TRACK": "1"}

    def ready(self) -> bool:
        return http_get(self.ip, self.port, "/api/v1/info") == 200


def webui_api(ip: str, method: str, path: str, *, token: str | None = None, body=None, port: int = 8080):
    """One JSON call to a real Open WebUI: (status, decoded body)."""
    connection = http.client.HTTPConnection(ip, port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request(method, path, json.dumps(body) if body is not None else None, headers)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, raw.decode(errors="replace")


def wait_for(probe, timeout: float = 30, interval: float = 0.3):
    """The first truthy result of probe() within `timeout` seconds (else the last one)."""
    deadline = time.monotonic() + timeout
    result = probe()
    while not result and time.monotonic() < deadline:
        time.sleep(interval)
        result = probe()
    return result
