"""The whole stack, for real, in the test bed: `deploy` applies it to the bed's API server, then
the real PostgreSQL, Redis, Open WebUI and Netdata run behind its pods (each from its live
objects, see components.py), the Ollama protocol double behind Ollama's, and the Traefik
stand-in (ingress.py) in front, with a test CA's certificate. A redeploy that changes a pod
template restarts that component (a rollout); destroy stops what it deletes.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from k3stack import deploy as stack
from k3stack import settings
from k3stack import smoke as sm
from k3stack.console import Console
from k3stack.kube import Kube

from ..cluster import KubeBed
from ..fake_ollama import FakeOllama
from ..ingress import Ingress, TestCA
from ..local import BedError
from .components import Component, Netdata, OpenWebUI, Postgres, Redis, wait_for
from .pods import DnsRecorder, hosts_file, pod_address

CHAT = "chat.smoke.test"
MONITOR = "monitor.smoke.test"
ORDER = (Postgres, Redis, OpenWebUI)  # the order the init container / probes impose


@dataclass
class RealStack:
    bed: KubeBed
    workdir: Path
    environ: dict[str, str]
    ollama: FakeOllama
    ollama_ip: str
    dns: DnsRecorder | None
    resolv: Path
    components: dict[str, Component] = field(default_factory=dict)
    ingress: Ingress | None = None
    ca: TestCA = field(default_factory=TestCA)
    plan: stack.Plan | None = None
    output: io.StringIO = field(default_factory=io.StringIO)
    servers: list = field(default_factory=list)
    kubelet_errors: list[Exception] = field(default_factory=list)
    _kubelet: threading.Thread | None = None
    _kubelet_stop: threading.Event = field(default_factory=threading.Event)
    _sync_lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def kube(self) -> Kube:
        return Kube(str(self.bed.kubeconfig))

    @property
    def namespace(self) -> str:
        return self.environ["STACK_NAMESPACE"]

    @property
    def monitoring(self) -> str:
        return self.environ["MONITORING_NAMESPACE"]

    @classmethod
    def create(cls, bed: KubeBed, *, models: list[str], **environ: str) -> RealStack:
        """Addresses, the Ollama double and the ingress; nothing deployed yet (see `deploy`)."""
        if bed.slot is None or bed.sim is None:
            raise BedError("the real stack needs the built-in test bed (unset K3STACK_TEST_KUBECONFIG)")
        # Its own directory, traversable by the components' users (postgres, redis, netdata);
        # pytest's and the slot's directories are root-only. Removed by close().
        workdir = Path(tempfile.mkdtemp(prefix="k3stack-real-"))
        workdir.chmod(0o711)
        suffix = uuid.uuid4().hex[:6]
        values = {
            "DOMAIN": "smoke.test",
            "ACME_EMAIL": "ops@smoke.test",
            "STACK_NAMESPACE": f"llm-{suffix}",
            "MONITORING_NAMESPACE": f"mon-{suffix}",
            "OLLAMA_MODELS": ",".join(models),
            **environ,
        }
        ollama = FakeOllama({m: [1000, 10] for m in models})
        for model in models:
            ollama.install(model)
        sock = bed.serve_behind_pods(values["STACK_NAMESPACE"], {"app.kubernetes.io/name": "ollama"}, 11434)
        dns = None
        with contextlib.suppress(OSError):
            dns = DnsRecorder(str(bed.slot.gateway))
        resolv = workdir / "resolv.conf"
        resolv.write_text(f"nameserver {dns.address if dns else '127.0.0.1'}\noptions timeout:1 attempts:1\n")
        resolv.chmod(0o644)
        real = cls(bed, workdir, values, ollama, sock.getsockname()[0], dns, resolv)
        real.servers.append(ollama.serve(sock))
        volume_root = workdir / "volumes"
        for kind in (*ORDER, Netdata):
            netns, ip = pod_address(bed, kind.name[:6])
            namespace = real.monitoring if kind is Netdata else real.namespace
            real.components[kind.name] = kind(real.kube, namespace, netns, ip, workdir, volume_root)
        netdata = real.components["netdata"]
        real.ingress = Ingress(
            real.kube,
            [real.namespace, real.monitoring],
            real.ca.issue([CHAT, MONITOR]),
            chart_backends={(real.monitoring, "netdata"): (netdata.ip, netdata.port)},
        )
        return real

    # -- what deploy and destroy do, and the kubelet after them
    def settings(self, **changes: str) -> settings.Settings:
        self.environ.update(changes)
        return settings.load(env_dir=Path("/nonexistent"), environ=self.environ)

    def _route(self) -> None:
        """(Again: the `namespace` fixture clears the simulator's routes after each test.)"""
        sim = self.bed.sim
        assert sim is not None
        # probe=True: the simulator runs each pod's startup/readiness probes against the process
        # (a wrong probe path or port fails the rollout, as on a real node)
        sim.route(self.namespace, {"app.kubernetes.io/name": "ollama"}, self.ollama_ip, probe=True)
        for component in self.components.values():
            if component.labels:
                sim.route(component.namespace, component.labels, component.ip, probe=True)

    def deploy(self, **changes: str) -> stack.DeployReport:
        """`inv deploy` with the settings changed by `changes`, while the kubelet (re)starts each
        component whose pod template changed and stops those whose workload is gone — as on a
        node, the rollout waits for the real process to pass its probes."""
        values = self.settings(**changes)
        self._route()
        self.plan = stack.make_plan(values, stack.read_secret_from(self.kube))
        return self.deploy_plan(self.plan)

    def deploy_plan(self, plan: stack.Plan, *, timeout: float = 300) -> stack.DeployReport:
        """stack.deploy of `plan` with the bed's kubelet running (see `start_kubelet`); when the
        deploy fails, why a process behind a pod did not start is added to its exception."""
        self._route()
        self.start_kubelet()
        try:
            report = stack.deploy(self.kube, plan, Console(stream=self.output, interactive=False), timeout=timeout)
        except Exception as exc:
            for error in self.kubelet_errors[-3:]:
                exc.add_note(f"the bed's kubelet: {type(error).__name__}: {error}")
            raise
        self.sync()
        return report

    def start_kubelet(self, interval: float = 0.5) -> None:
        """From the first deploy to close(), sync the components every `interval` seconds in a
        thread, as a kubelet does: a process starts when its pod template appears (before the
        rollout wait that probes it), restarts when the template changes (a rollout, a restart by
        restore or rotate), stops when its workload is gone. A failed start is tried again and
        kept in `kubelet_errors`; a component a test stopped stays down (Component.stop)."""
        if self._kubelet is not None:
            return

        def loop() -> None:
            while not self._kubelet_stop.wait(interval):
                try:
                    self._sync(restart_held=False)
                except Exception as exc:  # noqa: BLE001 - shown when a deploy fails (deploy_plan)
                    self.kubelet_errors.append(exc)
                    del self.kubelet_errors[:-10]

        self._kubelet = threading.Thread(target=loop, name="testbed-kubelet", daemon=True)
        self._kubelet.start()

    def destroy(self) -> None:
        assert self.plan is not None
        stack.destroy(self.kube, self.plan, Console(stream=self.output, interactive=False))
        self.sync()

    def sync(self) -> None:
        """Bring every component in line with the cluster now, restarting those a test stopped."""
        self._sync(restart_held=True)

    def _sync(self, *, restart_held: bool) -> None:
        with self._sync_lock:
            for component in [self.components[k.name] for k in ORDER] + [self.components["netdata"]]:
                if restart_held:
                    component.held = False
                template = component.live_template()
                if template is None or template != component.template:
                    component.halt()
                if template is not None and not component.process.running and not component.held:
                    component.start(template, self._hosts(component), self.resolv, self.bed.slot.record_process)

    def _hosts(self, component: Component, timeout: float = 120) -> Path | None:
        """The pod's /etc/hosts, once every Service the component needs has a ready endpoint
        (None if that takes over `timeout` seconds)."""
        others = [n for n in (self.namespace, self.monitoring) if n != component.namespace]
        path = component.workdir / "hosts"
        wanted = [f"{name}.{component.namespace}.svc" for name in component.needs]

        def complete() -> bool:
            names = set(hosts_file(self.kube, [component.namespace, *others], path).read_text().split())
            return all(name in names for name in wanted)

        return path if wait_for(complete, timeout=timeout, interval=0.5) else None

    def restart(self, name: str) -> None:
        component = self.components[name]
        with self._sync_lock:
            component.halt()
        self.sync()

    # -- what tests use
    def smoke_config(self, **overrides) -> sm.SmokeConfig:
        assert self.plan is not None
        assert self.ingress is not None
        https, http = ("127.0.0.1", self.ingress.https_port), ("127.0.0.1", self.ingress.http_port)
        ca_file = self.ca.write(self.workdir / "ca.pem")
        values = {
            "ca_bundle": str(ca_file),
            "connect_to": {(CHAT, 443): https, (CHAT, 80): http, (MONITOR, 443): https, (MONITOR, 80): http},
            "deadline": 20,
            "interval": 0.5,
            **overrides,
        }
        return sm.SmokeConfig.from_settings(self.plan.settings, self.plan.secrets.values, **values)

    def webui(self) -> OpenWebUI:
        return self.components["open-webui"]  # type: ignore[return-value]

    def forget_signins(self) -> None:
        """Open WebUI allows 15 sign-ins per user in 3 minutes (kept in Redis): each test starts
        with none counted, whatever the tests before it did."""
        for key in self.redis("KEYS", "open-webui:ratelimit:*") or []:
            self.redis("DEL", key)

    def signins(self) -> int:
        """Sign-ins Open WebUI counted (its rate limiter's buckets in Redis) since forget_signins()."""
        return sum(int(self.redis("GET", key) or 0) for key in self.redis("KEYS", "open-webui:ratelimit:*") or [])

    def redis_keys(self, pattern: str = "*") -> list[str]:
        return sorted(self.redis("KEYS", pattern) or [])

    def redis(self, *command: str):
        """A command to the real Redis (the password from the cluster, never on argv)."""
        assert self.plan is not None
        password = self.plan.secrets.values["REDIS_PASSWORD"]
        done = subprocess.run(
            ["redis-cli", "-h", self.components["redis"].ip, "--no-auth-warning", "--json", *command],
            env={"REDISCLI_AUTH": password, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if done.returncode != 0:
            raise BedError(f"redis-cli {command[0]}: {done.stderr.strip()}")
        return json.loads(done.stdout)

    def close(self) -> None:
        self._kubelet_stop.set()
        if self._kubelet is not None:
            self._kubelet.join()
        for component in self.components.values():
            component.stop()
        if self.ingress is not None:
            self.ingress.close()
        for server in self.servers:
            server.shutdown()
        if self.dns is not None:
            self.dns.close()
        kube = self.kube
        for namespace in (self.namespace, self.monitoring):
            kube.delete("v1", "Namespace", namespace)
        shutil.rmtree(self.workdir, ignore_errors=True)
