"""checkov's Kubernetes policies over everything k3stack applies or places: the manifests `inv render
--out DIR` writes (k8s/llm-stack, k8s/monitoring), the in-cluster pull Job (k8s/jobs, as
`inv models.pull --in-cluster` renders it) and the Traefik config bootstrap places on the servers
(k8s/k3s): zero failures, and every skipped check carries its reason (a `checkov.io/skipN:
CKV_K8S_xx=reason` annotation on the object in k8s/, with a comment saying why next to it).
checkov cannot see inside a HelmChart's valuesContent (Netdata's chart renders in the cluster, and
the chart cannot be downloaded here), so the values k3stack gives it are checked here directly.

checkov lives in its own venv (requirements-tools.txt; `inv setup` installs it). Where it is missing
these tests skip naming `inv setup`, except under CI (CI=true) or with
K3STACK_REQUIRE_TESTBED=1, where a missing checkov fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.prereqs import unavailable

ROOT = Path(__file__).resolve().parents[1]
CHECKOV = ROOT / "tools" / ".venv" / "bin" / "checkov"
SETTINGS = {"DOMAIN": "203.0.113.10.sslip.io", "ACME_EMAIL": "ops@example.com"}


def require_checkov() -> None:
    if not CHECKOV.exists():
        unavailable(f"checkov not installed ({CHECKOV} missing)")


def checkov(directory: Path) -> dict:
    """checkov's report for one directory of manifests. --skip-download: no policy or metadata
    downloads (nothing leaves this machine); --framework kubernetes: only the manifests."""
    require_checkov()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("BC_", "PRISMA_", "CKV_"))}
    done = subprocess.run(
        [
            str(CHECKOV),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--output",
            "json",
            "--directory",
            str(directory),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**environ, "LOG_LEVEL": "WARNING"},
    )
    assert done.returncode in (0, 1), f"checkov did not run ({done.returncode}): {done.stderr[-2000:]}"
    report = json.loads(done.stdout)
    if isinstance(report, list):  # one entry per framework
        (report,) = [r for r in report if r.get("check_type") == "kubernetes"]
    return report


PLACED = ["jobs.yaml", "k3s-k3stack-traefik-config.yaml"]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """The objects `inv deploy` would apply, as `inv render --out DIR` writes them (secrets redacted),
    with the pull Job and the K3s manifests bootstrap places beside them (one directory: checkov's
    graph checks see the Job under the stack namespace's NetworkPolicies, as the cluster does)."""
    import yaml

    from k3stack import bootstrap, pulljob, settings

    out = tmp_path_factory.mktemp("rendered")
    env_dir = tmp_path_factory.mktemp("env")  # no env/*.env of this machine: settings from SETTINGS
    environ = {**os.environ, **SETTINGS, "K3STACK_ENV_DIR": str(env_dir)}
    environ.pop("K3STACK_ENV", None)
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "render", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.glob("*.yaml")) == ["k3stack.yaml", "llm-stack.yaml", "monitoring.yaml"]
    loaded = settings.load(env_dir=Path("/nonexistent"), environ=SETTINGS)
    (out / "jobs.yaml").write_text(yaml.safe_dump(pulljob.job_manifest(loaded, ["llama3.2:1b"]).obj))
    placed = bootstrap.traefik_manifests(loaded)
    assert sorted(placed) == sorted(p.removeprefix("k3s-") for p in PLACED if p.startswith("k3s-"))
    for name, data in placed.items():
        (out / f"k3s-{name}").write_bytes(data)
    return out


@pytest.fixture(scope="module")
def report(rendered) -> dict:
    return checkov(rendered)


def describe(check: dict) -> str:
    return f"{check['check_id']} {check['check_name']}: {check['resource']} ({check['file_path']})"


def test_checkov_finds_no_failures(report):
    failed = report["results"]["failed_checks"]
    assert not failed, "checkov failures (fix the manifest, or skip with a true reason):\n" + "\n".join(
        map(describe, failed)
    )


def test_checkov_ran_the_kubernetes_checks(report):
    summary = report["summary"]
    assert summary["resource_count"] >= 20
    assert summary["passed"] >= 300
    passed = {c["check_id"] for c in report["results"]["passed_checks"]}
    # the hardening the manifests promise, checked by checkov itself
    for check in ("CKV_K8S_20", "CKV_K8S_28", "CKV_K8S_37", "CKV_K8S_38", "CKV_K8S_31", "CKV_K8S_11", "CKV_K8S_13"):
        assert check in passed, f"{check} did not run or did not pass"


def test_the_job_and_the_k3s_manifests_are_scanned_too(rendered, report):
    """k8s/jobs and k8s/k3s are in the scan (before, checkov saw only what deploy applies: the pull
    Job's three findings went unseen). k8s/k3s holds a HelmChartConfig only, a custom resource no
    checkov check applies to; a workload added there is checked like any other."""
    import yaml

    checks = report["results"]["passed_checks"] + report["results"]["skipped_checks"]
    assert "jobs.yaml" in {Path(c["file_path"]).name for c in checks}
    resources = {c["resource"] for c in checks}
    assert any(r.startswith("Job.llm-stack.ollama-pull-") for r in resources), sorted(resources)
    passed_on_job = {c["check_id"] for c in report["results"]["passed_checks"] if "ollama-pull-" in c["resource"]}
    assert {"CKV_K8S_20", "CKV_K8S_28", "CKV_K8S_22", "CKV_K8S_11", "CKV_K8S_13", "CKV2_K8S_6"} <= passed_on_job
    placed = [o for p in PLACED if p.startswith("k3s-") for o in yaml.safe_load_all((rendered / p).read_text()) if o]
    assert [o["kind"] for o in placed] == ["HelmChartConfig"]


def test_every_skip_is_justified(report):
    skipped = report["results"]["skipped_checks"]
    assert skipped, "expected the documented skips (see k8s/llm-stack/*.yaml annotations)"
    problems = []
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment") or ""
        if len(reason.split()) < 5 or reason == "No comment provided":
            problems.append(f"{describe(check)}: skipped without a reason ({reason!r})")
    assert not problems, "\n".join(problems)


def test_every_skip_annotation_has_a_comment_beside_it():
    """In k8s/, a skip annotation is preceded by a YAML comment (the human reason)."""
    problems = []
    for path in sorted((ROOT / "k8s").rglob("*.yaml")):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if "checkov.io/skip" in line:
                above = [row.strip() for row in lines[max(0, number - 8) : number]]
                if not any(row.startswith("#") for row in above):
                    problems.append(f"{path.relative_to(ROOT)}:{number + 1}: skip without a comment above it")
    assert not problems, "\n".join(problems)


def test_checkov_really_fails_a_bad_manifest(tmp_path):
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bad\n  namespace: default\nspec:\n"
        "  hostNetwork: true\n  containers:\n    - name: c\n      image: busybox:latest\n"
        "      securityContext:\n        privileged: true\n"
    )
    failed = {c["check_id"] for c in checkov(tmp_path)["results"]["failed_checks"]}
    assert {"CKV_K8S_16", "CKV_K8S_19"} <= failed  # privileged container, host network


def test_values_embedded_in_text_are_settings_that_cannot_break_it():
    """A ${VAR} inside a block of text (a HelmChart's valuesContent, a script) is not escaped by
    YAML: only settings whose validator refuses quotes, backslashes, spaces, newlines, `#` and `:`
    may go there, or constants k3stack computes (redis.conf and htpasswd are written by
    k3stack/secrets.py with their own rules)."""
    import yaml

    from k3stack import bootstrap, secrets, settings

    loaded = settings.load(env_dir=Path("/nonexistent"), environ=SETTINGS)
    valid = loaded.values
    checksums = secrets.resolve(loaded, lambda namespace, name: None).checksums
    for path in sorted((ROOT / "k8s").glob("*/*.yaml")):
        for node in _block_scalars(yaml.compose_all(path.read_text())):
            for name in re.findall(r"\$\{([A-Za-z0-9_]+)\}", node.value):
                if name == "ACME_CA_SERVER":  # bootstrap's constant: one of two Let's Encrypt URLs
                    assert all(settings.url(u) is None for u in (bootstrap.STAGING_CA, bootstrap.PRODUCTION_CA))
                    continue
                if name in checksums:  # k3stack/secrets.py's checksums: 16 hex digits
                    assert re.fullmatch(r"[0-9a-f]{16}", checksums[name]), (name, checksums[name])
                    continue
                setting = settings.BY_NAME.get(name)
                assert setting is not None, f"{path.name}: ${{{name}}} in a text block is not a setting"
                assert setting.check is not None, f"{path.name}: ${{{name}}} in a text block is not validated"
                sample = valid[name]
                for char in "\"'\\ \n#:":
                    probe = sample[:1] + char + sample[1:]
                    assert setting.check(probe) is not None, f"{path.name}: ${{{name}}} may be {probe!r}"


def _block_scalars(documents):
    import yaml

    stack = [d for d in documents if d is not None]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in node.value for n in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.ScalarNode) and node.style in ("|", ">"):
            yield node


# -- Netdata's chart values: what checkov cannot see -------------------------------------------------
CHART_DEFAULT_STREAM_KEY = "11111111-2222-3333-4444-555555555555"  # the chart's published default


@pytest.fixture(scope="module")
def netdata_values(rendered) -> dict:
    import yaml

    [chart] = [
        o
        for o in yaml.safe_load_all((rendered / "monitoring.yaml").read_text())
        if o and o["kind"] == "HelmChart" and o["metadata"]["name"] == "netdata"
    ]
    return yaml.safe_load(chart["spec"]["valuesContent"])


def test_netdata_images_are_pinned_and_pulled_once(netdata_values):
    init = netdata_values["initContainersImage"]
    assert init["repository"] == "alpine"
    assert init["tag"] != "latest"
    assert init["tag"][:1].isdigit()  # an exact version
    for image in (init, netdata_values["image"], netdata_values["sd"]["image"]):
        assert image["pullPolicy"] == "IfNotPresent"


@pytest.mark.parametrize("part", ["parent", "child", "k8sState"])
def test_every_netdata_pod_has_limits_and_streams_with_the_generated_key(netdata_values, part):
    values = netdata_values[part]
    resources = values["resources"]
    assert set(resources["limits"]) == {"cpu", "memory"}
    assert set(resources["requests"]) == {"cpu", "memory"}
    # the chart's stream.conf (with its published key) is off; k3stack's, from the Secret, is mounted
    assert values["configs"]["stream"]["enabled"] is False
    [volume] = [v for v in values["extraVolumes"] if v["name"] == "stream"]
    assert volume["secret"]["secretName"] == "netdata-stream"
    wanted = "parent-stream.conf" if part == "parent" else "child-stream.conf"
    assert volume["secret"]["items"] == [{"key": wanted, "path": "stream.conf"}]
    assert volume["secret"]["defaultMode"] & 0o007 in (0, 0o004)  # never writable or executable by others
    [mount] = [m for m in values["extraVolumeMounts"] if m["name"] == "stream"]
    where = (mount["mountPath"], mount["subPath"], mount["readOnly"])
    assert where == ("/etc/netdata/stream.conf", "stream.conf", True)
    assert re.fullmatch(r"[0-9a-f]{16}", values["podAnnotations"]["k3stack.dev/stream-checksum"])


def test_the_stream_key_is_generated_and_never_the_charts_default(netdata_values):
    import uuid

    from k3stack import secrets, settings

    assert CHART_DEFAULT_STREAM_KEY not in json.dumps(netdata_values)
    loaded = settings.load(env_dir=Path("/nonexistent"), environ=SETTINGS)
    first = secrets.resolve(loaded, lambda namespace, name: None)
    key = first.values["NETDATA_STREAM_API_KEY"]
    assert str(uuid.UUID(key)) == key != CHART_DEFAULT_STREAM_KEY
    [secret] = [o.obj for o in first.objects if o.obj["metadata"]["name"] == "netdata-stream"]
    assert secret["metadata"]["namespace"] == loaded["MONITORING_NAMESPACE"]
    # kept: a second run reads the cluster's Secret and keeps key and checksum (no roll)
    data = secrets.decode(secret)
    again = secrets.resolve(
        loaded, lambda namespace, name: data if (namespace, name) == (secret["metadata"]["namespace"], name) else None
    )
    assert again.values["NETDATA_STREAM_API_KEY"] == key
    assert again.origins["NETDATA_STREAM_API_KEY"] == "cluster"
    assert again.checksums["NETDATA_STREAM_CHECKSUM"] == first.checksums["NETDATA_STREAM_CHECKSUM"]


def test_the_childs_privileges_are_justified_or_reduced(netdata_values):
    """The chart's child DaemonSet template hard-codes hostPID, hostIPC and SYS_PTRACE + SYS_ADMIN;
    hostNetwork and the AppArmor opt-out are values. Each one kept is explained in netdata.yaml;
    k8s-state, which only talks to the Kubernetes API, keeps the runtime's AppArmor profile."""
    text = (ROOT / "k8s" / "monitoring" / "netdata.yaml").read_text()
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    for privilege in ("hostPID", "hostIPC", "SYS_PTRACE", "SYS_ADMIN", "hostNetwork", "AppArmor unconfined"):
        assert re.search(rf"{privilege}[^\n]*:", comments), f"{privilege}: no justification in netdata.yaml"
    assert netdata_values["child"]["hostNetwork"] is True  # kept, justified (kubelet/kube-proxy on 127.0.0.1)
    assert netdata_values["k8sState"]["podAnnotationAppArmor"]["enabled"] is False
