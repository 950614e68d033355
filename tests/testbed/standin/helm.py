"""K3s's helm-controller, as the stand-in's node simulator runs it (`helm_stamp`): an install Job
per HelmChart whose configHash covers the chart AND its HelmChartConfig, so changing either
re-runs `helm-install-<name>`, as on K3s. No helm runs; the Job completes through the node
simulator -- unless helm would reject the values: invalid YAML in a valuesContent, or Traefik v2
keys (ports.web.redirectTo) on the v3 chart (34.x+, K3s >= 1.32), which that chart's schema
refuses. Then the Job's pod crash-loops with helm's message (also the Job's annotation
testbed.k3stack.dev/helm-error) and never completes."""

from __future__ import annotations

import hashlib
import json
import re

import yaml
from kubernetes import client

CONFIG_HASH = "helmcharts.helm.cattle.io/configHash"


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if nested else value
    return merged


def install_error(chart: dict, config: dict | None) -> str | None:
    """What helm would say about this chart's values, or None if it installs."""
    values: dict = {}
    sources = (
        ("HelmChart", chart["spec"].get("valuesContent")),
        ("HelmChartConfig", ((config or {}).get("spec") or {}).get("valuesContent")),
    )
    for source, text in sources:
        if not text:
            continue
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            return f"Error: failed to parse values of the {source}: {exc}"
        if not isinstance(loaded, dict):
            return f"Error: failed to parse values of the {source}: not a map"
        values = _merge(values, loaded)
    version = str(chart["spec"].get("version") or "")
    if not version and (found := re.search(r"traefik-(\d+)\.", str(chart["spec"].get("chart") or ""))):
        version = found.group(1)
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    web = (values.get("ports") or {}).get("web") or {}
    if chart["metadata"]["name"] == "traefik" and major >= 34 and isinstance(web, dict) and "redirectTo" in web:
        return (
            "Error: INSTALLATION FAILED: values don't meet the specifications of the schema(s) in the following"
            " chart(s):\ntraefik:\n- ports.web: Additional property redirectTo is not allowed"
        )
    return None


def stamp_with(api: client.ApiClient, log):
    """A `helm_stamp` for NodeSimulator: (Job annotations, helm's error or None) for a HelmChart."""
    logged: dict[str, str] = {}

    def stamp(chart: dict) -> tuple[dict[str, str], str | None]:
        meta = chart["metadata"]
        path = f"/apis/helm.cattle.io/v1/namespaces/{meta['namespace']}/helmchartconfigs/{meta['name']}"
        response = api.call_api(*api.param_serialize("GET", path, auth_settings=["BearerToken"]))
        response.read()
        config = json.loads(response.data) if response.status == 200 else None
        digest = hashlib.sha256(json.dumps([chart["spec"], (config or {}).get("spec")], sort_keys=True).encode())
        error = install_error(chart, config)
        key = f"{meta['namespace']}/{meta['name']}"
        if error and logged.get(key) != digest.hexdigest():
            log("error", f"helm-install-{meta['name']} in {meta['namespace']}: {error}")
            logged[key] = digest.hexdigest()
        return {CONFIG_HASH: f"SHA256={digest.hexdigest().upper()}"}, error

    return stamp
