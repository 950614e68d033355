"""The Waiter (k3stack/rollout.py) over a scripted API: what it reads, when it stops, what it says."""

from __future__ import annotations

import pytest

from k3stack.rollout import RolloutError, Target, Waiter, on_done

WEB = Target("apps/v1", "Deployment", "ns", "web")
CHART = Target("helm.cattle.io/v1", "HelmChart", "mon", "netdata")


def deployment(ready: bool, generation: int = 1) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "ns", "generation": generation},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}},
        "status": {
            "observedGeneration": 1,
            "updatedReplicas": 1,
            "replicas": 1,
            "availableReplicas": 1 if ready else 0,
        },
    }


class ScriptedKube:
    """GET answers per (kind, name) from a list (the last one repeats); everything else empty."""

    def __init__(self, answers: dict[tuple[str, str], list]):
        self.answers = answers
        self.gets: list[tuple[str, str]] = []

    def get(self, api_version, kind, name, namespace=None):
        self.gets.append((kind, name))
        script = self.answers.get((kind, name), [None])
        return script.pop(0) if len(script) > 1 else script[0]

    def list(self, *args, **kwargs):
        return []

    def log_tail(self, *args, **kwargs):
        return ""


def test_a_workload_the_apply_answered_as_ready_costs_no_read():
    kube = ScriptedKube({})
    statuses = Waiter(kube, interval=0).wait([WEB], 5, known={WEB: deployment(True)})
    assert statuses[WEB].done
    assert kube.gets == []


def test_a_stale_answer_is_read_again_until_ready():
    kube = ScriptedKube({("Deployment", "web"): [deployment(False), deployment(True)]})
    rounds = []
    statuses = Waiter(kube, interval=0).wait([WEB], 5, on_progress=rounds.append, known={WEB: deployment(True, 2)})
    assert statuses[WEB].done
    assert kube.gets == [("Deployment", "web"), ("Deployment", "web")]
    assert [r[WEB].done for r in rounds] == [False, False, True]


def test_a_missing_or_terminating_workload_says_so():
    gone = Waiter(ScriptedKube({})).status(WEB)
    assert (gone.done, gone.missing, gone.message) == (False, True, "deployment.apps/web not found in ns")
    leaving = {**deployment(True), "metadata": {**deployment(True)["metadata"], "deletionTimestamp": "now"}}
    assert Waiter(ScriptedKube({("Deployment", "web"): [leaving]})).status(WEB).terminating


def chart(failed: bool = False) -> dict:
    conditions = [{"type": "Failed", "status": "True", "message": "values invalid"}] if failed else []
    return {"metadata": {"name": "netdata"}, "status": {"jobName": "helm-install-netdata", "conditions": conditions}}


def job(created: str, succeeded: int = 1) -> dict:
    return {
        "metadata": {"name": "helm-install-netdata", "creationTimestamp": created},
        "status": {"succeeded": succeeded},
    }


def test_a_chart_is_judged_by_an_install_job_newer_than_its_change():
    old = ScriptedKube(
        {("HelmChart", "netdata"): [chart()], ("Job", "helm-install-netdata"): [job("2026-11-30T10:00:00Z")]}
    )
    waiting = Waiter(old, changed_at={("mon", "netdata"): "2026-11-30T10:05:00Z"}).status(CHART)
    assert not waiting.done
    assert waiting.message == "waiting for helm-controller to rerun the install job of netdata"
    new = ScriptedKube(
        {("HelmChart", "netdata"): [chart()], ("Job", "helm-install-netdata"): [job("2026-11-30T10:06:00Z")]}
    )
    assert Waiter(new, changed_at={("mon", "netdata"): "2026-11-30T10:05:00Z"}).status(CHART).done
    failed = ScriptedKube({("HelmChart", "netdata"): [chart(failed=True)], ("Job", "helm-install-netdata"): [None]})
    status = Waiter(failed).status(CHART)
    assert (status.failed, status.message) == (True, "helm chart failed: values invalid")


def test_a_failure_stops_the_wait_at_once_and_a_timeout_names_what_is_pending():
    failed = ScriptedKube({("HelmChart", "netdata"): [chart(failed=True)], ("Job", "helm-install-netdata"): [None]})
    with pytest.raises(RolloutError) as error:
        Waiter(failed, interval=0).wait([CHART], 60)
    assert str(error.value).startswith("failed: helmchart.helm.cattle.io/netdata")
    assert "kubectl -n mon logs job/helm-install-netdata" in str(error.value)
    slow = ScriptedKube({("Deployment", "web"): [deployment(False)]})
    with pytest.raises(RolloutError) as error:
        Waiter(slow, interval=0.01).wait([WEB], 0.05)
    assert str(error.value).startswith("timed out after 0s waiting for deployment.apps/web")
    assert "deployment.apps/web (ns): 0 of 1 updated replicas are available" in str(error.value)
    assert not error.value.statuses[WEB].done


def test_on_done_is_told_of_each_target_once_in_the_round_it_is_done():
    """The hook deploy starts the model pulls from (Ollama Ready) while other targets are pending."""
    kube = ScriptedKube(
        {
            ("Deployment", "web"): [deployment(False), deployment(False), deployment(True)],
            ("HelmChart", "netdata"): [chart()],
            ("Job", "helm-install-netdata"): [job("2026-11-30T10:06:00Z")],
        }
    )
    seen: list[tuple[str, int]] = []
    rounds: list[int] = []
    told: list[tuple[str, bool, int]] = []
    with on_done(lambda target, status: told.append((target.name, status.done, len(rounds)))):
        Waiter(kube, interval=0).wait(
            [WEB, CHART],
            5,
            on_progress=lambda statuses: rounds.append(len(rounds)),
            on_done=lambda target, status: seen.append((target.name, len(rounds))),
        )
    # netdata in the first round (after its progress), web in the third; each once, to both callbacks
    assert seen == [("netdata", 1), ("web", 3)]
    assert told == [("netdata", True, 1), ("web", True, 3)]
    Waiter(ScriptedKube({}), interval=0).wait([WEB], 5, known={WEB: deployment(True)})
    assert len(told) == 2  # outside the block: not told


def test_on_done_hears_nothing_of_a_wait_that_fails():
    kube = ScriptedKube({("Deployment", "web"): [deployment(False)]})
    told: list[Target] = []
    with on_done(lambda target, status: told.append(target)), pytest.raises(RolloutError):
        Waiter(kube, interval=0.01).wait([WEB], 0.05)
    assert told == []
