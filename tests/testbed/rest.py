"""One raw request to the bed's API server with the kubernetes client's credentials: (status,
JSON body or {}), never raising for an HTTP status -- the simulators decide what a status means."""

from __future__ import annotations

import json
from collections.abc import Iterable

from kubernetes import client


def call(
    api: client.ApiClient,
    method: str,
    path: str,
    body=None,
    query: Iterable[tuple[str, str]] = (),
    content_type: str = "application/json",
) -> tuple[int, dict]:
    response = api.call_api(
        *api.param_serialize(
            method,
            path,
            query_params=list(query),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
    )
    response.read()
    try:
        return response.status, json.loads(response.data)
    except ValueError:
        return response.status, {}
