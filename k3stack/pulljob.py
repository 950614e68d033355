"""`inv models.pull --in-cluster`: the model pulls as a Job next to Ollama (k8s/jobs/ollama-pull.yaml),
followed like a rollout — for CD runners that should not hold a connection open for a download.

The Job's name carries a hash of the image and model list: the same list is the same Job
(`unchanged` while it is kept — a day after it finished, then it runs again and finds the models
present), a new list a new Job. A failed Job is replaced on the next run.
"""

from __future__ import annotations

import hashlib
import time

from . import manifests as mf
from .apply import FIELD_MANAGER
from .console import Console
from .errors import command
from .kube import Kube
from .ollama import NAME_HINT, Ollama, OllamaError, missing_models, name_problem
from .rollout import RolloutError, Target, Waiter
from .settings import Settings


def job_manifest(settings: Settings, names: list[str]) -> mf.Manifest:
    """The pull Job rendered from k8s/jobs/ with the settings' variables, PULL_MODELS (`names`
    joined by spaces, as given) and PULL_ID (the first 10 hex digits of sha256 over OLLAMA_IMAGE and
    PULL_MODELS: the same image and list, in the same order, give the same Job name). Names are not
    checked here (pull_in_cluster does). Raises RenderError when the manifest does not render."""
    models = " ".join(names)
    pull_id = hashlib.sha256(f"{settings['OLLAMA_IMAGE']} {models}".encode()).hexdigest()[:10]
    variables = {**settings.render_vars(), "PULL_ID": pull_id, "PULL_MODELS": models}
    (manifest,) = mf.render(variables, targets=("jobs",))
    return manifest


def pull_in_cluster(kube: Kube, settings: Settings, names: list[str], console: Console, *, timeout: float) -> str:
    """Run (or find done) the pull Job, wait for it, verify through /api/tags; returns the action.
    Names outside Ollama's grammar are refused before anything is applied: they would reach the
    Job's shell and manifest as written (Ollama's characters are safe in both)."""
    bad = [f"{name} ({problem})" for name in names if (problem := name_problem(name))]
    if bad:
        raise OllamaError(f"invalid model name: {', '.join(bad)}", NAME_HINT)
    job = job_manifest(settings, names)
    namespace, name = job.namespace or "", job.name
    existing = kube.get("batch/v1", "Job", name, namespace)
    action = "unchanged"
    if existing is not None and Waiter(kube).status(_target(job)).failed:
        kube.delete("batch/v1", "Job", name, namespace)
        deadline = time.monotonic() + 60
        while kube.get("batch/v1", "Job", name, namespace) is not None and time.monotonic() < deadline:
            time.sleep(0.5)  # the old Job must be gone before one of the same name is created
        existing = None
        action = "replaced"
    if existing is None:
        kube.apply(job.obj, field_manager=FIELD_MANAGER)
        action = "created" if action == "unchanged" else action
    console.result(job.describe(), action, f"({len(names)} model(s): {' '.join(names)})")
    try:
        Waiter(kube, interval=2).wait([_target(job)], timeout)
    except RolloutError as exc:
        raise OllamaError(str(exc), "the Job's log shows which model failed: kubectl logs job/" + name) from None
    listed = [m.name for m in Ollama.from_settings(kube, settings).models()]
    missing = sorted(missing_models(names, listed))  # as /api/tags lists them, compared ignoring case
    if missing:
        raise OllamaError(
            f"job {name} completed but Ollama does not list {', '.join(missing)}",
            f"check the model names and Ollama's volume ({command('models.list')})",
        )
    console.result(job.describe(), "complete", "(every model listed by Ollama)")
    return action


def _target(job: mf.Manifest) -> Target:
    return Target("batch/v1", "Job", job.namespace or "", job.name)
