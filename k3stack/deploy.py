"""`inv deploy` and friends, as functions: plan (settings → Secrets + rendered manifests), apply,
prune, wait; status and destroy. Everything is validated and rendered before the first write."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from . import kinds as kinds_
from . import manifests as mf
from . import secrets as sec
from .apply import (
    CREATED_BY,
    KEPT_KINDS,
    PRUNABLE,
    Applier,
    ApplyError,
    Result,
    diff,
    instance_selector,
    split_by_instance,
    stamp_instance,
)
from .console import Console
from .errors import command
from .kube import Cluster, Kube, KubeError
from .readiness import cronjob_status
from .rollout import Status, Target, Waiter, targets
from .settings import Settings, cron_interval


@dataclass(frozen=True)
class Plan:
    """One stack ready to apply: its settings, every object (rendered from k8s/ plus the generated
    Secrets, stamped with the instance label, in apply order) and its resolved secrets."""

    settings: Settings
    manifests: list[mf.Manifest]  # Secrets included, instance-stamped, in apply order
    secrets: sec.StackSecrets

    @property
    def instance(self) -> str:
        """The stack's instance name (its STACK_NAMESPACE): the label value its objects carry."""
        return self.settings["STACK_NAMESPACE"]


def read_secret_from(kube: Kube) -> sec.ReadSecret:
    """A secrets reader over the cluster: (namespace, name) -> the Secret's decoded data, or None
    when it does not exist (a 404). Raises KubeError when the cluster cannot be asked."""

    def read(namespace: str, name: str) -> dict[str, str] | None:
        obj = kube.get("v1", "Secret", name, namespace)
        return sec.decode(obj) if obj else None

    return read


def volume_exists_in(kube: Kube) -> sec.VolumeExists:
    """(namespace, name) -> whether that PersistentVolumeClaim exists in the cluster."""
    return lambda namespace, name: kube.get("v1", "PersistentVolumeClaim", name, namespace) is not None


def make_plan(
    settings: Settings, read_secret: sec.ReadSecret, volume_exists: sec.VolumeExists = lambda ns, name: False
) -> Plan:
    """Resolve secrets (secrets.resolve: `read_secret` and `volume_exists` ask the cluster) and
    render every manifest; raises SecretsError/RenderError/SettingsError before anything is written."""
    stack_secrets = sec.resolve(settings, read_secret, volume_exists)
    variables = {**settings.render_vars(), **stack_secrets.checksums}
    rendered = for_version(mf.render(variables, gpu=settings.flag("GPU_ENABLED")), settings["K8S_VERSION"])
    ordered = sorted([*rendered, *stack_secrets.objects], key=lambda m: m.phase)
    return Plan(settings, stamp_instance(ordered, settings["STACK_NAMESPACE"]), stack_secrets)


# -- rendering for the cluster at hand ------------------------------------------------------------
MIN_VERSION = (1, 20)  # the oldest Kubernetes API the manifests are proven on (the bed's kube-apiserver)
# Traefik serves Middleware under traefik.io from 2.10 on (and under both groups until v3);
# Traefik 2.4–2.9 (older K3s) only under traefik.containo.us. The first served one is used.
MIDDLEWARE_APIS = ("traefik.io/v1alpha1", "traefik.containo.us/v1alpha1")
# The spec fields of helm-controller v0.11 (K3s ≤1.22's, the oldest K3s with Traefik 2):
# what a HelmChart is cut to when the cluster's CRD cannot be read.
OLDEST_HELMCHART_FIELDS = frozenset(
    {
        "targetNamespace",
        "chart",
        "version",
        "repo",
        "set",
        "valuesContent",
        "helmVersion",
        "bootstrap",
        "chartContent",
        "jobImage",
        "timeout",
    }
)
# helm-controller before mid-2022 hands spec.timeout to its Job as Go's %s of a *metav1.Duration
# (`&Duration{Duration:10m0s,}`), which helm refuses, so the install crash-loops; the fix
# (k3s-io/helm-controller#150, Aug 2022) predates backOffLimit (#200, Jul 2023). A CRD that
# knows backOffLimit therefore belongs to a controller that parses `10m0s`; on older ones the
# timeout is left out (helm's default applies).
TIMEOUT_PARSED_WITH = "backOffLimit"


# CronJob is served as batch/v1 from Kubernetes 1.21 and as batch/v1beta1 up to 1.24 (removed in 1.25):
# k8s/ writes batch/v1; a cluster older than 1.21 gets batch/v1beta1, the same fields.
CRONJOB_APIS = ("batch/v1", "batch/v1beta1")
CRONJOB_V1_SINCE = (1, 21)


def cronjob_api(minor: tuple[int, int]) -> str:
    """The apiVersion a CronJob is written with for Kubernetes `minor` (1, 20): batch/v1 from 1.21."""
    return CRONJOB_APIS[0] if minor >= CRONJOB_V1_SINCE else CRONJOB_APIS[1]


def _with_api(m: mf.Manifest, api: str) -> mf.Manifest:
    return m if m.obj["apiVersion"] == api else mf.Manifest({**m.obj, "apiVersion": api}, m.source)


def for_version(manifests: list[mf.Manifest], k8s_version: str) -> list[mf.Manifest]:
    """The manifests as Kubernetes `k8s_version` (K8S_VERSION, "1.35") serves them, for `inv render`
    without a cluster: a CronJob under cronjob_api. A deploy renders for the cluster (for_cluster)."""
    major, _, minor = k8s_version.partition(".")
    api = cronjob_api((int(major), int(minor)))
    return [_with_api(m, api) if m.kind == "CronJob" and m.obj["apiVersion"] in CRONJOB_APIS else m for m in manifests]


class ClusterError(KubeError):
    """The cluster cannot run the stack as it is (a missing API, an unsupported version)."""


def for_cluster(plan: Plan, cluster: Cluster) -> Plan:
    """The plan rendered for THIS cluster: Middleware under the Traefik group it serves, a CronJob
    under the batch version its Kubernetes serves CronJobs in (cronjob_api), HelmChart specs with
    only the fields its helm-controller knows. Raises ClusterError (one line: what is
    missing, and the fix) when the cluster cannot run the stack; nothing has been written then."""
    if cluster.minor < MIN_VERSION:
        raise ClusterError(
            f"the cluster runs Kubernetes {cluster.version or '.'.join(map(str, cluster.minor))}, older than the "
            f"{'.'.join(map(str, MIN_VERSION))} k3stack supports — fix: upgrade K3s ({command('bootstrap')} with a "
            f"newer K3S_VERSION)"
        )
    manifests = []
    for m in plan.manifests:
        obj = m.obj
        if m.kind == "Middleware" and obj["apiVersion"] in MIDDLEWARE_APIS:
            api = next((a for a in MIDDLEWARE_APIS if cluster.serves(a)), None)
            if api is None:
                raise ClusterError(
                    f"the cluster serves no Traefik Middleware API (neither traefik.io nor traefik.containo.us), "
                    f"needed for {m.describe()} (k8s/{m.source}): Traefik is disabled or older than 2.x — fix: "
                    f"enable K3s's bundled Traefik (drop `traefik` from K3S_DISABLE / --disable and restart K3s) "
                    f"or install Traefik 2.x/3.x with its CRDs, then deploy again"
                )
            obj = {**obj, "apiVersion": api}
        elif m.kind == "CronJob" and obj["apiVersion"] in CRONJOB_APIS:
            api = cronjob_api(cluster.minor)
            if not cluster.serves(api):
                raise ClusterError(
                    f"the cluster serves no {api} (CronJob on Kubernetes {cluster.version}), needed for "
                    f"{m.describe()} (k8s/{m.source}) — fix: enable that API group version on the API server "
                    f"(--runtime-config), then deploy again"
                )
            obj = {**obj, "apiVersion": api}
        elif m.kind == "NetworkPolicy" and FROM_NODES in (obj["metadata"].get("annotations") or {}):
            obj = from_nodes(obj, cluster.node_sources or ())
        elif m.kind == "HelmChart" and obj["apiVersion"] == "helm.cattle.io/v1":
            if not cluster.serves("helm.cattle.io/v1"):
                raise ClusterError(
                    f"the cluster serves no helm.cattle.io/v1 (K3s's helm-controller), needed for {m.describe()} "
                    f"(k8s/{m.source}) — fix: run K3s without --disable-helm-controller, then deploy again"
                )
            obj = helmchart_for(obj, cluster.helmchart_fields)
        manifests.append(mf.Manifest(obj, m.source) if obj is not m.obj else m)
    return Plan(plan.settings, manifests, plan.secrets)


FROM_NODES = "k3stack.dev/from-nodes"  # on a NetworkPolicy in k8s/: the ports the nodes may reach


def from_nodes(policy: dict, sources: Iterable[str]) -> dict:
    """`policy` (a NetworkPolicy annotated FROM_NODES: "19999,..." TCP ports) with one ingress rule
    admitting those ports from `sources` (Cluster.node_sources: every node's /32 or /128) — how
    host-network pods on other nodes (Netdata's children) reach a pod; traffic from the pod's own
    node is admitted by K3s whatever the rules say. No sources: no rule (it admits nothing)."""
    ports = [int(p) for p in str(policy["metadata"]["annotations"][FROM_NODES]).split(",") if p.strip()]
    sources = list(sources)
    obj = copy.deepcopy(policy)
    rules = list(obj["spec"].get("ingress") or [])
    if sources:
        rules.append(
            {
                "from": [{"ipBlock": {"cidr": cidr}} for cidr in sources],
                "ports": [{"port": port, "protocol": "TCP"} for port in ports],
            }
        )
    obj["spec"]["ingress"] = rules
    return obj


class _CheckVariables(Mapping):
    """The settings' render variables, plus a stand-in for every value k3stack computes from the
    secrets (`*_CHECKSUM`): what check_cluster renders with, before any secret is read."""

    def __init__(self, variables: dict[str, str]):
        self.variables = variables

    def __getitem__(self, name: str) -> str:
        if name in self.variables:
            return self.variables[name]
        if name.endswith(CHECKSUM_SUFFIX):
            return "0" * 16
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.variables)

    def __len__(self) -> int:
        return len(self.variables)


CHECKSUM_SUFFIX = "_CHECKSUM"  # secrets.resolve's computed variables end so (a unit test keeps them in step)


def check_cluster(settings: Settings, cluster: Cluster) -> None:
    """Refuse a cluster that cannot run the stack of `settings` (for_cluster's checks) before anything
    is written or any secret is read: k8s/ is rendered with the settings alone (the secrets'
    checksums stood in for), which says which kinds and API groups the stack needs. Raises
    ClusterError as for_cluster does, RenderError/SettingsError for a manifest that does not render."""
    manifests = mf.render(_CheckVariables(settings.render_vars()), gpu=settings.flag("GPU_ENABLED"))
    for_cluster(Plan(settings, manifests, sec.StackSecrets([], {}, {}, {})), cluster)


def helmchart_for(obj: dict, fields: frozenset[str] | None) -> dict:
    """A HelmChart with only the spec fields the cluster's helm-controller knows. Fields it does
    not know would be dropped when the controller writes the object back (it UPDATEs what it
    reconciles), so k3stack's next apply would conflict with it and never be a no-op."""
    known = OLDEST_HELMCHART_FIELDS if fields is None else fields
    obj = copy.deepcopy(obj)
    spec = obj.get("spec") or {}
    obj["spec"] = {k: v for k, v in spec.items() if k in known}
    if "timeout" in obj["spec"] and TIMEOUT_PARSED_WITH not in known:
        del obj["spec"]["timeout"]
    return obj


def dropped_fields(plan: Plan, adapted: Plan) -> list[str]:
    """What for_cluster left out of HelmCharts, for a note: `netdata: failurePolicy, timeout`."""
    notes = []
    for before, after in zip(plan.manifests, adapted.manifests, strict=True):
        if before.kind == "HelmChart":
            gone = sorted(set(before.obj.get("spec") or {}) - set(after.obj.get("spec") or {}))
            if gone:
                notes.append(f"{before.name}: {', '.join(gone)}")
    return notes


def prepare(kube: Kube, plan: Plan, console: Console | None = None, cluster: Cluster | None = None) -> tuple:
    """(the plan for this cluster, the cluster): one discovery pass unless `cluster` is given."""
    cluster = cluster or kube.discover()
    adapted = for_cluster(plan, cluster)
    notes = dropped_fields(plan, adapted)
    if notes and console is not None:
        console.note(
            f"rendered for this cluster's helm-controller (Kubernetes {cluster.version}): left out "
            f"{'; '.join(notes)} (fields it does not know or cannot parse)"
        )
    return adapted, cluster


def wait_until_gone(kube: Kube, objects: list[dict], console: Console, timeout: float, why: str) -> None:
    """Poll until each object (and a HelmChart's helm-delete Job) no longer exists."""
    pending = []
    for obj in objects:
        meta = obj["metadata"]
        pending.append((obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace")))
        if obj["kind"] == "HelmChart":
            pending.append(("batch/v1", "Job", f"helm-delete-{meta['name']}", meta.get("namespace")))
    if not pending:
        return
    names = ", ".join(f"{mf.describe(a, k, n)} ({ns})" for a, k, n, ns in pending if k != "Job")
    console.line(f"waiting for {names} to be gone ({why})")
    deadline = time.monotonic() + timeout
    while True:
        pending = [p for p in pending if kube.get(*p) is not None]
        if not pending:
            return
        if time.monotonic() >= deadline:
            left = "; ".join(f"{mf.describe(a, k, n)} in {ns}" for a, k, n, ns in pending)
            _, kind, name, namespace = pending[0]
            hint = next(
                (f" — `kubectl -n {ns} logs job/{n}` says why" for a, k, n, ns in pending if k == "Job"),
                f" — `kubectl -n {namespace} describe {kind.lower()} {name}` shows its finalizers",
            )
            raise ClusterError(f"still there after {timeout:.0f}s: {left}{hint}")
        time.sleep(0.5)


@dataclass
class DeployReport:
    """What a deploy did: per-object results (created/configured/unchanged), pruned objects,
    each workload's final rollout Status, the run's wall time in seconds, and the HelmCharts whose
    spec changed ((namespace, name) -> server time of the apply)."""

    results: list[Result] = field(default_factory=list)
    pruned: list[Result] = field(default_factory=list)
    rollouts: dict[Target, Status] = field(default_factory=dict)
    seconds: float = 0.0
    charts_changed: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """Whether any object was created, configured or pruned."""
        return any(r.action != "unchanged" for r in self.results) or bool(self.pruned)

    def counts(self) -> dict[str, int]:
        """Objects per action, e.g. {"configured": 2, "unchanged": 30}."""
        counts: dict[str, int] = {}
        for r in [*self.results, *self.pruned]:
            counts[r.action] = counts.get(r.action, 0) + 1
        return counts


def deploy(
    kube: Kube,
    plan: Plan,
    console: Console,
    *,
    force: bool = False,
    dry_run: bool = False,
    prune: bool = True,
    wait: bool = True,
    timeout: float = 600,
    show_namespace: bool = False,
    current: dict[tuple, dict] | None = None,
    cluster: Cluster | None = None,
    listed: dict[tuple[str, str], list[dict]] | None = None,
    guard: Callable[[Plan, dict[tuple, dict]], None] | None = None,
) -> DeployReport:
    """Apply, prune and wait for one stack; `current` (its live objects) when already listed,
    `cluster` when already discovered (then `plan` is already rendered for it), `listed` the LISTs
    of this stack's objects already made this run (Applier.current). `guard(plan, current)` runs
    before the first write (not on a dry run): the upgrade guard takes a backup there, or raises
    and nothing is applied."""
    started = time.monotonic()
    report = DeployReport()
    if cluster is None:
        plan, cluster = prepare(kube, plan, console)
    applier = Applier(kube, instance=plan.instance, force=force, dry_run=dry_run, cluster=cluster)
    if current is None:
        current = applier.current(plan.manifests, listed=listed)
    # An object still being deleted (a HelmChart whose helm-delete Job runs after `inv destroy`)
    # would swallow what is applied now: wait until it is gone, then create it afresh.
    wanted = {m.key for m in plan.manifests}
    terminating = [o for k, o in current.items() if k in wanted and o["metadata"].get("deletionTimestamp")]
    if terminating and not dry_run:
        wait_until_gone(kube, terminating, console, timeout, "still being deleted")
        current = {k: o for k, o in current.items() if o not in terminating}
    suffix = " (server dry run)" if dry_run else ""

    def show(result: Result) -> None:
        where = f"{result.namespace}/" if show_namespace and result.namespace else ""
        console.result(where + result.describe, result.action + suffix, result.detail)

    if guard is not None and not dry_run:
        guard(plan, current)
    report.results = applier.apply(plan.manifests, current, on_result=show)
    if prune:
        report.pruned = applier.prune(plan.manifests, current, on_result=show)
    report.charts_changed = charts_changed(report.results, current)
    if wait and not dry_run:
        report.rollouts = wait_for_rollouts(kube, plan, console, timeout, report.charts_changed, applied(report))
    report.seconds = time.monotonic() - started
    return report


def deploy_many(
    kube: Kube,
    plans: list[Plan],
    console: Console,
    *,
    wait: bool = True,
    timeout: float = 600,
    cluster: Cluster | None = None,
    listed: dict[tuple[str, str], list[dict]] | None = None,
    **options,
) -> DeployReport:
    """Several stacks (one settings file each, e.g. staging and prod namespaces) in one run:
    applied side by side, then one wait for all their rollouts. `cluster` when already discovered
    (then the plans are already rendered for it); `listed` the LISTs of all these stacks' objects
    already made this run, (apiVersion, kind) -> items (Applier.current)."""
    if len(plans) == 1:
        return deploy(kube, plans[0], console, wait=wait, timeout=timeout, cluster=cluster, listed=listed, **options)
    started = time.monotonic()
    instances = [p.instance for p in plans]
    if len(set(instances)) != len(instances):
        raise ApplyError("two settings files name the same STACK_NAMESPACE; give each stack its own", [])
    monitoring = [p.settings["MONITORING_NAMESPACE"] for p in plans]
    if len(set(monitoring)) != len(monitoring):
        raise ApplyError(
            "two settings files name the same MONITORING_NAMESPACE — fix: give each stack its own "
            "(one Netdata per stack; a shared one would flip between them)",
            [],
        )
    if cluster is None:
        cluster = kube.discover()  # one discovery pass for all stacks
        plans = [prepare(kube, p, console, cluster)[0] for p in plans]
    # One LIST per kind for all stacks, not one per stack.
    lister = Applier(kube, instance=instances[0], cluster=cluster)
    everything = lister.current([m for p in plans for m in p.manifests], instances, listed)
    current = split_by_instance(everything)

    def one(plan: Plan) -> DeployReport:
        return deploy(
            kube,
            plan,
            console,
            wait=False,
            show_namespace=True,
            current=current.get(plan.instance, {}),
            cluster=cluster,
            **options,
        )

    with ThreadPoolExecutor(max_workers=len(plans)) as pool:
        reports = list(pool.map(one, plans))
    merged = DeployReport(
        results=[r for report in reports for r in report.results],
        pruned=[r for report in reports for r in report.pruned],
    )
    merged.charts_changed = {k: v for report in reports for k, v in report.charts_changed.items()}
    if wait and not options.get("dry_run"):
        everything = [m for p in plans for m in p.manifests]
        merged.rollouts = wait_for_rollouts(kube, everything, console, timeout, merged.charts_changed, applied(merged))
    merged.seconds = time.monotonic() - started
    return merged


def applied(report: DeployReport) -> dict[Target, dict]:
    """The objects the apply answered with (status included), by rollout Target: the first round
    of waiting judges these instead of reading them again."""
    return {
        Target(
            r.obj["apiVersion"], r.obj["kind"], r.obj["metadata"].get("namespace", ""), r.obj["metadata"]["name"]
        ): r.obj
        for r in report.results
        if r.obj and r.action != "failed" and "metadata" in r.obj
    }


def charts_changed(results: list[Result], current: dict[tuple, dict]) -> dict[tuple[str, str], str]:
    """HelmCharts whose spec this apply created or changed -> the server's time of that apply (our
    managedFields entry), for the Waiter: only a Job created since then reports on the change."""
    changed = {}
    for r in results:
        if r.obj.get("kind") != "HelmChart" or r.action not in ("created", "configured"):
            continue
        before = current.get(mf.object_key(r.obj))
        if before is not None and before.get("spec") == r.obj.get("spec"):
            continue  # metadata only: the controller does not rerun the chart
        times = [
            f.get("time", "")
            for f in r.obj["metadata"].get("managedFields") or []
            if f.get("manager") == mf.MANAGER and f.get("operation") == "Apply"
        ]
        if times:
            changed[(r.obj["metadata"].get("namespace", ""), r.obj["metadata"]["name"])] = max(times)
    return changed


def wait_for_rollouts(
    kube: Kube,
    plan: Plan | list[mf.Manifest],
    console: Console,
    timeout: float,
    changed_at: dict[tuple[str, str], str] | None = None,
    known: dict[Target, dict] | None = None,
) -> dict[Target, Status]:
    """Wait up to `timeout` seconds for every workload of the plan (or manifests) to be ready, like
    `kubectl rollout status` for all at once, with progress on the console; `changed_at` as in
    rollout.Waiter; `known` as in Waiter.wait. Returns the final Status per workload; raises
    RolloutError saying why not."""
    items = targets(plan.manifests if isinstance(plan, Plan) else plan)
    reported: dict[Target, str] = {}
    with console.progress("waiting for rollouts", total=len(items)) as bar:

        def progress(statuses: dict[Target, Status]) -> None:
            if bar is not None:
                bar.update(bar.task_ids[0], completed=sum(s.done for s in statuses.values()))
            for target, status in statuses.items():
                if reported.get(target) != status.message:
                    reported[target] = status.message
                    if status.done or bar is None:
                        console.line(
                            f"{target.describe()} ({target.namespace}): {status.message}",
                            style="green" if status.done else None,
                        )

        return Waiter(kube, changed_at=changed_at).wait(items, timeout, on_progress=progress, known=known)


def show_diff(kube: Kube, plan: Plan, console: Console) -> int:
    """Print what a deploy would change (server dry run); returns the number of changed objects."""
    plan, cluster = prepare(kube, plan, console)
    applier = Applier(kube, instance=plan.instance, dry_run=True, cluster=cluster)
    current = applier.current(plan.manifests)
    changed = 0
    for result in applier.apply(plan.manifests, current):
        if result.action == "unchanged":
            continue
        changed += 1
        # A non-failed result always carries the object (the dry run's answer, or the manifest).
        before = current.get(mf.object_key(result.obj))
        console.line(diff(before, result.obj, f"{result.namespace}/{result.describe}"))
    wanted = {m.key for m in plan.manifests}
    for key, obj in sorted(current.items()):
        if key not in wanted and obj["kind"] not in KEPT_KINDS:
            changed += 1
            console.line(f"--- would prune {obj['kind'].lower()}/{obj['metadata']['name']} ({key[2]})")
    return changed


def destroy(
    kube: Kube,
    plan: Plan,
    console: Console,
    *,
    purge: bool = False,
    on_result: Callable[[Result], None] | None = None,
    timeout: float = 600,
) -> list[Result]:
    """Delete the stack's objects, newest phase first, and wait until K3s's helm-controller has
    uninstalled the charts (a HelmChart stays Terminating while its helm-delete Job runs): a deploy
    right after works. PVCs (Netdata's included: the stack owns them and points the chart at
    them), Secrets and Namespaces stay unless purge."""
    results = []
    cluster = kube.discover()
    selector = instance_selector(plan.instance)
    kinds = {(m.obj["apiVersion"], m.kind) for m in plan.manifests} | set(PRUNABLE)
    kinds = {k for k in kinds if cluster.serves(k[0])}
    order = sorted(kinds, key=lambda k: (-kinds_.phase(k[1]), k))
    charts: list[dict] = []
    for api_version, kind in order:
        if kind in KEPT_KINDS and not purge:
            continue
        if kind == "Namespace":
            continue  # namespaces last, below
        for obj in kube.list(api_version, kind, label_selector=selector):
            meta = obj["metadata"]
            kube.delete(api_version, kind, meta["name"], meta.get("namespace"))
            if kind == "HelmChart":
                charts.append(obj)
            result = Result(mf.describe(api_version, kind, meta["name"]), meta.get("namespace", ""), "deleted")
            console.result(result.describe, "deleted", f"({result.namespace})")
            results.append(result)
    wait_until_gone(kube, charts, console, timeout, "helm-controller uninstalls the chart")
    if purge:
        for m in plan.manifests:
            if m.kind != "Namespace" or (live := kube.get("v1", "Namespace", m.name)) is None:
                continue
            if (live["metadata"].get("annotations") or {}).get(CREATED_BY) != plan.instance:
                # Not created by this stack: it existed before (someone else's) or another stack
                # made it. Its other contents are not ours to delete.
                console.result(m.describe(), "kept", "(k3stack did not create it; delete it yourself if it should go)")
                continue
            if kube.delete("v1", "Namespace", m.name):
                console.result(m.describe(), "deleted")
                results.append(Result(m.describe(), "", "deleted"))
    return results


HEALTHY = "ready"


def healthy(rows: list[list[str]]) -> bool:
    """Whether every row of status_rows is ready (`inv status` exits 1 otherwise)."""
    return all(row[3] == HEALTHY for row in rows)


STALE_FALLBACK = 24 * 3600  # a schedule status cannot read (edited by hand): runs expected daily (48 h stale)


def status_rows(kube: Kube, plan: Plan, now: datetime | None = None) -> list[list[str]]:
    """One row per workload: ready/desired, state (ready, not ready, FAILED, missing, terminating),
    image tag, volumes (bound + size), URL; then one per CronJob, whose ready column is its last
    success's age ("5h ago", "never yet") or "suspended", and whose state says why it is not ready
    (readiness.cronjob_status at `now`, default the current time)."""
    waiter = Waiter(kube)
    claims = {
        (c["metadata"]["namespace"], c["metadata"]["name"]): c
        for ns in {m.namespace for m in plan.manifests if m.namespace}
        for c in kube.list("v1", "PersistentVolumeClaim", ns)
    }
    urls = {
        "open-webui": f"https://{plan.settings['CHAT_HOST']}",
        "netdata": f"https://{plan.settings['MONITOR_HOST']}",
    }
    rows = []
    for target in targets(plan.manifests):
        status = waiter.status(target)
        manifest = next(m for m in plan.manifests if m.kind == target.kind and m.name == target.name)
        images, volumes = _pod_columns(manifest.obj.get("spec", {}).get("template", {}).get("spec", {}), claims, target)
        if target.kind == "HelmChart":
            images = f"chart {manifest.obj['spec'].get('version', '')}"
        if status.missing:
            state = "missing"
        elif status.terminating:
            state = "terminating"
        else:
            state = HEALTHY if status.done else ("FAILED" if status.failed else "not ready")
        rows.append(
            [
                target.namespace,
                target.describe(),
                "-" if status.missing else f"{status.ready}/{status.desired}",
                state,
                images,
                volumes,
                urls.get(target.name, "-"),
            ]
        )
    for manifest in (m for m in plan.manifests if m.kind == "CronJob"):
        rows.append(cronjob_row(kube, manifest, claims, now or datetime.now(UTC)))
    return rows


def _pod_columns(pod: dict, claims: dict[tuple[str, str], dict], target: Target) -> tuple[str, str]:
    """(image tags, volumes: `claim phase size` each) of a pod template in status_rows."""
    images = ", ".join(mf.image_tag(c["image"]) or c["image"] for c in pod.get("containers", []))
    volumes = []
    for volume in pod.get("volumes", []):
        claim_name = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim_name:
            claim = claims.get((target.namespace, claim_name))
            phase = (claim or {}).get("status", {}).get("phase", "missing")
            size = ((claim or {}).get("status", {}).get("capacity") or {}).get("storage", "")
            volumes.append(f"{claim_name} {phase} {size}".strip())
    return images, "; ".join(volumes) or "-"


def cronjob_row(kube: Kube, manifest: mf.Manifest, claims: dict[tuple[str, str], dict], now: datetime) -> list[str]:
    """status_rows' row of a CronJob: read under the batch version the cluster serves it in (the
    manifest's first, then the other: two GETs only on a cluster older than the render), its Jobs
    with one LIST (by its job template's labels), judged by readiness.cronjob_status against twice
    the longest gap of its live schedule (settings.cron_interval; one it cannot read: a day)."""
    namespace = manifest.namespace or ""
    apis = sorted(CRONJOB_APIS, key=lambda api: api != manifest.obj["apiVersion"])
    live = next((obj for api in apis if (obj := kube.get(api, "CronJob", manifest.name, namespace))), None)
    target = Target(live["apiVersion"] if live else apis[0], "CronJob", namespace, manifest.name)
    job = manifest.obj["spec"]["jobTemplate"]
    images, volumes = _pod_columns(job["spec"]["template"]["spec"], claims, target)
    if live is None:
        return [namespace, target.describe(), "-", "missing", images, volumes, "-"]
    if live["metadata"].get("deletionTimestamp"):
        return [namespace, target.describe(), "-", "terminating", images, volumes, "-"]
    labels = (job.get("metadata") or {}).get("labels") or {}
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    jobs = kube.list("batch/v1", "Job", namespace, label_selector=selector)
    interval = cron_interval(str((live.get("spec") or {}).get("schedule", ""))) or STALE_FALLBACK
    last, status = cronjob_status(live, jobs, now, interval)
    state = HEALTHY if status.done else ("FAILED: " if status.failed else "not ready: ") + status.message
    return [namespace, target.describe(), last, state, images, volumes, "-"]
