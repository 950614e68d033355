"""The one registry of the kinds k3stack knows: where each lives in the REST API, when it is
applied, whether deploy may prune it or must keep it, and how its readiness is judged.

Every module that needs per-kind knowledge reads it here — kube (paths without discovery),
manifests (apply order), apply and deploy (prune, keep, destroy order), rollout and smoke
(readiness) — so a new kind is one line. tests/unit/test_kinds.py checks that every kind in
k8s/ is registered and that no other module keeps a table of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from . import readiness
from .readiness import Status


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the REST API (as discovery reports it): `prefix` is /api/v1 or
    /apis/<group>/<version>, `plural` the resource name, `namespaced` its scope."""

    prefix: str
    plural: str
    namespaced: bool

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        """The URL path of the collection (name None) or of one object; `namespace` is ignored
        for cluster-scoped kinds. Names are percent-encoded."""
        parts = [self.prefix]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{quote(namespace)}")
        parts.append(self.plural)
        if name:
            parts.append(quote(name))
        return "/".join(parts)


@dataclass(frozen=True)
class Kind:
    """What k3stack knows of one kind.

    phase: apply order, lowest first (kubectl users know it from applying a sorted directory:
      what others refer to goes first; objects of one phase do not depend on each other);
      destroy goes the other way.
    prunable: deploy deletes this stack's objects of this kind once they leave k8s/ (kubectl
      apply --prune's allowlist idea: only what k3stack may have created).
    kept: never pruned, and deleted by destroy only with --purge — data (PVC), the credentials a
      volume depends on (Secret), and namespaces (deleting one deletes every PVC in it).
    waited: deploy waits for it like `kubectl rollout status`.
    status: its readiness from the object alone (k3stack.readiness); None when it needs more than
      the object (a HelmChart is judged by its install Job) or has no readiness.
    immutable_fix: what to do when an apply is refused for a field that cannot change (422),
      with {name} and {namespace} filled in.
    co_managers: field managers of controllers that write back fields of objects k3stack applies,
      by design; a conflict with only these is not a person's change to protect (k3stack's values
      win with one forced re-apply).
    """

    api_version: str
    kind: str
    resource: Resource
    phase: int
    prunable: bool = False
    kept: bool = False
    waited: bool = False
    status: Callable[[dict], Status] | None = None
    immutable_fix: str = ""
    co_managers: frozenset[str] = frozenset()

    @property
    def key(self) -> tuple[str, str]:
        """(apiVersion, kind), as written in a manifest."""
        return (self.api_version, self.kind)


def _core(plural: str, namespaced: bool = True) -> Resource:
    return Resource("/api/v1", plural, namespaced)


def _group(api_version: str, plural: str, namespaced: bool = True) -> Resource:
    return Resource(f"/apis/{api_version}", plural, namespaced)


RBAC = "rbac.authorization.k8s.io/v1"
KINDS: tuple[Kind, ...] = (
    Kind("v1", "Namespace", _core("namespaces", False), 0, kept=True),
    Kind(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        _group("apiextensions.k8s.io/v1", "customresourcedefinitions", False),
        1,
    ),
    Kind("v1", "ServiceAccount", _core("serviceaccounts"), 2, prunable=True),
    Kind("v1", "Secret", _core("secrets"), 2, kept=True),
    Kind("v1", "ConfigMap", _core("configmaps"), 2, prunable=True),
    Kind(
        "v1",
        "PersistentVolumeClaim",
        _core("persistentvolumeclaims"),
        2,
        kept=True,
        immutable_fix=(
            "a claim's spec cannot change after creation except to grow its storage request, "
            "and K3s's local-path cannot grow volumes: set the size back, or back up the data, "
            "delete the PVC yourself (k3stack never deletes volumes) and deploy again"
        ),
    ),
    Kind(RBAC, "Role", _group(RBAC, "roles"), 2, prunable=True),
    Kind(RBAC, "RoleBinding", _group(RBAC, "rolebindings"), 2, prunable=True),
    Kind(RBAC, "ClusterRole", _group(RBAC, "clusterroles", False), 2),
    Kind(RBAC, "ClusterRoleBinding", _group(RBAC, "clusterrolebindings", False), 2),
    Kind("v1", "Service", _core("services"), 3, prunable=True),
    Kind(
        "apps/v1",
        "Deployment",
        _group("apps/v1", "deployments"),
        4,
        prunable=True,
        waited=True,
        status=readiness.deployment_status,
        immutable_fix=(
            "a Deployment's selector is fixed: delete the Deployment "
            "(`kubectl delete deployment {name} -n {namespace}`; its PVC stays) and deploy again"
        ),
    ),
    Kind(
        "apps/v1",
        "StatefulSet",
        _group("apps/v1", "statefulsets"),
        4,
        prunable=True,
        waited=True,
        status=readiness.statefulset_status,
        immutable_fix=(
            "volumeClaimTemplates and selector of a StatefulSet are fixed: delete it with "
            "`kubectl delete statefulset {name} -n {namespace} --cascade=orphan` (pods and PVCs stay) and deploy again"
        ),
    ),
    Kind(
        "apps/v1",
        "DaemonSet",
        _group("apps/v1", "daemonsets"),
        4,
        prunable=True,
        waited=True,
        status=readiness.daemonset_status,
    ),
    Kind("batch/v1", "Job", _group("batch/v1", "jobs"), 4, prunable=True, status=readiness.plain_job_status),
    # The scheduled backup (k8s/llm-stack/backup.yaml): batch/v1 from Kubernetes 1.21, batch/v1beta1
    # before (served until 1.25); deploy renders the one the cluster serves (deploy.cronjob_api). Not
    # waited: a CronJob has no rollout; `inv status` judges it by its Jobs (readiness.cronjob_status).
    Kind("batch/v1", "CronJob", _group("batch/v1", "cronjobs"), 4, prunable=True),
    Kind("batch/v1beta1", "CronJob", _group("batch/v1beta1", "cronjobs"), 4, prunable=True),
    Kind("networking.k8s.io/v1", "Ingress", _group("networking.k8s.io/v1", "ingresses"), 5, prunable=True),
    Kind("networking.k8s.io/v1", "NetworkPolicy", _group("networking.k8s.io/v1", "networkpolicies"), 5, prunable=True),
    # Traefik's CRDs: traefik.io since Traefik v3 (K3s >= 1.30), traefik.containo.us before.
    Kind("traefik.io/v1alpha1", "Middleware", _group("traefik.io/v1alpha1", "middlewares"), 5, prunable=True),
    Kind(
        "traefik.containo.us/v1alpha1",
        "Middleware",
        _group("traefik.containo.us/v1alpha1", "middlewares"),
        5,
        prunable=True,
    ),
    # K3s's helm-controller CRDs; a HelmChart is waited on through its install Job (rollout.Waiter).
    # The controller UPDATEs the HelmChart it reconciles (field manager `deploy`; `helm-controller`
    # when run on its own), writing `.spec` back as its Go types know it.
    Kind(
        "helm.cattle.io/v1",
        "HelmChart",
        _group("helm.cattle.io/v1", "helmcharts"),
        5,
        prunable=True,
        waited=True,
        co_managers=frozenset({"deploy", "helm-controller", "k3s"}),
    ),
    Kind("helm.cattle.io/v1", "HelmChartConfig", _group("helm.cattle.io/v1", "helmchartconfigs"), 5),
    # The deploy lock (k3stack/lease.py): written by k3stack itself, never applied from k8s/.
    Kind("coordination.k8s.io/v1", "Lease", _group("coordination.k8s.io/v1", "leases"), 5),
)

BY_KEY: dict[tuple[str, str], Kind] = {k.key: k for k in KINDS}
LAST_PHASE = max(k.phase for k in KINDS)
# Views for the modules that need one property of every kind (derived here, never written twice).
KNOWN: dict[tuple[str, str], Resource] = {k.key: k.resource for k in KINDS}
PRUNABLE: tuple[tuple[str, str], ...] = tuple(k.key for k in KINDS if k.prunable)
KEPT_KINDS: frozenset[str] = frozenset(k.kind for k in KINDS if k.kept)
WAITED_KINDS: frozenset[str] = frozenset(k.kind for k in KINDS if k.waited)
PHASES: dict[str, int] = {k.kind: k.phase for k in KINDS}


def phase(kind: str) -> int:
    """The apply phase of a kind by name (0 = first); an unregistered kind goes last, after what
    it may refer to."""
    return PHASES.get(kind, LAST_PHASE)


def status_of(api_version: str, kind: str) -> Callable[[dict], Status] | None:
    """The readiness predicate of (apiVersion, kind), or None (see Kind.status)."""
    known = BY_KEY.get((api_version, kind))
    return known.status if known else None
