"""What the cluster tasks do between reading flags and showing a result, as library calls:
plan one or several stacks, deploy them and pull their models, render without a cluster,
the credentials rows. tasks.py parses flags and calls these; nothing here knows Invoke.
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import deploy, settings
from . import manifests as mf
from .errors import K3stackError

if TYPE_CHECKING:  # the kubernetes client loads only where a cluster is talked to
    from .console import Console
    from .kube import Cluster, Kube
    from .ollama import PullReport, PullResult
    from .rollout import Status, Target

# Secret data shown by `render`: still valid base64, plainly not a secret.
REDACTED = base64.b64encode(b"<redacted>").decode()


@dataclass
class Stack:
    """One settings file's stack: its settings and its plan (secrets resolved, manifests rendered);
    for a deploy also the cluster the plan is rendered for (None: not yet) and the LISTs of the
    stack's objects planning made, (apiVersion, kind) -> items (deploy does not ask again)."""

    settings: settings.Settings
    plan: deploy.Plan
    cluster: Cluster | None = None
    listed: dict[tuple[str, str], list[dict]] = field(default_factory=dict)


def plan(loaded: settings.Settings, kube: Kube, console: Console, *, cluster: Cluster | None = None) -> Stack:
    """Resolve the stack's secrets (reading the cluster's) and render it; every check that needs
    no write happens here, before anything is applied. The secrets are registered with the
    console so that no output shows them. Raises K3stackError subclasses naming setting or file.

    With `cluster` (a deploy's), the plan is rendered for that cluster (deploy.prepare) and the
    stack's Secrets are read with one LIST of its labelled Secrets, kept in `listed` for the deploy;
    one not among them (not applied by k3stack) is read on its own, as without `cluster`."""
    if cluster is None:
        made = deploy.make_plan(loaded, deploy.read_secret_from(kube), deploy.volume_exists_in(kube))
        console.add_secrets(made.secrets.values.values())
        return Stack(loaded, made)
    from .apply import instance_selector
    from .secrets import decode

    secrets = kube.list("v1", "Secret", label_selector=instance_selector(loaded["STACK_NAMESPACE"]))
    ours = {(s["metadata"].get("namespace"), s["metadata"]["name"]): s for s in secrets}
    fallback = deploy.read_secret_from(kube)

    def read(namespace: str, name: str) -> dict[str, str] | None:
        found = ours.get((namespace, name))
        return decode(found) if found is not None else fallback(namespace, name)

    made = deploy.make_plan(loaded, read, deploy.volume_exists_in(kube))
    console.add_secrets(made.secrets.values.values())
    adapted, _ = deploy.prepare(kube, made, console, cluster)
    return Stack(loaded, adapted, cluster, {("v1", "Secret"): secrets})


@contextmanager
def locked(kube: Kube, loaded: list[settings.Settings], console: Console, *, wait: float = 120) -> Iterator[None]:
    """Hold every stack's deploy Lease (k3stack/lease.py) for the block, in a fixed order (no two
    runs can hold one each and wait for the other's). Raises LeaseHeldError after `wait` seconds
    of another live run holding one; ClusterError (nothing written) for a cluster that cannot run
    a stack. The run's discovery pass is made here and kept (Kube.discovered)."""
    from . import lease

    # A cluster that cannot run the stack (no Traefik API, no helm-controller, too old) is refused
    # before the lock writes anything (the Lease, or the namespace it lives in).
    cluster = kube.discovered()
    for one in loaded:
        deploy.check_cluster(one, cluster)
    with ExitStack() as held:
        for namespace in sorted({one["STACK_NAMESPACE"] for one in loaded}):
            held.enter_context(lease.held(kube, namespace, wait=wait, on_wait=console.note))
        yield


def plan_all(loaded: list[settings.Settings], kube: Kube, console: Console) -> list[Stack]:
    """One Stack per settings (several settings files deploy several stacks), planned for deploy
    side by side over one connection, in the order given: rendered for the cluster of the run's one
    discovery pass (Kube.discovered), Secrets read with one LIST each. The first failure is raised."""
    cluster = kube.discovered()
    if len(loaded) == 1:
        return [plan(loaded[0], kube, console, cluster=cluster)]
    with ThreadPoolExecutor(max_workers=len(loaded)) as pool:
        return list(pool.map(lambda one: plan(one, kube, console, cluster=cluster), loaded))


@dataclass
class DeployOutcome:
    """A deploy run: the apply/rollout report, the model pulls (one PullReport per stack with
    models) and the API requests made (a count)."""

    report: deploy.DeployReport
    pulled: list[PullReport] = field(default_factory=list)
    requests: int = 0

    @property
    def new_models(self) -> int:
        """Models pulled by this run (present ones are not counted)."""
        return sum(r.action == "pulled" for p in self.pulled for r in p.results)

    @property
    def changed(self) -> bool:
        """Whether anything changed: an object applied or pruned, or a model pulled."""
        return self.report.changed or bool(self.new_models)

    @property
    def failed_models(self) -> list[PullResult]:
        """The model pulls that failed (the run fails on the first)."""
        return [r for p in self.pulled for r in p.results if not r.ok]

    def summary(self) -> str:
        """One line, Ansible's words: `changed: 3 configured, 12 unchanged in 2.1s (40 API requests)`."""
        counts = ", ".join(f"{n} {action}" for action, n in sorted(self.report.counts().items()))
        if self.new_models:
            counts += f", {self.new_models} model(s) pulled"
        verdict = "changed" if self.changed else "no changes"
        return f"{verdict}: {counts} in {self.report.seconds:.1f}s ({self.requests} API requests)"

    def to_json(self) -> dict:
        """The machine-readable summary `inv deploy --json` prints (keys are a stable interface)."""
        report = self.report
        return {
            "changed": self.changed,
            "counts": report.counts(),
            "seconds": round(report.seconds, 2),
            "objects": [
                {"object": r.describe, "namespace": r.namespace, "action": r.action}
                for r in [*report.results, *report.pruned]
            ],
            "rollouts": {t.describe(): s.message for t, s in report.rollouts.items()},
            "models": [m for p in self.pulled for m in p.to_json()["models"]],
        }


def deploy_stacks(
    kube: Kube,
    stacks: list[Stack],
    console: Console,
    *,
    force: bool = False,
    dry_run: bool = False,
    prune: bool = True,
    wait: bool = True,
    timeout: float = 600,
    pull: bool = True,
    backup: bool | None = None,
    backup_dir: Path | None = None,
    ci: bool = False,
) -> DeployOutcome:
    """Apply every stack (deploy.deploy_many: server-side apply, prune, rollout waits of `timeout`
    seconds) and pull each stack's OLLAMA_MODELS: a stack's pulls start as soon as its Ollama
    Deployment is Ready, while the other workloads are still waited on (Pulls), and the run ends
    when the rollouts and the pulls are all done. Pulls run only when waited for and not a dry run.
    A rollout that fails (or Ctrl-C) cancels the pulls under way and its error is raised, whatever
    the pulls did. Raises ApplyError/RolloutError (K3stackError), or OllamaError when Ollama cannot
    be asked at all (once the rollouts are done); a failed pull is in `failed_models`, not raised."""
    from . import backup as bk
    from .rollout import RolloutError, on_done

    guarded: dict[str, tuple[list[str], Path | None]] = {}

    def guard(plan: deploy.Plan, current: dict[tuple, dict]) -> None:
        # A stateful image change (PostgreSQL, Open WebUI) takes a backup first; a PostgreSQL
        # major change is refused with the dump/restore procedure (issue 17).
        reasons, taken = bk.guard_upgrade(
            kube, plan.settings, current.values(), [m.obj for m in plan.manifests], console,
            choice=backup, ci=ci, to=backup_dir,
        )  # fmt: skip
        if reasons:
            guarded[plan.instance] = (reasons, taken.path if taken else None)

    # Stacks planned for this cluster (plan_all) are applied as rendered, with the LISTs planning made.
    # A kind counts as listed only when every stack listed it (deploy_many lists all at once).
    cluster = stacks[0].cluster if all(s.cluster is not None for s in stacks) else None
    common = set.intersection(*(set(s.listed) for s in stacks)) if cluster is not None else set()
    listed = {kind: [obj for s in stacks for obj in s.listed[kind]] for kind in common}
    try:
        # The pulls' progress is opened before the rollouts' (which shows inside it and ends first).
        with Pulls(kube, stacks if pull and wait and not dry_run else [], console) as pulls:
            with on_done(pulls.ready):
                report = deploy.deploy_many(
                    kube,
                    [s.plan for s in stacks],
                    console,
                    cluster=cluster,
                    listed=listed,
                    force=force,
                    dry_run=dry_run,
                    prune=prune,
                    wait=wait,
                    timeout=timeout,
                    guard=guard,
                )
            outcome = DeployOutcome(report, pulls.finish())
    except RolloutError:
        for reasons, archive in guarded.values():
            console.error(bk.rollback_hint(reasons, archive))
        raise
    outcome.requests = sum(kube.requests.values())
    return outcome


class Pulls:
    """The model pulls of a deploy run, one task per stack with OLLAMA_MODELS, each started by
    `ready` as soon as its stack's Ollama Deployment is done rolling out (a rollout.on_done
    callback) while the other workloads are still waited on; `finish` starts any not started
    yet (an Ollama that was not waited on) and waits for all. As a context manager: the pulls'
    progress is shown from entering on (it must enclose the rollouts' progress bar: one live
    display at a time, the inner one ending first), and leaving on an exception (a failed
    rollout, Ctrl-C) cancels every pull (Ollama.cancel) and waits until each has stopped."""

    def __init__(self, kube: Kube, stacks: list[Stack], console: Console):
        from .ollama import Ollama

        self.console = console
        self.stacks = [s for s in stacks if s.settings.models]
        self.clients = [Ollama.from_settings(kube, s.settings) for s in self.stacks]
        self.several = len(stacks) > 1  # lines name the stack when several may pull at once
        self.feeds: list = []
        self.started: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.stacks)), thread_name_prefix="models")
        self._shown = ExitStack()

    def __enter__(self) -> Pulls:
        from .ollama import progress_names

        for stack, client in zip(self.stacks, self.clients, strict=True):
            names = progress_names(stack.settings.models, client.namespace if self.several else "")
            self.feeds.append(self._shown.enter_context(self.console.pull_progress(names)))
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if error is not None:
                for client in self.clients:
                    client.cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)
        finally:
            self._shown.close()

    def ready(self, target: Target, status: Status) -> None:
        """rollout.on_done: start the pulls of the stack whose Ollama Deployment `target` is."""
        for index, client in enumerate(self.clients):
            if (target.kind, target.namespace, target.name) == ("Deployment", client.namespace, client.service):
                self._start(index)

    def _start(self, index: int) -> None:
        from .ollama import pull_models

        with self._lock:
            if index in self.started:
                return
            stack, client = self.stacks[index], self.clients[index]
            self.started[index] = self._pool.submit(
                pull_models,
                client,
                stack.settings.models,
                self.console,
                on_progress=self.feeds[index],
                namespace=client.namespace if self.several else "",
            )

    def finish(self) -> list[PullReport]:
        """Every stack's PullReport, in the stacks' order, once all pulls are done; raises the first
        stack's OllamaError (Ollama not answering) after the others have finished."""
        for index in range(len(self.stacks)):
            self._start(index)
        futures.wait(self.started.values())
        return [self.started[index].result() for index in range(len(self.stacks))]


def rendered(loaded: settings.Settings, *, show_secrets: bool = False) -> list[mf.Manifest]:
    """The objects deploy would apply, without a cluster (generated secrets differ from the
    cluster's); Secret values are replaced by REDACTED unless `show_secrets`."""
    objects = deploy.make_plan(loaded, lambda namespace, name: None).manifests
    if show_secrets:
        return objects
    return [
        mf.Manifest({**m.obj, "data": dict.fromkeys(m.obj.get("data", {}), REDACTED)}, m.source)
        if m.kind == "Secret"
        else m
        for m in objects
    ]


def write_rendered(objects: Iterable[mf.Manifest], directory: Path, *, private: bool) -> list[Path]:
    """One YAML file per target (llm-stack.yaml, monitoring.yaml, k3stack.yaml for generated
    objects) in `directory` (created). `private` (secrets shown): mode 0600 from the first byte,
    even over an existing file with a looser mode; else 0644. Returns the files written.
    Raises K3stackError naming the path when the directory or a file cannot be written (a file
    where the directory should be, no permission, a full disk)."""
    objects = list(objects)
    if directory.exists() and not directory.is_dir():
        raise K3stackError(
            f"--out {directory}: is a file, not a directory",
            "give a directory (created when missing); render writes one file per target into it",
        )
    written = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for target in [*mf.TARGETS, "k3stack"]:
            chosen = [m for m in objects if m.source.split("/")[0] == target]
            if not chosen:
                continue
            path = directory / f"{target}.yaml"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
            if private:
                os.fchmod(fd, 0o600)  # O_CREAT's mode applies only to a new file
            with os.fdopen(fd, "w") as out:
                out.write(mf.to_yaml(chosen))
            written.append(path)
    except OSError as exc:
        where = exc.filename or directory
        raise K3stackError(
            f"--out {directory}: cannot write {where} ({exc.strerror or exc})",
            "give a directory you can write to, with space left",
        ) from None
    return written


def validate_rendered(objects: list[mf.Manifest], k8s_version: str) -> str:
    """Validate every object strictly against Kubernetes `k8s_version` (kubernetes-validate, a dev
    requirement). Returns a one-line summary; raises RenderError listing every problem, or
    K3stackError when kubernetes-validate is not installed."""
    try:
        import kubernetes_validate  # noqa: F401 - checked before use: a dev requirement
    except ImportError:
        raise K3stackError(
            "render --validate needs kubernetes-validate", "pip install -r requirements-dev.txt"
        ) from None
    custom: list[mf.Manifest] = []
    if problems := mf.validate(objects, k8s_version, skipped=custom):
        raise mf.RenderError(problems)
    kinds = sorted({m.kind for m in custom})
    return f"valid: {len(objects) - len(custom)} objects checked strictly against Kubernetes {k8s_version}" + (
        f"; {len(custom)} custom resources ({', '.join(kinds)}) have no bundled schema" if custom else ""
    )


def credential_rows(loaded: settings.Settings, values: dict[str, str]) -> list[list[str]]:
    """[service, url, user, password] for the Open WebUI admin and Netdata; `values` are the
    stack's resolved secrets (plan.secrets.values)."""
    return [
        [
            "Open WebUI (admin)",
            f"https://{loaded['CHAT_HOST']}",
            loaded["WEBUI_ADMIN_EMAIL"],
            values["WEBUI_ADMIN_PASSWORD"],
        ],
        ["Netdata", f"https://{loaded['MONITOR_HOST']}", loaded["NETDATA_USER"], values["NETDATA_PASSWORD"]],
    ]


def not_ready(rows: list[list[str]]) -> str:
    """From deploy.status_rows: `workload (namespace): state` of every row that is not ready, joined."""
    return ", ".join(f"{row[1]} ({row[0]}): {row[3]}" for row in rows if row[3] != "ready")
