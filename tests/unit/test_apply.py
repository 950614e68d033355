"""apply.py's pure decisions: which objects are a stack's (selector, stamping, splitting), which
409s are a controller writing back by design, what an API error means for the person deploying,
and what `inv diff` shows (never a secret value)."""

from __future__ import annotations

import hashlib

import pytest

from k3stack.apply import (
    _normalized,
    by_design_conflict,
    diff,
    explain,
    instance_selector,
    split_by_instance,
    stamp_instance,
)
from k3stack.kube import ApiError
from k3stack.manifests import Manifest


def api(status: int, reason: str = "", message: str = "", causes: list[dict] | None = None) -> ApiError:
    body: dict = {"reason": reason, "message": message}
    if causes is not None:
        body["details"] = {"causes": causes}
    return ApiError(status, body, "PATCH", "/apis/x")


def manifest(kind: str = "Deployment", name: str = "ollama", namespace: str | None = "llm-stack") -> Manifest:
    meta = {"name": name} | ({"namespace": namespace} if namespace else {})
    return Manifest({"apiVersion": "v1", "kind": kind, "metadata": meta}, "llm-stack/ollama.yaml")


def conflict_cause(manager: str) -> dict:
    return {"reason": "FieldManagerConflict", "message": f'conflict with "{manager}" using v1: .spec.x', "field": ".x"}


# -- a stack's objects --------------------------------------------------------------------------
def test_the_selector_of_one_stack_and_of_several():
    assert instance_selector("prod") == "app.kubernetes.io/managed-by=k3stack,k3stack.dev/instance=prod"
    assert instance_selector(["b", "a"]) == "app.kubernetes.io/managed-by=k3stack,k3stack.dev/instance in (a,b)"


def test_found_objects_are_split_by_their_instance_label():
    def obj(instance):
        return {"metadata": {"labels": {"k3stack.dev/instance": instance}}}

    found = {("", "Service", "a", "x"): obj("a"), ("", "Service", "b", "x"): obj("b"), ("", "Pod", "a", "y"): obj("a")}
    assert split_by_instance(found) == {
        "a": {("", "Service", "a", "x"): obj("a"), ("", "Pod", "a", "y"): obj("a")},
        "b": {("", "Service", "b", "x"): obj("b")},
    }
    assert split_by_instance({}) == {}


def test_stamping_adds_the_instance_label_to_a_copy_keeping_the_objects_own_labels():
    labelled = manifest()
    labelled.obj["metadata"]["labels"] = {"app": "ollama"}
    bare = manifest(name="bare")
    stamped = stamp_instance([labelled, bare], "prod")
    assert [m.obj["metadata"]["labels"] for m in stamped] == [
        {"app": "ollama", "k3stack.dev/instance": "prod"},
        {"k3stack.dev/instance": "prod"},
    ]
    assert [m.source for m in stamped] == ["llm-stack/ollama.yaml"] * 2
    assert labelled.obj["metadata"]["labels"] == {"app": "ollama"}  # the input is not changed
    assert "labels" not in bare.obj["metadata"]


# -- conflicts a controller causes by design ----------------------------------------------------
def test_only_a_409_whose_every_cause_is_a_co_manager_is_by_design():
    def conflict(*managers, status=409):
        return api(status, "Conflict", "", [conflict_cause(m) for m in managers])

    assert by_design_conflict("HelmChart", conflict("deploy", "k3s"))
    assert by_design_conflict("HelmChart", conflict("deploy", "helm-controller", "k3s"))  # every co-manager at once
    assert not by_design_conflict("Widget", conflict("deploy"))  # a kind k3stack does not know has none
    assert not by_design_conflict("HelmChart", conflict())  # no cause names a manager
    assert not by_design_conflict("HelmChart", api(409, "Conflict", ""))  # no details at all
    assert not by_design_conflict("HelmChart", conflict("deploy", "kubectl-edit"))
    assert not by_design_conflict("HelmChart", conflict("deploy", status=422))
    assert not by_design_conflict("Deployment", conflict("deploy"))  # no co-managers for this kind
    # a cause whose message names no manager is not by design, even next to one that does
    mixed = api(409, "Conflict", "", [conflict_cause("deploy"), {"message": "something else"}])
    assert not by_design_conflict("HelmChart", mixed)
    no_message = api(409, "Conflict", "", [conflict_cause("deploy"), {"field": ".x"}])
    assert not by_design_conflict("HelmChart", no_message)


# -- errors explained ---------------------------------------------------------------------------
def test_a_conflict_names_every_other_manager_and_field_and_the_fix():
    causes = [conflict_cause("kubectl-edit"), {"message": 'conflict with "helm"'}]
    text = explain(manifest(), api(409, "Conflict", "Apply failed with 2 conflicts", causes))
    assert text == (
        'conflict: another field manager owns fields k3stack sets — conflict with "kubectl-edit" using v1: '
        '.spec.x (.x); conflict with "helm". Fix: deploy with --force to take them over, or remove the '
        "other tool's change"
    )


def test_a_409_without_causes_or_not_a_conflict_is_reported_as_it_came():
    assert explain(manifest(), api(409, "Conflict", "the object has been modified")) == (
        "409 Conflict: the object has been modified"
    )
    assert explain(manifest(), api(409, "AlreadyExists", "exists", [conflict_cause("x")])) == (
        "409 AlreadyExists: exists"
    )


@pytest.mark.parametrize(
    "cause",
    [
        {"reason": "FieldValueInvalid", "message": "Invalid value: field is immutable", "field": "spec.selector"},
        {"reason": "FieldValueForbidden", "message": "updates are forbidden", "field": "spec.selector"},
        {"reason": "SomethingForbidden", "message": "no", "field": "spec.selector"},
    ],
)
def test_an_immutable_field_names_the_field_and_the_kinds_fix(cause):
    text = explain(manifest(), api(422, "Invalid", "is invalid", [cause]))
    assert text == (
        "spec.selector cannot be changed on an existing Deployment — fix: a Deployment's selector is fixed: "
        "delete the Deployment (`kubectl delete deployment ollama -n llm-stack`; its PVC stays) and deploy again"
    )


def test_an_immutable_change_of_a_kind_without_its_own_fix():
    causes = [
        {"reason": "FieldValueInvalid", "message": "field is immutable", "field": "b"},
        {"reason": "FieldValueInvalid", "message": "field is immutable", "field": "a"},
        {"reason": "FieldValueInvalid", "message": "field is immutable"},
        {"reason": "FieldValueInvalid", "message": "a plain invalid value", "field": "zzz"},
    ]
    text = explain(manifest("Service", "web"), api(422, "Invalid", "is invalid", causes))
    assert text == "?, a, b cannot be changed on an existing Service — fix: delete the object yourself and deploy again"


def test_immutable_in_the_message_alone_and_a_cluster_scoped_object():
    job = explain(manifest("Job", "pull"), api(422, "Invalid", "spec.template: field is immutable", []))
    assert job == "spec cannot be changed on an existing Job — fix: delete the object yourself and deploy again"
    sts = explain(manifest("StatefulSet", "db", None), api(422, "Invalid", "field is immutable"))
    assert sts.startswith("spec cannot be changed on an existing StatefulSet — fix: ")
    assert "`kubectl delete statefulset db -n default --cascade=orphan`" in sts


def test_another_422_names_the_invalid_fields_and_the_file():
    causes = [
        {"reason": "FieldValueInvalid", "message": "must be positive", "field": "spec.replicas"},
        {"reason": "FieldValueRequired", "message": "Required value"},
        {"reason": "FieldValueInvalid", "field": "spec.x"},
    ]
    assert explain(manifest(), api(422, "Invalid", "is invalid", causes)) == (
        "rejected as invalid (422): spec.replicas: must be positive; : Required value; spec.x:  "
        "— fix the manifest in k8s/llm-stack/ollama.yaml"
    )
    assert explain(manifest(), api(422, "Invalid", "is invalid")) == (
        "rejected as invalid (422): is invalid — fix the manifest in k8s/llm-stack/ollama.yaml"
    )


def test_a_404_suggests_a_missing_namespace_or_crd():
    assert explain(manifest(), api(404, "NotFound", 'namespaces "x" not found')) == (
        'not found (404): namespaces "x" not found — is its namespace or CRD missing?'
    )
    assert explain(manifest(), api(404, "NotFound")) == "not found (404):  — is its namespace or CRD missing?"


def test_anything_else_is_status_reason_and_message():
    assert explain(manifest(), api(403, "Forbidden", "no")) == "403 Forbidden: no"
    assert explain(manifest(), ApiError(500, {}, "GET", "/x")) == "500 : "


# -- diff ---------------------------------------------------------------------------------------
def live(**extra) -> dict:
    meta = {
        "name": "ollama",
        "managedFields": [{"manager": "k3stack"}],
        "resourceVersion": "42",
        "generation": 3,
        "creationTimestamp": "2026-11-30T00:00:00Z",
        "uid": "u-1",
        "selfLink": "/x",
        "annotations": {"deployment.kubernetes.io/revision": "3", "keep": "me"},
    }
    return {"kind": "Deployment", "metadata": meta, "spec": {"replicas": 1}, "status": {"ready": 1}} | extra


def test_normalizing_drops_status_and_volatile_metadata_only():
    obj = live()
    assert _normalized(obj) == {
        "kind": "Deployment",
        "metadata": {"name": "ollama", "annotations": {"keep": "me"}},
        "spec": {"replicas": 1},
    }
    assert obj == live()  # the live object itself is untouched
    assert _normalized({"kind": "Pod"}) == {"kind": "Pod"}
    assert _normalized({"kind": "Pod", "metadata": {"annotations": None}}) == {
        "kind": "Pod",
        "metadata": {"annotations": None},
    }


def test_a_secret_shows_that_a_value_changed_never_the_value():
    secret = {"kind": "Secret", "metadata": {"name": "s"}, "data": {"password": "czNjcmV0"}}
    digest = hashlib.sha256(b"czNjcmV0").hexdigest()[:8]
    assert _normalized(secret)["data"] == {"password": f"<redacted sha256:{digest}>"}
    assert _normalized({"kind": "Secret", "metadata": {}})["data"] == {}
    assert _normalized({"kind": "ConfigMap", "data": {"a": "b"}})["data"] == {"a": "b"}


def test_diff_of_a_live_object_against_the_manifest():
    text = diff(live(), live(spec={"replicas": 2}), "llm-stack/ollama")
    assert text == (
        "--- live/llm-stack/ollama\n+++ k8s/llm-stack/ollama\n@@ -4,4 +4,4 @@\n"
        "     keep: me\n   name: ollama\n spec:\n-  replicas: 1\n+  replicas: 2\n"
    )
    assert diff(live(), live(), "llm-stack/ollama") == ""


def test_diff_of_an_object_not_there_yet_adds_every_line():
    text = diff(None, {"kind": "Service", "metadata": {"name": "web"}}, "llm-stack/web")
    assert text == (
        "--- live/llm-stack/web\n+++ k8s/llm-stack/web\n@@ -0,0 +1,3 @@\n+kind: Service\n+metadata:\n+  name: web\n"
    )


def test_causes_without_a_message_or_a_reason_are_still_explained():
    assert explain(manifest(), api(409, "Conflict", "", [{"field": ".spec.x"}])) == (
        "conflict: another field manager owns fields k3stack sets —  (.spec.x). Fix: deploy with --force to take "
        "them over, or remove the other tool's change"
    )
    assert explain(manifest(), api(422, "Invalid", "is invalid", [{"message": "bad value", "field": "spec.x"}])) == (
        "rejected as invalid (422): spec.x: bad value — fix the manifest in k8s/llm-stack/ollama.yaml"
    )
    assert explain(manifest(), api(422, "Invalid", "is invalid", [{"field": "spec.y"}])) == (
        "rejected as invalid (422): spec.y:  — fix the manifest in k8s/llm-stack/ollama.yaml"
    )
