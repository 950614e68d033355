"""securityContext, resources and image pins of every container k3stack defines, from one table.

The objects are rendered as deploy renders them (deploy.make_plan over k8s/llm-stack and
k8s/monitoring, the pull Job of k8s/jobs as `inv models.pull --in-cluster` renders it), and the
values k3stack hands to Helm charts are read from their valuesContent: Netdata's HelmChart (its
images and resources; its securityContexts are the chart's templates') and the Traefik
HelmChartConfig that bootstrap places (k8s/k3s), which adds an init container of its own.

TABLE holds one row per container and init container. The rendered set must equal the table's
keys (a new container without a row fails) and each row's fields must match. The hardened
default is HARDENED; every row that departs from it says why (the same reasons as the checkov
skip annotations in k8s/, or "reported" where the manifest gives none). Rows write what the
manifests do now: a change in k8s/ changes a row, in the same commit, where a reviewer sees it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from k3stack import bootstrap, pulljob, settings
from k3stack import deploy as stack
from k3stack import manifests as mf

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"DOMAIN": "203.0.113.10.sslip.io", "ACME_EMAIL": "ops@example.com"}
CHART = "<the chart's template>"  # a field the chart decides: k3stack's values do not set it
CHART_IMAGE = "<the chart's image at its pinned version>"  # no tag in the values: the chart's own


@dataclass(frozen=True)
class S:
    """A field whose value is a setting (its default in these tests): the manifest reads ${name}."""

    name: str


@dataclass(frozen=True)
class Container:
    """What a container gets, as rendered (securityContext fields: the effective ones, the
    container's own over its pod's). None: not set. CHART: left to a Helm chart's template."""

    image: str | S
    pull: str | None  # imagePullPolicy
    requests: dict | str | None
    limits: dict | str | None
    run_as_non_root: bool | str | None
    run_as_user: int | str | None
    read_only_root: bool | str | None  # readOnlyRootFilesystem
    allow_privilege_escalation: bool | str | None
    privileged: bool | str  # securityContext.privileged (unset: False)
    drop: tuple | str  # capabilities.drop
    add: tuple | str  # capabilities.add
    seccomp: str | None  # seccompProfile.type


@dataclass(frozen=True)
class Row(Container):
    why: str = ""  # the reason for every field that departs from HARDENED
    gpu: bool = False  # GPU_ENABLED=true adds limits nvidia.com/gpu: 1 (k3stack/manifests.py _with_gpu)


HARDENED = {
    "pull": "IfNotPresent",
    "run_as_non_root": True,
    "read_only_root": True,
    "allow_privilege_escalation": False,
    "privileged": False,
    "drop": ("ALL",),
    "add": (),
    "seccomp": "RuntimeDefault",
}
SECURITY = (
    *("run_as_non_root", "run_as_user", "read_only_root", "allow_privilege_escalation", "privileged"),
    *("drop", "add", "seccomp"),
)
CHART_SECURITY = dict.fromkeys(SECURITY, CHART)
ROOT_WHY = "the image runs as root and root owns its files and existing volumes (K3s local-path ignores fsGroup)"


def resources(cpu: str | S, memory: str | S, cpu_limit: str | S, memory_limit: str | S) -> dict:
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu_limit, "memory": memory_limit}}


def from_settings(component: str) -> dict:
    c = component.upper()
    return resources(S(f"{c}_CPU_REQUEST"), S(f"{c}_MEMORY_REQUEST"), S(f"{c}_CPU_LIMIT"), S(f"{c}_MEMORY_LIMIT"))


def hardened(image: str | S, res: dict, uid: int, **departures) -> Row:
    return Row(image=image, run_as_user=uid, **{**HARDENED, **res, **departures})


def chart(image: str, res: dict | None, **departures) -> Row:
    res = res or {"requests": CHART, "limits": CHART}
    return Row(image=image, pull="IfNotPresent", **{**res, **CHART_SECURITY, **departures})


# (workload, container): init containers as "init/<name>". Workloads by kind and app name (the
# pull Job's name carries a hash of its model list; its app.kubernetes.io/name does not).
TABLE: dict[tuple[str, str], Row] = {
    ("Deployment/ollama", "ollama"): hardened(
        S("OLLAMA_IMAGE"),
        from_settings("ollama"),
        uid=None,
        run_as_non_root=None,
        read_only_root=None,
        gpu=True,
        why=f"root: {ROOT_WHY} (models in /root/.ollama); root filesystem writable: Ollama (model runners, "
        "GPU libraries) is not yet proven read-only (ollama.yaml's checkov skips)",
    ),
    ("Deployment/open-webui", "init/wait-for-postgres"): hardened(
        S("POSTGRES_IMAGE"), resources("10m", "16Mi", "100m", "64Mi"), uid=999
    ),
    ("Deployment/open-webui", "open-webui"): hardened(
        S("OPEN_WEBUI_IMAGE"),
        from_settings("open_webui"),
        uid=None,
        run_as_non_root=None,
        read_only_root=None,
        why=f"root: {ROOT_WHY} (/app); root filesystem writable: Open WebUI writes under /app/backend "
        "at start and run time (open-webui.yaml's checkov skips)",
    ),
    ("Deployment/postgres", "postgres"): hardened(S("POSTGRES_IMAGE"), from_settings("postgres"), uid=999),
    ("Deployment/redis", "redis"): hardened(S("REDIS_IMAGE"), from_settings("redis"), uid=999),
    ("Job/ollama-pull", "pull"): hardened(S("OLLAMA_IMAGE"), resources("50m", "64Mi", "500m", "256Mi"), uid=65534),
    # The scheduled backup (backup.yaml): PostgreSQL's image for its pg_dump, as PostgreSQL's user.
    ("CronJob/postgres-backup", "backup"): hardened(
        S("POSTGRES_IMAGE"), resources("50m", "64Mi", "1", "512Mi"), uid=999
    ),
    # Netdata's chart: k3stack sets images and resources; the containers' securityContexts (and the
    # child's hostPID/hostIPC/SYS_PTRACE/SYS_ADMIN, justified in netdata.yaml) are the chart's.
    ("HelmChart/netdata", "parent"): chart(
        CHART_IMAGE,
        resources("100m", "256Mi", "1", "1Gi"),
        why="securityContext: the chart's template (no value sets it; test_policy checks what the values allow)",
    ),
    ("HelmChart/netdata", "child"): chart(
        CHART_IMAGE,
        resources("100m", "128Mi", "1", "512Mi"),
        why="securityContext: the chart's template, which hard-codes SYS_PTRACE + SYS_ADMIN (netdata.yaml)",
    ),
    ("HelmChart/netdata", "k8sState"): chart(
        CHART_IMAGE,
        resources("50m", "128Mi", "500m", "384Mi"),
        why="securityContext: the chart's template (no value sets it)",
    ),
    ("HelmChart/netdata", "child/sd"): chart(
        CHART_IMAGE,
        None,
        why="the service-discovery sidecar: image tag, resources (the chart's only limits) and "
        "securityContext are the chart's defaults; k3stack sets its pull policy",
    ),
    ("HelmChart/netdata", "init"): chart(
        "alpine:3.22.1",
        None,
        why="the chart's init containers (initContainersImage, pinned here instead of the chart's "
        "alpine:latest): resources and securityContext are the chart's",
    ),
    # Traefik (K3s's chart), configured by the HelmChartConfig bootstrap places: its init container
    # fixes acme.json's owner and mode on the root-owned volume, so it runs as root. As its values
    # give it (pod-level: only fsGroup); what K3s's Traefik chart adds is the chart's.
    ("HelmChartConfig/traefik", "init/volume-permissions"): Row(
        image="busybox:1.37.0",
        pull=None,
        requests=None,
        limits=None,
        run_as_non_root=False,
        run_as_user=0,
        read_only_root=None,
        allow_privilege_escalation=None,
        privileged=False,
        drop=(),
        add=(),
        seccomp=None,
        why="root: chown/chmod of acme.json on a root-owned local-path volume; pull policy unset (a pinned "
        "tag: Kubernetes' default is IfNotPresent); reported: no resources, no capability drop "
        "(CHOWN would do), allowPrivilegeEscalation and seccomp unset (traefik-config.yaml gives no reason)",
    ),
}


# -- rendering, as deploy does -----------------------------------------------------------------------
def load(**extra: str) -> settings.Settings:
    return settings.load(env_dir=Path("/nonexistent"), environ={**SETTINGS, **extra})


def rendered_objects(loaded: settings.Settings) -> list[dict]:
    """What deploy applies, the pull Job, and the K3s manifests bootstrap places."""
    objects = [m.obj for m in stack.make_plan(loaded, lambda namespace, name: None).manifests]
    objects.append(pulljob.job_manifest(loaded, ["llama3.2:1b"]).obj)
    for data in bootstrap.traefik_manifests(loaded).values():
        objects += [o for o in yaml.safe_load_all(data) if o]
    return objects


def pod_specs(node, path=()):
    """Every pod spec inside an object (any dict with a `containers` list), wherever it sits."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield node
        for key, value in node.items():
            yield from pod_specs(value, (*path, key))
    elif isinstance(node, list):
        for item in node:
            yield from pod_specs(item, path)


def seen_container(pod: dict, container: dict) -> Container:
    pod_sc, sc = pod.get("securityContext") or {}, container.get("securityContext") or {}
    effective = {k: pod_sc[k] for k in ("runAsNonRoot", "runAsUser", "seccompProfile") if k in pod_sc} | sc
    caps = sc.get("capabilities") or {}
    res = container.get("resources") or {}
    return Container(
        image=container["image"],
        pull=container.get("imagePullPolicy"),
        requests=res.get("requests"),
        limits=res.get("limits"),
        run_as_non_root=effective.get("runAsNonRoot"),
        run_as_user=effective.get("runAsUser"),
        read_only_root=sc.get("readOnlyRootFilesystem"),
        allow_privilege_escalation=sc.get("allowPrivilegeEscalation"),
        privileged=sc.get("privileged", False),
        drop=tuple(caps.get("drop") or ()),
        add=tuple(caps.get("add") or ()),
        seccomp=(effective.get("seccompProfile") or {}).get("type"),
    )


def values_of(obj: dict) -> dict:
    return yaml.safe_load(obj["spec"]["valuesContent"])


def keys_anywhere(node) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in keys_anywhere(v)}
    if isinstance(node, list):
        return {k for v in node for k in keys_anywhere(v)}
    return set()


def netdata_containers(obj: dict) -> dict[tuple[str, str], Container]:
    """The Netdata chart's containers as k3stack's values shape them."""
    values = values_of(obj)

    def image(section: dict) -> str:
        # no tag: the chart's own (Netdata's appVersion, the sd sidecar's pin) at spec.version
        return f"{section['repository']}:{section['tag']}" if "tag" in section else CHART_IMAGE

    def one(section: dict, part: dict | None) -> Container:
        res = (part or {}).get("resources") or {}
        return Container(
            image=image(section),
            pull=section.get("pullPolicy"),
            requests=res.get("requests", CHART),
            limits=res.get("limits", CHART),
            **CHART_SECURITY,
        )

    key = f"HelmChart/{obj['metadata']['name']}"
    out = {(key, part): one(values["image"], values[part]) for part in ("parent", "child", "k8sState")}
    out[key, "child/sd"] = one(values["sd"]["image"], values["sd"])
    out[key, "init"] = one(values["initContainersImage"], None)
    return out


def traefik_containers(obj: dict) -> dict[tuple[str, str], Container]:
    values = values_of(obj)
    pod = {"securityContext": values.get("podSecurityContext") or {}}
    key = f"HelmChartConfig/{obj['metadata']['name']}"
    init = (values.get("deployment") or {}).get("initContainers") or []
    return {(key, f"init/{c['name']}"): seen_container(pod, c) for c in init}


def containers(objects: list[dict]) -> dict[tuple[str, str], Container]:
    found: dict[tuple[str, str], Container] = {}
    for obj in objects:
        if obj["kind"] == "HelmChart" and obj["spec"]["chart"] == "netdata":
            found |= netdata_containers(obj)
        elif obj["kind"] == "HelmChartConfig" and obj["metadata"]["name"] == "traefik":
            found |= traefik_containers(obj)
        metadata = obj["metadata"]
        workload = f"{obj['kind']}/{(metadata.get('labels') or {}).get('app.kubernetes.io/name', metadata['name'])}"
        for pod in pod_specs(obj):
            for group, prefix in (("initContainers", "init/"), ("containers", "")):
                for c in pod.get(group) or []:
                    assert (workload, prefix + c["name"]) not in found, f"two containers {workload} {c['name']}"
                    found[workload, prefix + c["name"]] = seen_container(pod, c)
    return found


def expected(row: Row, loaded: settings.Settings) -> Container:
    """The row with its settings filled in (and the GPU limit when GPU_ENABLED)."""

    def fill(value):
        if isinstance(value, S):
            return loaded[value.name]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    fields = {f.name: fill(getattr(row, f.name)) for f in dataclasses.fields(Container)}
    if row.gpu and loaded.flag("GPU_ENABLED"):
        fields["limits"] = {**fields["limits"], "nvidia.com/gpu": 1}
    return Container(**fields)


def differences(key, want: Container, got: Container) -> list[str]:
    return [
        f"{key[0]} {key[1]}: {f.name} is {getattr(got, f.name)!r}, the table says {getattr(want, f.name)!r}"
        for f in dataclasses.fields(Container)
        if getattr(got, f.name) != getattr(want, f.name)
    ]


# Rendered twice: the defaults, and GPU on with every image pinned by digest as well as by tag.
DIGEST = "@sha256:" + "0123456789abcdef" * 4
VARIANTS = {
    "defaults": {},
    "gpu-and-digests": {
        "GPU_ENABLED": "true",
        **{f"{n}_IMAGE": settings.BY_NAME[f"{n}_IMAGE"].default + DIGEST for n in ("OLLAMA", "POSTGRES", "REDIS")},
        "OPEN_WEBUI_IMAGE": settings.BY_NAME["OPEN_WEBUI_IMAGE"].default + DIGEST,
    },
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def rendered(request):
    loaded = load(**VARIANTS[request.param])
    objects = rendered_objects(loaded)
    return loaded, objects, containers(objects)


# -- the table against the rendered stack ------------------------------------------------------------
def test_every_container_has_a_row_and_every_row_a_container(rendered):
    _, _, found = rendered
    missing, extra = sorted(set(found) - set(TABLE)), sorted(set(TABLE) - set(found))
    assert not missing, f"containers without a row in TABLE (add one: image, resources, securityContext): {missing}"
    assert not extra, f"rows of TABLE without a container (removed or renamed?): {extra}"


@pytest.mark.parametrize("key", list(TABLE), ids=["/".join(k) for k in TABLE])
def test_each_container_matches_its_row(rendered, key):
    loaded, _, found = rendered
    assert key in found, f"{key} is not rendered"
    problems = differences(key, expected(TABLE[key], loaded), found[key])
    assert not problems, "\n".join(problems)


def test_every_image_is_pinned(rendered):
    """A tag that does not move (not latest/main/...), or a digest; a chart image (no tag in the
    values) is pinned by the chart's exact version."""
    _, objects, found = rendered
    problems = []
    for key, c in found.items():
        if c.image == CHART_IMAGE:
            continue
        assert isinstance(c.image, str)
        pinned = "@sha256:" in c.image or (mf.image_tag(c.image) not in ("", "latest", "main", "master", "dev"))
        if not pinned or settings.image(c.image) is not None:
            problems.append(f"{key}: {c.image} is not pinned")
    for obj in objects:
        if obj["kind"] == "HelmChart":
            assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", str(obj["spec"]["version"])), obj["spec"]["version"]
    assert not problems, "\n".join(problems)


def test_every_container_k3stack_sizes_has_requests_and_limits_with_limits_at_least_requests(rendered):
    _, _, found = rendered
    problems = []
    for key, c in found.items():
        row = TABLE.get(key)
        if CHART in (c.requests, c.limits) or (row is not None and row.requests is None):
            continue  # the chart's own, or a departure the table's row explains
        for resource in ("cpu", "memory"):
            request = settings.parse_quantity(str((c.requests or {}).get(resource, "")))
            limit = settings.parse_quantity(str((c.limits or {}).get(resource, "")))
            if request is None or limit is None:
                problems.append(f"{key}: {resource} request {request} / limit {limit}: both must be set")
            elif limit < request:
                problems.append(f"{key}: {resource} limit {limit} is under its request {request}")
    assert not problems, "\n".join(problems)


def test_the_charts_values_set_no_security_context(rendered):
    """The Netdata rows leave securityContexts to the chart (CHART): a value that sets one must get
    its own fields in the table."""
    _, objects, _ = rendered
    [netdata] = [o for o in objects if o["kind"] == "HelmChart" and o["spec"]["chart"] == "netdata"]
    keys = keys_anywhere(values_of(netdata))
    security = {k for k in keys if re.search(r"securitycontext|capabilit|privileged|runas", k, re.I)}
    assert not security, f"Netdata's values set {sorted(security)}: write them into TABLE's Netdata rows"
    assert not {k for k in keys if re.search(r"containers$", k, re.I)}, "a container the table does not know"


# -- the table itself --------------------------------------------------------------------------------
def test_every_departure_from_the_hardened_default_says_why():
    problems = []
    for key, row in TABLE.items():
        departs = [n for n, v in HARDENED.items() if getattr(row, n) != v]
        departs += ["resources"] if row.requests is None or row.limits is None else []
        if departs and len(row.why.split()) < 5:
            problems.append(f"{key}: departs in {departs} without a reason")
        if not departs and row.why:
            problems.append(f"{key}: a reason but no departure: {row.why!r}")
    assert not problems, "\n".join(problems)


def test_every_k8s_directory_is_rendered_here():
    """k8s/llm-stack and k8s/monitoring (deploy), k8s/jobs (the pull Job), k8s/k3s (bootstrap): a new
    directory of manifests must be rendered by this file too."""
    assert {p.name for p in (ROOT / "k8s").iterdir() if p.is_dir()} == {*mf.TARGETS, "jobs", "k3s"}
