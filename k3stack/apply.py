"""kubectl-equivalent apply: server-side apply in dependency order, per-object results
(created / configured / unchanged), conflicts and immutable fields explained, prune, diff."""

from __future__ import annotations

import copy
import difflib
import hashlib
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import yaml

from .kinds import KEPT_KINDS, KINDS, PRUNABLE
from .kube import ApiError, Cluster, Kube, KubeError, NotServedError
from .manifests import MANAGED_BY, MANAGER, Manifest, describe, object_key, phases

FIELD_MANAGER = MANAGER
INSTANCE_LABEL = "k3stack.dev/instance"
# Set on a namespace by the run that created it (value: the instance), by a merge patch outside the
# field manager's apply, so later applies keep it. Only such a namespace is ever deleted by a purge;
# one that existed before k3stack came is used as it is, never labelled as ours, never deleted.
CREATED_BY = "k3stack.dev/created-by"
# On the stack's namespace (named like its instance): the prunable kinds this stack has objects of,
# as applied by the last deploy (`apiVersion/Kind`, sorted, comma-separated). The next deploy lists
# only these and the kinds in k8s/ — not every prunable kind — and still sees what left k8s/.
KINDS_RECORD = "k3stack.dev/prunable-kinds"
PARALLEL = 8
CONFLICT_MANAGER = re.compile(r'conflict with "([^"]+)"')


class ApplyError(KubeError):
    """Applying stopped; `results` holds what was done before."""

    def __init__(self, message: str, results: list[Result]):
        self.results = results
        super().__init__(message)


@dataclass(frozen=True)
class Result:
    """One object's outcome. `describe`: kubectl's spelling; `namespace`: "" for cluster-scoped
    objects; `source`: its file under k8s/ (for a pruned object, its k3stack.dev/source annotation);
    `detail`: why it failed, or a note; `obj`: the object as the server returned it from the apply
    (the manifest itself for a dry-run object in a namespace not created yet; empty when failed or
    pruned)."""

    describe: str  # deployment.apps/ollama
    namespace: str
    action: str  # created | configured | unchanged | pruned | failed
    source: str = ""
    detail: str = ""
    obj: dict = field(default_factory=dict, repr=False, compare=False)


def instance_selector(instance: str | Iterable[str]) -> str:
    """The label selector of one stack's objects (managed-by=k3stack and k3stack.dev/instance=NAME),
    or of several stacks' (a set-based `k3stack.dev/instance in (A,B)`, names sorted)."""
    if isinstance(instance, str):
        return f"{MANAGED_BY}={MANAGER},{INSTANCE_LABEL}={instance}"
    return f"{MANAGED_BY}={MANAGER},{INSTANCE_LABEL} in ({','.join(sorted(instance))})"


def split_by_instance(found: dict[tuple, dict]) -> dict[str, dict[tuple, dict]]:
    """current() of several stacks at once, split per stack (by its instance label)."""
    split: dict[str, dict[tuple, dict]] = {}
    for key, obj in found.items():
        split.setdefault(obj["metadata"]["labels"][INSTANCE_LABEL], {})[key] = obj
    return split


def stamp_instance(manifests: Iterable[Manifest], instance: str) -> list[Manifest]:
    """Mark objects as this stack's (prune only ever looks at objects carrying this label)."""
    stamped = []
    for m in manifests:
        obj = copy.deepcopy(m.obj)
        obj["metadata"].setdefault("labels", {})[INSTANCE_LABEL] = instance
        stamped.append(Manifest(obj, m.source))
    return stamped


def record_created(kube: Kube, namespace: str, instance: str) -> None:
    """Mark `namespace` as created by stack `instance` (CREATED_BY), by a merge patch outside the
    apply's field manager, so later applies keep it. Raises KubeError when the API does."""
    kube.request(
        "PATCH",
        f"/api/v1/namespaces/{namespace}",
        body={"metadata": {"annotations": {CREATED_BY: instance}}},
        content_type="application/merge-patch+json",
    )


def recorded_kinds(namespace: dict | None) -> set[tuple[str, str]] | None:
    """The (apiVersion, kind) pairs KINDS_RECORD on a live namespace names; None when there is no
    record (a namespace from before the record, or none at all): then every prunable kind is listed."""
    text = ((namespace or {}).get("metadata", {}).get("annotations") or {}).get(KINDS_RECORD)
    if text is None:
        return None
    return {tuple(item.rsplit("/", 1)) for item in text.split(",") if "/" in item}


def with_kinds_record(manifests: list[Manifest], instance: str, current: dict[tuple, dict]) -> list[Manifest]:
    """The manifests with KINDS_RECORD set on the stack's namespace (the Namespace named `instance`):
    the prunable kinds of the manifests and of this stack's live objects that leave k8s/ (pruned by
    this run, or kept by --no-prune: a later run must still list them). The record rides on the
    namespace's own apply, so it costs no request, and changes the namespace only when the set does."""
    wanted = {m.key for m in manifests}
    kinds = {(m.obj["apiVersion"], m.kind) for m in manifests}
    kinds |= {(obj["apiVersion"], obj["kind"]) for key, obj in current.items() if key not in wanted}
    record = ",".join(f"{api}/{kind}" for api, kind in sorted(kinds & set(PRUNABLE)))
    out = []
    for m in manifests:
        if m.kind == "Namespace" and m.name == instance:
            obj = copy.deepcopy(m.obj)
            obj["metadata"].setdefault("annotations", {})[KINDS_RECORD] = record
            m = Manifest(obj, m.source)
        out.append(m)
    return out


class Applier:
    """kubectl apply --server-side for one stack: field manager k3stack, objects labelled with the
    stack's `instance`, prune limited to objects carrying that label. `force` takes over fields other
    managers own (kubectl's --force-conflicts); `dry_run` asks the server to check without writing
    (dryRun=All); `cluster` (Kube.discover) spares LIST requests for kinds of unserved API groups."""

    def __init__(
        self,
        kube: Kube,
        *,
        instance: str,
        force: bool = False,
        dry_run: bool = False,
        cluster: Cluster | None = None,
    ):
        self.kube = kube
        self.instance = instance
        self.force = force
        self.dry_run = dry_run
        self.cluster = cluster  # what discovery found: kinds of unserved groups are not listed

    # -- what is there ----------------------------------------------------------------------
    def current(
        self,
        manifests: Iterable[Manifest],
        instances: Iterable[str] | None = None,
        listed: dict[tuple[str, str], list[dict]] | None = None,
    ) -> dict[tuple, dict]:
        """Objects of this stack (or of all `instances`) in the cluster, keyed like Manifest.key: one
        LIST per kind (cluster-wide, so the count does not grow with namespaces) of the kinds in the
        manifests, then of the prunable kinds each stack's namespace records (KINDS_RECORD) that are
        not among them — every prunable kind for a stack without a record. `listed`: (apiVersion,
        kind) -> the items of a LIST already made this run with the same selector (not asked again)."""
        manifests = list(manifests)
        names = [self.instance] if instances is None else sorted(instances)
        selector = instance_selector(self.instance if instances is None else instances)
        listed = listed or {}
        found: dict[tuple, dict] = {}

        def list_kinds(kinds: set[tuple[str, str]]) -> None:
            if self.cluster is not None:
                kinds = {k for k in kinds if self.cluster.serves(k[0])}  # no request for an unserved group
            with ThreadPoolExecutor(PARALLEL) as pool:
                for items in pool.map(list_kind, sorted(kinds)):
                    for obj in items:
                        found[object_key(obj)] = obj

        def list_kind(kind: tuple[str, str]) -> list[dict]:
            if kind in listed:
                return listed[kind]
            try:
                return self.kube.list(*kind, label_selector=selector)
            except NotServedError:
                return []  # e.g. no Traefik CRDs yet: nothing of that kind can be ours

        first = {(m.obj["apiVersion"], m.kind) for m in manifests}
        list_kinds(first)
        records = [recorded_kinds(found.get(("", "Namespace", "", name))) for name in names]
        recorded = set(PRUNABLE) if None in records else set().union(*records) & set(PRUNABLE)
        if more := recorded - first:
            list_kinds(more)
        return found

    # -- apply --------------------------------------------------------------------------------
    def apply(
        self,
        manifests: list[Manifest],
        current: dict[tuple, dict],
        on_result: Callable[[Result], None] = lambda r: None,
    ) -> list[Result]:
        """Apply the manifests phase by phase (k3stack.manifests.phases), the objects of one phase in
        parallel. `current` (from `current()`) tells the action: created (not in it), unchanged (same
        resourceVersion after the apply), configured; a dry run compares the objects instead (volatile
        metadata and status left out). A 409 conflict only with controllers that write back by design
        (Kind.co_managers) is applied again with force. `on_result` is called for each result once its
        phase is done. Returns the results in apply order.

        An object the server rejects becomes a `failed` result (explained by `explain`); after a phase
        with failures, ApplyError (with the results so far) stops the apply — a dry run checks every
        phase first and raises once at the end. Other KubeErrors (API unreachable, 401/403, a kind not
        served) propagate as they are."""
        results: list[Result] = []
        manifests = with_kinds_record(manifests, self.instance, current)
        manifests, created_namespaces = self._claim_namespaces(manifests, current)
        groups = phases(manifests)
        for number, group in enumerate(groups):
            with ThreadPoolExecutor(PARALLEL) as pool:
                phase_results = list(pool.map(lambda m: self._apply_one(m, current, created_namespaces), group))
            for result in phase_results:
                on_result(result)
            results.extend(phase_results)
            failed = [r for r in results if r.action == "failed"]
            last = number == len(groups) - 1
            # A dry run writes nothing, so it checks every phase and reports all rejections at once.
            if failed and (not self.dry_run or last):
                detail = "\n".join(f"  {r.describe} ({r.source}): {r.detail}" for r in failed)
                if self.dry_run:
                    head = f"the server would reject {len(failed)} object(s) (server dry run: nothing was changed)"
                elif last:
                    head = f"{len(failed)} object(s) could not be applied"
                else:
                    head = f"{len(failed)} object(s) could not be applied; later phases were not applied"
                raise ApplyError(f"{head}:\n{detail}", results)
        return results

    def _claim_namespaces(
        self, manifests: list[Manifest], current: dict[tuple, dict]
    ) -> tuple[list[Manifest], set[str]]:
        """(manifests to apply, names of the namespaces this run creates). A namespace that exists
        without any CREATED_BY record is someone else's (or predates the record): it is applied
        without k3stack's labels, so neither prune nor destroy ever selects it. One another k3stack
        stack created stops the apply (ApplyError, nothing written). One GET per namespace not
        already known as ours."""
        created, chosen = set(), []
        for m in manifests:
            if m.kind != "Namespace":
                chosen.append(m)
                continue
            live = current.get(m.key) or self.kube.get("v1", "Namespace", m.name)
            creator = ((live or {}).get("metadata", {}).get("annotations") or {}).get(CREATED_BY)
            if live is None:
                created.add(m.name)
            elif creator and creator != self.instance:
                # Another k3stack stack made it: sharing it would flip its objects (Netdata) between the
                # two stacks on every deploy, and purging one would delete the other's.
                raise ApplyError(
                    f"namespace {m.name} belongs to k3stack stack {creator!r}, not {self.instance!r}: two stacks "
                    f"cannot share it — fix: give this stack its own (MONITORING_NAMESPACE/STACK_NAMESPACE), or, "
                    f"if STACK_NAMESPACE was renamed from {creator!r}, set it back",
                    [],
                )
            elif creator != self.instance:
                obj = copy.deepcopy(m.obj)
                for label in (MANAGED_BY, INSTANCE_LABEL):
                    obj["metadata"].get("labels", {}).pop(label, None)
                m = Manifest(obj, m.source)
            chosen.append(m)
        return chosen, created

    def _apply_one(self, m: Manifest, current: dict[tuple, dict], created_namespaces: set[str]) -> Result:
        before = current.get(m.key)
        try:
            try:
                after = self.kube.apply(m.obj, field_manager=FIELD_MANAGER, force=self.force, dry_run=self.dry_run)
            except ApiError as exc:
                if not by_design_conflict(m.kind, exc):
                    raise
                after = self.kube.apply(m.obj, field_manager=FIELD_MANAGER, force=True, dry_run=self.dry_run)
        except ApiError as exc:
            if self.dry_run and exc.status == 404 and m.namespace in created_namespaces:
                # Server dry-run cannot place an object in a namespace that does not exist yet.
                return Result(m.describe(), m.namespace or "", "created", m.source, "(namespace created first)", m.obj)
            return Result(m.describe(), m.namespace or "", "failed", m.source, explain(m, exc))
        if m.kind == "Namespace" and m.name in created_namespaces and not self.dry_run:
            record_created(self.kube, m.name, self.instance)
        if before is None:
            action = "created"
        elif before["metadata"].get("resourceVersion") == after["metadata"].get("resourceVersion"):
            action = "unchanged"
        else:
            action = "configured"
        if self.dry_run and before is not None:
            action = "configured" if _normalized(before) != _normalized(after) else "unchanged"
        return Result(m.describe(), m.namespace or "", action, m.source, obj=after)

    # -- prune --------------------------------------------------------------------------------
    def prune(
        self,
        manifests: list[Manifest],
        current: dict[tuple, dict],
        on_result: Callable[[Result], None] = lambda r: None,
    ) -> list[Result]:
        """Delete this stack's objects that are no longer in k8s/ (never PVCs, Secrets, Namespaces)."""
        wanted = {m.key for m in manifests}
        results = []
        for key, obj in sorted(current.items()):
            if key in wanted or obj["kind"] in KEPT_KINDS:
                continue
            if (obj["metadata"].get("labels") or {}).get(MANAGED_BY) != MANAGER:
                continue
            meta = obj["metadata"]
            self.kube.delete(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"), dry_run=self.dry_run)
            result = Result(
                describe(obj["apiVersion"], obj["kind"], meta["name"]),
                meta.get("namespace", ""),
                "pruned",
                (meta.get("annotations") or {}).get("k3stack.dev/source", ""),
            )
            on_result(result)
            results.append(result)
        return results


def by_design_conflict(kind: str, exc: ApiError) -> bool:
    """A 409 apply conflict whose every other manager is a controller that writes back by design."""
    co_managers = next((k.co_managers for k in KINDS if k.kind == kind), frozenset())
    if exc.status != 409 or not co_managers:
        return False
    causes = (exc.body.get("details") or {}).get("causes") or []
    managers = {found.group(1) for c in causes if (found := CONFLICT_MANAGER.search(c.get("message", "")))}
    return bool(managers) and len(managers) == len(causes) and managers <= co_managers


# -- errors explained ---------------------------------------------------------------------------
def explain(m: Manifest, exc: ApiError) -> str:
    """What an ApiError from applying `m` means and what to do: a 409 conflict names the other field
    managers (fix: --force, or undo their change); a 422 about immutable or forbidden fields names
    the fields and the kind's fix (Kind.immutable_fix, else delete and deploy again); another 422 the
    invalid fields and the file; a 404 suggests a missing namespace or CRD; anything else is
    `<status> <reason>: <message>`."""
    causes = (exc.body.get("details") or {}).get("causes") or []
    message = exc.body.get("message", "")
    if exc.status == 409 and exc.reason == "Conflict" and causes:
        # "conflict with \"kubectl-edit\" using apps/v1: .spec.replicas"
        owners = "; ".join(c.get("message", "") + (f" ({c['field']})" if c.get("field") else "") for c in causes)
        return (
            f"conflict: another field manager owns fields k3stack sets — {owners}. Fix: deploy with --force to "
            f"take them over, or remove the other tool's change"
        )
    immutable = [
        c
        for c in causes
        if "immutable" in c.get("message", "")
        or "Forbidden" in c.get("reason", "")
        or c.get("reason") == "FieldValueForbidden"
    ]
    if exc.status == 422 and (immutable or "immutable" in message):
        fields = ", ".join(sorted({c.get("field", "?") for c in immutable})) or "spec"
        known = next((k for k in KINDS if k.kind == m.kind and k.immutable_fix), None)
        fix = known.immutable_fix if known else "delete the object yourself and deploy again"
        fix = fix.format(name=m.name, namespace=m.namespace or "default")
        return f"{fields} cannot be changed on an existing {m.kind} — fix: {fix}"
    if exc.status == 422:
        fields = "; ".join(f"{c.get('field', '')}: {c.get('message', '')}" for c in causes) or message
        return f"rejected as invalid (422): {fields} — fix the manifest in k8s/{m.source}"
    if exc.status == 404:
        return f"not found (404): {message} — is its namespace or CRD missing?"
    return f"{exc.status} {exc.reason}: {message}"


# -- diff -----------------------------------------------------------------------------------
VOLATILE_METADATA = ("managedFields", "resourceVersion", "generation", "creationTimestamp", "uid", "selfLink")


def _normalized(obj: dict) -> dict:
    obj = copy.deepcopy(obj)
    obj.pop("status", None)
    meta = obj.get("metadata", {})
    for key in VOLATILE_METADATA:
        meta.pop(key, None)
    (meta.get("annotations") or {}).pop("deployment.kubernetes.io/revision", None)
    if obj.get("kind") == "Secret":
        # Show that a value changed without showing the value.
        obj["data"] = {
            k: f"<redacted sha256:{hashlib.sha256(v.encode()).hexdigest()[:8]}>"
            for k, v in (obj.get("data") or {}).items()
        }
    return obj


def diff(before: dict | None, after: dict, label: str) -> str:
    """A unified diff (like `kubectl diff`) of `before` (the live object; None: it does not exist
    yet) against `after`, as YAML with sorted keys, labelled live/<label> and k8s/<label>. Status and
    volatile metadata (managedFields, resourceVersion, uid, ...) are left out; a Secret's `data`
    values are shown as short sha256 digests, never as values. "" when there is no difference."""
    old = yaml.safe_dump(_normalized(before), sort_keys=True).splitlines(keepends=True) if before else []
    new = yaml.safe_dump(_normalized(after), sort_keys=True).splitlines(keepends=True)
    return "".join(difflib.unified_diff(old, new, f"live/{label}", f"k8s/{label}"))
