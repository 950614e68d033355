"""The kubelet and storage provisioner the test control plane lacks (the KWOK idea).

One thread that:
- registers a Ready Node with capacity and renews its Lease (else the node lifecycle
  controller marks it NotReady and taints it);
- marks pods scheduled to it Running/Ready through pods/status, with a pod IP (pods owned by
  a Job run to completion: Succeeded, exit code 0) and finishes the deletion of Terminating pods;
- for pods routed with `probe=True` (a real process behind the pod IP), runs their startup and
  readiness probes as the kubelet does (probe.py) and reports Ready only once they pass, with the
  kubelet's `Unhealthy` event when one fails;
- binds PVCs by creating a matching hostPath PersistentVolume with a claimRef.
Pod IPs come from the bed's own network namespaces: by default addresses where nothing listens
(a connection is refused locally), or, through `route()`, the address of a test's live server.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kubernetes import client
from kubernetes.client.rest import ApiException

from . import release
from .probe import Verdict, judge
from .rest import call

NODE = "testbed-node"
HELM_ERROR_ANNOTATION = "testbed.k3stack.dev/helm-error"  # on install Jobs + pods whose values helm rejects
MANAGED_BY_ANNOTATION = "helmcharts.cattle.io/managed-by"
# The real controller's OnRemove sleeps 3 s after applying the helm-delete Job before it looks at
# it again (and helm uninstall takes its time): a deleted HelmChart stays Terminating at least that long.
HELM_DELETE_SECONDS = 3.0


# The simulated node's capacity (a kubelet's default 110 pods); bench.deploy raises "pods" for its 20 stacks.
CAPACITY = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}


@dataclass(frozen=True)
class HelmControllerVersion:
    """How one helm-controller release behaves where k3stack can tell."""

    finalizer: str
    status_subresource: bool  # else it writes status with the object (one UPDATE, spec included)
    timeout_bug: bool  # spec.timeout reaches the Job as Go's %s of a *metav1.Duration
    managed_by: bool  # claims charts with the helmcharts.cattle.io/managed-by annotation


HELM_CONTROLLER_VERSIONS = {
    "v0.11": HelmControllerVersion("wrangler.cattle.io/on-helm-chart-remove", False, True, False),
    "v0.12": HelmControllerVersion("wrangler.cattle.io/on-helm-chart-remove", False, True, False),
    "v0.17": HelmControllerVersion("wrangler.cattle.io/on-helm-chart-remove", True, False, True),
}


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(obj: dict) -> float:
    """Seconds since the object was created."""
    created = dt.datetime.strptime(obj["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    return (dt.datetime.now(dt.UTC) - created).total_seconds()


def _raw(response) -> dict:
    return json.loads(response.data)


class NodeSimulator:
    def __init__(
        self,
        api_client: client.ApiClient,
        node_ip: str,
        pod_ips: list[str],
        interval: float = 0.2,
        *,
        node_name: str = NODE,
        labels: Mapping[str, str] | None = None,
        taints: list[dict] | None = None,
        kubelet_version: str = "v1.20.2",
        pods: bool = True,
        claims: bool = True,
        helm: bool = True,
        helm_stamp: Callable[[dict], tuple[dict[str, str], str | None]] | None = None,
    ):
        """`labels` replace the default control-plane role label (kubernetes.io/* ones stay);
        pods/claims/helm=False leave that part out (node-only: Ready + Lease renewals)."""
        self.node = node_name
        self.labels = dict(labels) if labels is not None else {"node-role.kubernetes.io/control-plane": "true"}
        self.taints = list(taints or [])
        self.kubelet_version = kubelet_version
        self._simulate = {"pods": pods, "claims": claims, "helm": helm}
        self._helm_stamp = helm_stamp
        self.helm_controller = "v0.17"  # KubeBed.use_k3s switches it with the HelmChart CRD
        self._helm_fields: tuple[str, frozenset[str]] | None = None
        self.core = client.CoreV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)
        self.node_ip = node_ip
        self._pool = itertools.cycle(pod_ips)
        self._routes: list[tuple[str, dict[str, str], str]] = []
        self._probed: list[tuple[str, dict[str, str], str]] = []
        self._verdicts: dict[str, Verdict] = {}  # pod uid -> its last probe verdict
        self._failing: list[tuple[str, dict[str, str], str]] = []
        self._assigned: dict[str, str] = {}
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="testbed-node-simulator", daemon=True)
        self.errors: list[str] = []

    # -- what tests steer ------------------------------------------------------------------
    def route(self, namespace: str, labels: Mapping[str, str], ip: str, *, probe: bool = False) -> None:
        """Pods in `namespace` whose labels include `labels` get `ip` (a test server's address).
        probe=True: a real process serves there, so the pods' probes are run against it."""
        self._routes.append((namespace, dict(labels), ip))
        if probe:
            self._probed.append((namespace, dict(labels), ip))

    def fail(self, namespace: str, labels: Mapping[str, str], message: str = "simulated crash") -> None:
        """Pods matching never become ready: their container waits in CrashLoopBackOff."""
        self._failing.append((namespace, dict(labels), message))

    def clear(self) -> None:
        self._routes.clear()
        self._probed.clear()
        self._failing.clear()

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._register_node()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _register_node(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.node,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **self.labels,
        }
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node, "labels": labels}}
        if self.taints:
            node["spec"] = {"taints": self.taints}
        try:
            self.core.create_node(node, _preload_content=False)
        except ApiException as exc:
            if exc.status != 409:
                raise
            # Re-registration (a restarted kubelet): labels and taints as now configured.
            self.core.patch_node(
                self.node, {"metadata": {"labels": labels}, "spec": {"taints": self.taints}}, _preload_content=False
            )
        self._heartbeat(initial=True)

    def _heartbeat(self, initial: bool = False) -> None:
        now = _now()
        conditions = [
            {
                "type": t,
                "status": "False",
                "reason": f"KubeletHas{r}",
                "message": "simulated",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
            for t, r in (
                ("MemoryPressure", "SufficientMemory"),
                ("DiskPressure", "NoDiskPressure"),
                ("PIDPressure", "SufficientPID"),
            )
        ] + [
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "simulated kubelet",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
        ]
        capacity = dict(CAPACITY)
        status = {
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "conditions": conditions,
                "addresses": [
                    {"type": "InternalIP", "address": self.node_ip},
                    {"type": "Hostname", "address": self.node},
                ],
                "nodeInfo": {
                    "kubeletVersion": self.kubelet_version,
                    "kubeProxyVersion": self.kubelet_version,
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "containerRuntimeVersion": "containerd://simulated",
                    "osImage": "k3stack test bed",
                    "kernelVersion": "",
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                },
            }
        }
        if initial:
            self.core.patch_node_status(self.node, status, _preload_content=False)
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.node, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": self.node,
                "leaseDurationSeconds": 40,
                "renewTime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            },
        }
        try:
            self.coordination.patch_namespaced_lease(
                self.node, "kube-node-lease", {"spec": lease["spec"]}, _preload_content=False
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.coordination.create_namespaced_lease("kube-node-lease", lease, _preload_content=False)

    def _loop(self) -> None:
        beats = 0
        while not self._stop.wait(self._interval):
            try:
                beats += 1
                if beats % 25 == 0:
                    self._heartbeat()
                if self._simulate["pods"]:
                    self._sync_pods()
                if self._simulate["claims"]:
                    self._bind_claims()
                if self._simulate["helm"]:
                    self._sync_helm_charts()
            except Exception as exc:  # noqa: BLE001 - keep simulating; tests read .errors when something looks off
                self.errors.append(f"{type(exc).__name__}: {getattr(exc, 'body', None) or exc}")
                del self.errors[:-20]

    # -- pods -------------------------------------------------------------------------------
    @staticmethod
    def _matches(pod: dict, rules: list[tuple[str, dict[str, str], str]]) -> str | None:
        labels = pod["metadata"].get("labels") or {}
        for namespace, wanted, value in rules:
            if pod["metadata"]["namespace"] == namespace and all(labels.get(k) == v for k, v in wanted.items()):
                return value
        return None

    def _sync_pods(self) -> None:
        pods = _raw(
            self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.node}", _preload_content=False)
        )["items"]
        for pod in pods:
            meta = pod["metadata"]
            if meta.get("deletionTimestamp"):
                self._finish_deletion(pod)
                continue
            desired = self._desired_status(pod)
            if desired is not None:
                try:
                    self.core.patch_namespaced_pod_status(
                        meta["name"], meta["namespace"], {"status": desired}, _preload_content=False
                    )
                except ApiException as exc:
                    if exc.status not in (404, 409):
                        raise

    def _unhealthy(self, pod: dict, container: str, message: str) -> None:
        """The kubelet's Warning event for a failed probe (reason Unhealthy), on the pod."""
        meta = pod["metadata"]
        now = _now()
        event = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "kind": "Pod",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "apiVersion": "v1",
                "fieldPath": f"spec.containers{{{container}}}",
            },
            "reason": "Unhealthy",
            "message": message,
            "type": "Warning",
            "source": {"component": "kubelet", "host": self.node},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], event, _preload_content=False)
        except ApiException as exc:  # a namespace going away: the event has no reader left
            if exc.status not in (403, 404, 409):
                raise

    def _finish_deletion(self, pod: dict) -> None:
        meta = pod["metadata"]
        try:
            self.core.delete_namespaced_pod(
                meta["name"],
                meta["namespace"],
                grace_period_seconds=0,
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise
        self._assigned.pop(meta["uid"], None)
        self._verdicts.pop(meta["uid"], None)

    def _desired_status(self, pod: dict) -> dict | None:
        meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
        is_job = any(o.get("kind") == "Job" for o in meta.get("ownerReferences") or [])
        failing = self._matches(pod, self._failing) or (meta.get("annotations") or {}).get(HELM_ERROR_ANNOTATION)
        if status.get("phase") in ("Succeeded", "Failed"):
            return None
        if status.get("phase") == "Running" and not failing and not is_job:
            ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)
            if ready and ready["status"] == "True":
                return None
        if (
            failing
            and status.get("containerStatuses")
            and all(c.get("state", {}).get("waiting") for c in status["containerStatuses"])
        ):
            return None
        now = _now()
        ip = self._assigned.setdefault(meta["uid"], self._matches(pod, self._routes) or next(self._pool))
        started = status.get("startTime") or now
        verdict = None
        if not failing and not is_job and self._matches(pod, self._probed):
            verdict = judge(spec["containers"], ip, self._verdicts.get(meta["uid"]))
            if verdict == self._verdicts.get(meta["uid"]) and status.get("phase") == "Running":
                return None  # nothing new to report (the kubelet writes status on a change)
            self._verdicts[meta["uid"]] = verdict
            if verdict.event is not None:
                self._unhealthy(pod, *verdict.event)

        def container(c: dict, *, init: bool) -> dict:
            base = {
                "name": c["name"],
                "image": c["image"],
                "imageID": f"simulated://{c['image']}",
                "containerID": f"containerd://{meta['uid']}-{c['name']}",
                "restartCount": 0,
            }
            if init or (is_job and not failing):  # a failing Job's pod crash-loops (restartPolicy OnFailure)
                return {
                    **base,
                    "ready": False,
                    "started": False,
                    "state": {
                        "terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": now}
                    },
                }
            if failing:
                return {
                    **base,
                    "ready": False,
                    "started": False,
                    "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": failing}},
                }
            unready = verdict is not None and c["name"] in verdict.unready
            has_started = not (verdict is not None and c["name"] in verdict.unstarted)
            running = {"running": {"startedAt": started}}
            return {**base, "ready": not unready, "started": has_started, "state": running}

        ready = "False" if (failing or is_job or (verdict is not None and verdict.unready)) else "True"
        conditions = [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
            {"type": "Initialized", "status": "True", "lastTransitionTime": started},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
            {"type": "Ready", "status": ready, "lastTransitionTime": now},
        ]
        if verdict is not None and verdict.unready:  # the kubelet's words for it
            names = " ".join(sorted(verdict.unready))
            for condition in conditions[2:]:
                condition.update(reason="ContainersNotReady", message=f"containers with unready status: [{names}]")
        return {
            "phase": "Succeeded" if is_job and not failing else "Running",
            "conditions": conditions,
            "hostIP": self.node_ip,
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": started,
            "initContainerStatuses": [container(c, init=True) for c in spec.get("initContainers") or []],
            "containerStatuses": [container(c, init=False) for c in spec["containers"]],
        }

    # -- helm-controller ------------------------------------------------------------------------
    def _helm_call(self, method: str, path: str, body=None, query=(), content_type="application/json"):
        return call(self.core.api_client, method, path, body, query, content_type)

    def _known_fields(self) -> frozenset[str]:
        """The spec fields of the served HelmChart CRD: what this helm-controller's Go types know."""
        if self._helm_fields is None or self._helm_fields[0] != self.helm_controller:
            _, crd = self._helm_call(
                "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/helmcharts.helm.cattle.io"
            )
            version = next(iter((crd.get("spec") or {}).get("versions") or []), {})
            spec = (((version.get("schema") or {}).get("openAPIV3Schema") or {}).get("properties") or {}).get("spec")
            self._helm_fields = (self.helm_controller, frozenset(((spec or {}).get("properties") or {}).keys()))
        return self._helm_fields[1]

    def _sync_helm_charts(self) -> None:
        """What K3s's helm-controller does, minus helm, as the version in `helm_controller` does it:
        - it UPDATEs each HelmChart it reconciles (field manager `deploy`): a finalizer, on v0.17 its
          managed-by annotation, on v0.11/v0.12 (no status subresource) status.jobName -- and `.spec`
          as its Go types know it, so fields its schema lacks are dropped (seen on v0.11.5);
        - it runs the install Job `helm-install-<name>` (recreated when the chart changes) with the
          chart's TIMEOUT as that version renders it (`&Duration{Duration:10m0s,}` before v0.13, which
          helm refuses: the Job's pod crash-loops), and sets the Failed condition on v0.17;
        - "helm" in that Job installs the release (release.py: the Netdata chart's workloads and
          the claims it makes from its values) before the Job completes; changed values upgrade it;
        - a deleted HelmChart stays Terminating behind the finalizer while `helm-delete-<name>`
          runs; then the release's objects (the chart's PVCs too) go, and the finalizer.
        `helm_stamp(chart)` (constructor) may replace what "changed" means -- it returns the Job's
        identifying annotations and an error text for values helm would reject."""
        status, listing = self._helm_call("GET", "/apis/helm.cattle.io/v1/helmcharts")
        if status != 200:
            return
        for chart in listing.get("items") or []:
            chart.setdefault("apiVersion", "helm.cattle.io/v1")
            chart.setdefault("kind", "HelmChart")
            if chart["metadata"].get("deletionTimestamp"):
                self._helm_delete(chart)
            else:
                self._helm_install(chart)

    def _chart_path(self, chart: dict, suffix: str = "") -> str:
        meta = chart["metadata"]
        return f"/apis/helm.cattle.io/v1/namespaces/{meta['namespace']}/helmcharts/{meta['name']}{suffix}"

    def _write_back(self, chart: dict, *, job_name: str | None = None, finalize: bool = False) -> dict | None:
        """The controller's UPDATE (manager `deploy`); None when the chart changed meanwhile."""
        version = HELM_CONTROLLER_VERSIONS[self.helm_controller]
        desired = json.loads(json.dumps(chart))
        meta = desired["metadata"]
        known = self._known_fields()
        desired["spec"] = {k: v for k, v in (chart.get("spec") or {}).items() if k in known}
        finalizers = [f for f in meta.get("finalizers") or [] if f != version.finalizer]
        if not finalize:
            finalizers.append(version.finalizer)
        meta["finalizers"] = finalizers
        if version.managed_by:
            meta.setdefault("annotations", {})[MANAGED_BY_ANNOTATION] = "helm-controller"
        if not version.status_subresource and job_name:
            desired.setdefault("status", {})["jobName"] = job_name
        if desired == chart:
            return chart
        status, written = self._helm_call("PUT", self._chart_path(chart), desired, [("fieldManager", "deploy")])
        return written if status == 200 else None

    def _job(self, namespace: str, name: str) -> dict | None:
        batch = client.BatchV1Api(self.core.api_client)
        try:
            return _raw(batch.read_namespaced_job(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status != 404:
                raise
            return None

    def _delete_job(self, job: dict | None) -> None:
        """Delete a Job (and, in the background, its pods) unless it is gone or already going."""
        if job is not None and not job["metadata"].get("deletionTimestamp"):
            meta = job["metadata"]
            client.BatchV1Api(self.core.api_client).delete_namespaced_job(
                meta["name"], meta["namespace"], propagation_policy="Background", _preload_content=False
            )

    def _helm_install(self, chart: dict) -> None:
        version = HELM_CONTROLLER_VERSIONS[self.helm_controller]
        meta = chart["metadata"]
        namespace, job_name = meta["namespace"], f"helm-install-{meta['name']}"
        written = self._write_back(chart, job_name=job_name)
        if written is None:
            return  # changed meanwhile: the next pass sees the new version
        chart = written
        spec = chart.get("spec") or {}
        timeout = release.timeout_env(spec.get("timeout"), version.timeout_bug)
        if self._helm_stamp is not None:
            stamp, error = self._helm_stamp(chart)
        else:
            digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
            stamp, error = {"helmcharts.helm.cattle.io/spec-hash": digest}, None
        error = error or release.timeout_error(timeout)
        job = self._job(namespace, job_name)
        current = job is not None and all(
            (job["metadata"].get("annotations") or {}).get(k) == v for k, v in stamp.items()
        )
        if job is not None and not current:
            self._delete_job(job)
            return  # recreated on a later pass, once the old one is gone
        # helm runs inside the Job: the release is there by the time the Job completes.
        started = job is None and self._create_helm_job(chart, job_name, ["install"], stamp, error, timeout)
        if started and not error:
            release.install(self.core.api_client, chart, stamp)
        if version.status_subresource:
            self._set_status(chart, job_name, job, error)

    def _set_status(self, chart: dict, job_name: str, job: dict | None, error: str | None) -> None:
        succeeded = bool(((job or {}).get("status") or {}).get("succeeded"))
        failing = bool(error) and job is not None
        conditions = [
            {"type": "JobCreated", "status": "True", "reason": "Job created", "message": f"Created Job {job_name}"}
        ]
        if failing:
            conditions.append({"type": "Failed", "status": "True", "reason": "Job failed", "message": error})
        else:
            conditions.append({"type": "Failed", "status": "False", "reason": "", "message": ""})
        if succeeded:
            conditions[0]["message"] = f"Job {job_name} complete"
        wanted = {"jobName": job_name, "conditions": conditions}
        if (chart.get("status") or {}) == wanted:
            return
        self._helm_call(
            "PATCH",
            self._chart_path(chart, "/status"),
            {"status": wanted},
            [("fieldManager", "deploy")],
            content_type="application/merge-patch+json",
        )

    def _create_helm_job(
        self, chart: dict, job_name: str, args: list[str], stamp: dict, error: str | None, timeout: str | None
    ) -> bool:
        """Create the helm Job; False when the namespace is being deleted (no Job can start there)."""
        meta = chart["metadata"]
        pod_meta: dict = {"labels": {"helmcharts.helm.cattle.io/chart": meta["name"]}}
        annotations = dict(stamp)
        if error:  # the pod carries helm's message; _desired_status makes it crash-loop with it
            annotations[HELM_ERROR_ANNOTATION] = error
            pod_meta["annotations"] = {HELM_ERROR_ANNOTATION: error}
        env = [{"name": "NAME", "value": meta["name"]}]
        if timeout is not None:
            env.append({"name": "TIMEOUT", "value": timeout})
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": job_name,
                "labels": {"helmcharts.helm.cattle.io/chart": meta["name"]},
                "annotations": annotations,
                "ownerReferences": [
                    {"apiVersion": "helm.cattle.io/v1", "kind": "HelmChart", "name": meta["name"], "uid": meta["uid"]}
                ],
            },
            "spec": {
                "backoffLimit": 1000,
                "template": {
                    "metadata": pod_meta,
                    "spec": {
                        "restartPolicy": "OnFailure",
                        "containers": [
                            {
                                "name": "helm",
                                "image": "rancher/klipper-helm:v0.9.8-build20250709",
                                "args": args,
                                "env": env,
                            }
                        ],
                    },
                },
            },
        }
        try:
            client.BatchV1Api(self.core.api_client).create_namespaced_job(
                meta["namespace"], job, _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 403 and "being terminated" in str(exc.body):
                return False
            if exc.status != 409:
                raise
        return True

    def _helm_delete(self, chart: dict) -> None:
        version = HELM_CONTROLLER_VERSIONS[self.helm_controller]
        meta = chart["metadata"]
        if version.finalizer not in (meta.get("finalizers") or []):
            return
        namespace = meta["namespace"]
        self._delete_job(self._job(namespace, f"helm-install-{meta['name']}"))
        job_name = f"helm-delete-{meta['name']}"
        job = self._job(namespace, job_name)
        if job is None:
            if self._create_helm_job(chart, job_name, ["delete"], {}, None, None):
                return
            # The namespace is being deleted: no Job can run; helm's release goes with it.
        elif not (job.get("status") or {}).get("succeeded") or _age(job) < HELM_DELETE_SECONDS:
            return
        release.uninstall(self.core.api_client, chart)
        self._delete_job(job)
        self._write_back(chart, finalize=True)

    # -- storage ----------------------------------------------------------------------------
    def _bind_claims(self) -> None:
        claims = _raw(self.core.list_persistent_volume_claim_for_all_namespaces(_preload_content=False))["items"]
        for claim in claims:
            meta, spec = claim["metadata"], claim["spec"]
            if claim.get("status", {}).get("phase") != "Pending" or spec.get("volumeName"):
                continue
            annotations = meta.get("annotations") or {}
            # Like K3s's local-path (WaitForFirstConsumer): provision once a pod is scheduled.
            if "volume.kubernetes.io/selected-node" not in annotations and spec.get("storageClassName") == "local-path":
                continue
            name = f"pvc-{meta['uid']}"
            volume = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name, "labels": {"testbed.k3stack.dev/simulated": "true"}},
                "spec": {
                    "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                    "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": spec.get("storageClassName") or "",
                    "volumeMode": spec.get("volumeMode") or "Filesystem",
                    "hostPath": {"path": f"/var/lib/testbed/{name}", "type": "DirectoryOrCreate"},
                    "claimRef": {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "namespace": meta["namespace"],
                        "name": meta["name"],
                        "uid": meta["uid"],
                    },
                },
            }
            try:
                self.core.create_persistent_volume(volume, _preload_content=False)
            except ApiException as exc:
                if exc.status != 409:
                    raise
