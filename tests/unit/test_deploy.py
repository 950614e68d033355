"""Rendering for the cluster at hand (issue 13): deploy.for_cluster and the apply conflicts that
are a controller's by design, as pure functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from k3stack import deploy as stack
from k3stack import settings
from k3stack.apply import by_design_conflict
from k3stack.kube import ApiError, Cluster

V011 = frozenset(stack.OLDEST_HELMCHART_FIELDS)
V012 = V011 | {"failurePolicy"}
V017 = V012 | {"backOffLimit", "createNamespace", "authSecret", "podSecurityContext"}


@pytest.fixture(scope="module")
def plan():
    loaded = settings.load(
        env_dir=Path("/nonexistent"), environ={"DOMAIN": "203.0.113.10.sslip.io", "ACME_EMAIL": "ops@example.com"}
    )
    return stack.make_plan(loaded, lambda namespace, name: None)


def cluster(*apis: str, fields=V017, minor=(1, 31)) -> Cluster:
    return Cluster(f"v{minor[0]}.{minor[1]}.0+k3s1", minor, frozenset({"v1", "helm.cattle.io/v1", *apis}), fields)


def one(plan, kind: str) -> dict:
    return next(m.obj for m in plan.manifests if m.kind == kind)


@pytest.mark.parametrize(
    ("fields", "kept", "dropped"),
    [
        (V011, set(), {"failurePolicy", "timeout"}),  # K3s <= 1.22: neither known
        (V012, {"failurePolicy"}, {"timeout"}),  # knows failurePolicy, renders timeout as &Duration{...}
        (V017, {"failurePolicy", "timeout"}, set()),
        (None, set(), {"failurePolicy", "timeout"}),  # CRD not readable: the oldest controller's fields
    ],
)
def test_helmchart_keeps_only_what_the_controller_knows_and_parses(plan, fields, kept, dropped):
    adapted = stack.for_cluster(plan, cluster("traefik.io/v1alpha1", fields=fields))
    spec = one(adapted, "HelmChart")["spec"]
    assert kept <= set(spec)
    assert not dropped & set(spec)
    assert {"repo", "chart", "version", "valuesContent", "targetNamespace"} <= set(spec)
    assert one(plan, "HelmChart")["spec"]["failurePolicy"] == "abort"  # the plan itself is untouched
    notes = stack.dropped_fields(plan, adapted)
    assert notes == ([f"netdata: {', '.join(sorted(dropped))}"] if dropped else [])


@pytest.mark.parametrize(
    ("served", "expected"),
    [
        (("traefik.io/v1alpha1",), "traefik.io/v1alpha1"),
        (("traefik.containo.us/v1alpha1",), "traefik.containo.us/v1alpha1"),
        (("traefik.containo.us/v1alpha1", "traefik.io/v1alpha1"), "traefik.io/v1alpha1"),
    ],
)
def test_middleware_goes_to_the_traefik_group_the_cluster_serves(plan, served, expected):
    adapted = stack.for_cluster(plan, cluster(*served))
    assert {m.obj["apiVersion"] for m in adapted.manifests if m.kind == "Middleware"} == {expected}


def test_no_traefik_is_one_line_naming_what_is_missing_and_the_fix(plan):
    with pytest.raises(stack.ClusterError) as refused:
        stack.for_cluster(plan, cluster())
    message = str(refused.value)
    assert "\n" not in message
    assert "neither traefik.io nor traefik.containo.us" in message
    assert "needed for middleware.traefik.io/" in message
    assert "fix: enable K3s's bundled Traefik" in message


def test_no_helm_controller_and_an_old_kubernetes_are_refused(plan):
    no_helm = Cluster("v1.31.0+k3s1", (1, 31), frozenset({"v1", "traefik.io/v1alpha1"}), None)
    with pytest.raises(stack.ClusterError, match=r"no helm.cattle.io/v1 .*--disable-helm-controller"):
        stack.for_cluster(plan, no_helm)
    with pytest.raises(stack.ClusterError, match=r"Kubernetes v1.19.0\+k3s1, older than the 1.20 k3stack supports"):
        stack.for_cluster(plan, cluster("traefik.io/v1alpha1", minor=(1, 19)))


def conflict(*managers: str, status: int = 409) -> ApiError:
    causes = [{"message": f'conflict with "{m}" using helm.cattle.io/v1', "field": ".spec"} for m in managers]
    return ApiError(status, {"reason": "Conflict", "details": {"causes": causes}}, "PATCH", "/x")


def test_only_the_helm_controllers_write_back_is_a_conflict_by_design():
    assert by_design_conflict("HelmChart", conflict("deploy"))
    assert by_design_conflict("HelmChart", conflict("helm-controller"))
    assert not by_design_conflict("HelmChart", conflict("deploy", "kubectl-edit"))  # a person's change too
    assert not by_design_conflict("HelmChart", conflict("kubectl-edit"))
    assert not by_design_conflict("Deployment", conflict("deploy"))
    assert not by_design_conflict("HelmChart", conflict("deploy", status=422))
