"""kubectl's rollout rules, field by field (kubectl pkg/polymorphichelpers/rollout_status.go)."""

from datetime import UTC, datetime, timedelta

import pytest

from k3stack import readiness as r


def deployment(generation=2, observed=2, want=2, updated=2, total=2, available=2, conditions=()):
    return {
        "metadata": {"name": "web", "generation": generation},
        "spec": {"replicas": want},
        "status": {
            "observedGeneration": observed,
            "updatedReplicas": updated,
            "replicas": total,
            "availableReplicas": available,
            "conditions": list(conditions),
        },
    }


def test_a_rolled_out_deployment_is_done():
    status = r.deployment_status(deployment())
    assert (status.done, status.failed, status.ready, status.desired) == (True, False, 2, 2)
    assert status.message == "successfully rolled out"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"observed": 1}, "waiting for deployment spec update to be observed"),
        ({"updated": 1}, "1 out of 2 new replicas have been updated"),
        ({"total": 3}, "1 old replicas are pending termination"),
        ({"available": 1}, "1 of 2 updated replicas are available"),
    ],
)
def test_a_deployment_is_not_done_until_every_rule_holds(fields, message):
    status = r.deployment_status(deployment(**fields))
    assert (status.done, status.failed, status.message) == (False, False, message)


def test_a_stale_status_never_counts_even_when_its_counts_look_done():
    # The status is for generation 1: it says nothing about the spec just applied.
    assert not r.deployment_status(deployment(generation=3, observed=2)).done
    assert r.deployment_status(deployment(generation=2, observed=3)).done


def test_replicas_default_to_one_and_a_missing_status_is_not_done():
    obj = {"metadata": {"name": "web", "generation": 1}, "spec": {}, "status": None}
    status = r.deployment_status(obj)
    assert (status.done, status.desired) == (False, 1)


def test_progress_deadline_exceeded_is_a_failure_not_a_wait():
    cond = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
    status = r.deployment_status(deployment(available=1, conditions=[cond]))
    assert (status.done, status.failed) == (False, True)
    assert "exceeded its progress deadline" in status.message
    for other in ("True", "False"):  # kubectl judges by the reason alone
        cond = {"type": "Progressing", "status": other, "reason": "ReplicaSetUpdated"}
        assert not r.deployment_status(deployment(available=1, conditions=[cond])).failed


def statefulset(generation=1, observed=1, want=1, ready=1, current="web-1", update="web-1"):
    return {
        "metadata": {"name": "db", "generation": generation},
        "spec": {"replicas": want},
        "status": {
            "observedGeneration": observed,
            "readyReplicas": ready,
            "updatedReplicas": ready,
            "currentRevision": current,
            "updateRevision": update,
        },
    }


def test_statefulset_rules():
    assert r.statefulset_status(statefulset()).done
    assert "web-1" in r.statefulset_status(statefulset()).message
    assert r.statefulset_status(statefulset(observed=0)).message == (
        "waiting for statefulset spec update to be observed"
    )
    assert r.statefulset_status(statefulset(ready=0)).message == "0 of 1 pods are ready"
    pending = r.statefulset_status(statefulset(update="web-2"))
    assert (pending.done, pending.message) == (False, "1 of 1 pods updated to the new revision")


def daemonset(generation=1, observed=1, desired=3, updated=3, available=3):
    return {
        "metadata": {"name": "netdata", "generation": generation},
        "status": {
            "observedGeneration": observed,
            "desiredNumberScheduled": desired,
            "updatedNumberScheduled": updated,
            "numberAvailable": available,
        },
    }


def test_daemonset_rules():
    assert r.daemonset_status(daemonset()).done
    assert not r.daemonset_status(daemonset(observed=0)).done
    assert r.daemonset_status(daemonset(updated=2)).message == "2 out of 3 new pods have been updated"
    assert r.daemonset_status(daemonset(available=2)).message == "2 of 3 updated pods are available"
    assert r.daemonset_status(daemonset(desired=0, updated=0, available=0)).done  # no node matches: nothing to wait


def job(succeeded=0, failed_condition=False, completions=None):
    conditions = [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}] if failed_condition else []
    spec = {} if completions is None else {"completions": completions}
    return {
        "metadata": {"name": "helm-install-netdata"},
        "spec": spec,
        "status": {"succeeded": succeeded, "conditions": conditions},
    }


def test_chart_install_job_rules():
    assert r.job_status(None, "netdata").message == "waiting for helm-controller to start the install job of netdata"
    assert r.job_status(job(succeeded=1), "netdata").done
    assert not r.job_status(job(), "netdata").done
    failed = r.job_status(job(failed_condition=True), "netdata")
    assert (failed.done, failed.failed) == (False, True)
    assert "BackoffLimitExceeded" in failed.message


def test_plain_job_counts_completions():
    assert r.plain_job_status(job(succeeded=1)).done
    assert not r.plain_job_status(job(succeeded=1, completions=2)).done
    assert r.plain_job_status(job(succeeded=2, completions=2)).done
    assert r.plain_job_status(job(failed_condition=True)).failed


# -- every field of every judgement (done, message, failed, ready, desired), with absent fields ----
S = r.Status


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (deployment(), S(True, "successfully rolled out", ready=2, desired=2)),
        (deployment(observed=1), S(False, "waiting for deployment spec update to be observed", ready=2, desired=2)),
        (deployment(updated=1), S(False, "1 out of 2 new replicas have been updated", ready=2, desired=2)),
        (deployment(total=3), S(False, "1 old replicas are pending termination", ready=2, desired=2)),
        (deployment(available=1), S(False, "1 of 2 updated replicas are available", ready=1, desired=2)),
        (
            deployment(available=1, conditions=[{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]),
            S(False, "deployment 'web' exceeded its progress deadline", failed=True, ready=1, desired=2),
        ),
        # nothing but a name: one replica wanted, none there yet
        ({"metadata": {"name": "web"}}, S(False, "0 out of 1 new replicas have been updated", desired=1)),
        (
            {"metadata": {"name": "web", "generation": 1}, "status": {"updatedReplicas": 1, "availableReplicas": 1}},
            S(False, "waiting for deployment spec update to be observed", ready=1, desired=1),
        ),
        (
            {"metadata": {"name": "web"}, "status": {"updatedReplicas": 1, "replicas": 1, "availableReplicas": 1}},
            S(True, "successfully rolled out", ready=1, desired=1),
        ),
    ],
)
def test_deployment_judgement_field_by_field(obj, expected):
    assert r.deployment_status(obj) == expected


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (statefulset(), S(True, "1 pods ready at revision web-1", ready=1, desired=1)),
        (statefulset(observed=0), S(False, "waiting for statefulset spec update to be observed", ready=1, desired=1)),
        (statefulset(ready=0), S(False, "0 of 1 pods are ready", desired=1)),
        (
            {
                "metadata": {"name": "db"},
                "spec": {"replicas": 2},
                "status": {"readyReplicas": 2, "updatedReplicas": 1, "currentRevision": "a", "updateRevision": "b"},
            },
            S(False, "1 of 2 pods updated to the new revision", ready=2, desired=2),
        ),
        ({"metadata": {"name": "db"}}, S(False, "0 of 1 pods are ready", desired=1)),
        (
            {"metadata": {"name": "db", "generation": 1}, "status": {"readyReplicas": 1}},
            S(False, "waiting for statefulset spec update to be observed", ready=1, desired=1),
        ),
        # no update revision reported (an OnDelete set, an old API server): ready pods are enough
        (
            {
                "metadata": {"name": "db"},
                "spec": {"replicas": 2},
                "status": {"readyReplicas": 2, "currentRevision": "a"},
            },
            S(True, "2 pods ready at revision a", ready=2, desired=2),
        ),
        (
            {"metadata": {"name": "db"}, "status": {"readyReplicas": 1}},
            S(True, "1 pods ready at revision ?", ready=1, desired=1),
        ),
    ],
)
def test_statefulset_judgement_field_by_field(obj, expected):
    assert r.statefulset_status(obj) == expected


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (daemonset(), S(True, "successfully rolled out", ready=3, desired=3)),
        (daemonset(observed=0), S(False, "waiting for daemon set spec update to be observed", ready=3, desired=3)),
        (daemonset(updated=2), S(False, "2 out of 3 new pods have been updated", ready=3, desired=3)),
        (daemonset(updated=4, available=2), S(False, "2 of 4 updated pods are available", ready=2, desired=3)),
        ({"metadata": {"name": "netdata"}}, S(True, "successfully rolled out")),  # scheduled on no node
        (
            {"metadata": {"name": "netdata", "generation": 1}, "status": {}},
            S(False, "waiting for daemon set spec update to be observed"),
        ),
        (
            {"metadata": {"name": "netdata"}, "status": {"desiredNumberScheduled": 1, "updatedNumberScheduled": 1}},
            S(False, "0 of 1 updated pods are available", desired=1),
        ),
    ],
)
def test_daemonset_judgement_field_by_field(obj, expected):
    assert r.daemonset_status(obj) == expected


def named_job(status=None, conditions=(), spec=None, name="helm-install-netdata"):
    obj = {"metadata": {"name": name}, "status": status}
    if conditions:
        obj["status"] = (status or {}) | {"conditions": list(conditions)}
    if spec is not None:
        obj["spec"] = spec
    return obj


FAILED = {"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (None, S(False, "waiting for helm-controller to start the install job of netdata", desired=1)),
        (
            named_job(conditions=[FAILED]),
            S(False, "install job helm-install-netdata failed: BackoffLimitExceeded", failed=True, desired=1),
        ),
        (
            named_job(conditions=[{"type": "Failed", "status": "True"}]),
            S(False, "install job helm-install-netdata failed: ", failed=True, desired=1),
        ),
        (
            named_job(conditions=[FAILED | {"status": "False"}]),
            S(False, "install job helm-install-netdata running", desired=1),
        ),
        (
            named_job({"succeeded": 1}),
            S(True, "chart installed (job helm-install-netdata complete)", ready=1, desired=1),
        ),
        (
            named_job({"succeeded": 2}),
            S(True, "chart installed (job helm-install-netdata complete)", ready=1, desired=1),
        ),
        (named_job({}), S(False, "install job helm-install-netdata running", desired=1)),
        (named_job(None), S(False, "install job helm-install-netdata running", desired=1)),
    ],
)
def test_chart_install_judgement_field_by_field(obj, expected):
    assert r.job_status(obj, "netdata") == expected


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (
            named_job(conditions=[FAILED], name="pull"),
            S(False, "job pull failed: BackoffLimitExceeded", True, desired=1),
        ),
        (
            named_job(conditions=[{"type": "Failed", "status": "True"}], name="pull"),
            S(False, "job pull failed: ", True, desired=1),
        ),
        (named_job({"succeeded": 1}, name="pull"), S(True, "job pull complete", ready=1, desired=1)),
        (
            named_job({"succeeded": 1}, spec=None, name="pull") | {"spec": None},
            S(True, "job pull complete", ready=1, desired=1),
        ),
        (
            named_job({"succeeded": 1}, spec={"completions": 2}, name="pull"),
            S(False, "job pull running (0 failed attempt(s))", desired=1),
        ),
        (named_job({"failed": 2}, name="pull"), S(False, "job pull running (2 failed attempt(s))", desired=1)),
        (named_job(None, name="pull"), S(False, "job pull running (0 failed attempt(s))", desired=1)),
    ],
)
def test_plain_job_judgement_field_by_field(obj, expected):
    assert r.plain_job_status(obj) == expected


def test_a_condition_is_found_by_type_whatever_else_is_there():
    obj = {"status": {"conditions": [{"type": "Complete", "status": "False"}, {"type": "Failed", "status": "True"}]}}
    assert r.condition(obj, "Failed") == {"type": "Failed", "status": "True"}
    assert r.condition(obj, "Suspended") is None
    assert r.condition({"status": {"conditions": None}}, "Failed") is None
    assert r.condition({"status": None}, "Failed") is None
    assert r.condition({}, "Failed") is None


def test_counts_a_status_leaves_out_are_zero():
    assert r.daemonset_status(
        {"metadata": {"name": "n"}, "status": {"desiredNumberScheduled": 1, "numberAvailable": 1}}
    ) == S(False, "0 out of 1 new pods have been updated", ready=1, desired=1)
    revision = {"readyReplicas": 1, "currentRevision": "a", "updateRevision": "b"}
    assert r.statefulset_status({"metadata": {"name": "db"}, "status": revision}) == S(
        False, "0 of 1 pods updated to the new revision", ready=1, desired=1
    )
    partly = {"metadata": {"name": "db"}, "spec": {"replicas": 2}, "status": {"readyReplicas": 1}}
    assert r.statefulset_status(partly) == S(False, "1 of 2 pods are ready", ready=1, desired=2)


# -- a CronJob by its Jobs (issue 17: `inv status` shows the last backup's age) --------------------
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
DAY = 86400


def at(hours_ago: float) -> str:
    return (NOW - timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def cronjob(created=100.0, suspend=False, last_success=None, uid="cj-1"):
    status = {"lastSuccessfulTime": at(last_success)} if last_success is not None else {}
    return {
        "metadata": {"name": "postgres-backup", "uid": uid, "creationTimestamp": at(created)},
        "spec": {"schedule": "17 3 * * *", "suspend": suspend},
        "status": status,
    }


def backup_job(name, started, *, complete=None, failed=None, owner="postgres-backup", uid="cj-1"):
    """A Job of the CronJob: complete `complete` hours ago, or failed (a reason), or running."""
    status, conditions = {}, []
    if complete is not None:
        status = {"succeeded": 1, "completionTime": at(complete)}
        conditions.append({"type": "Complete", "status": "True"})
    if failed is not None:
        status = {"failed": 3}
        conditions.append(
            {
                "type": "Failed",
                "status": "True",
                "reason": failed,
                "message": "Job has reached the specified backoff limit",
            }
        )
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": at(started),
            "ownerReferences": [{"kind": "CronJob", "name": owner, "uid": uid}],
        },
        "status": {**status, "conditions": conditions},
    }


@pytest.mark.parametrize(
    ("obj", "jobs", "last", "done", "failed", "message"),
    [
        # never yet: a new CronJob is fine until twice its interval has passed without a success
        (cronjob(created=5), [], "never yet", True, False, "no run yet (runs every 1d)"),
        (cronjob(created=49), [], "never yet", False, False, "no success yet, 2d after its creation (runs every 1d)"),
        (cronjob(created=47), [], "never yet", True, False, "no run yet (runs every 1d)"),
        # the last success: status.lastSuccessfulTime (1.21+), or a complete Job's completionTime (1.20)
        (cronjob(last_success=5), [], "5h ago", True, False, "last success 5h ago"),
        (cronjob(), [backup_job("b-1", 6, complete=5.5)], "5h ago", True, False, "last success 5h ago"),
        (cronjob(last_success=30), [backup_job("b-2", 7, complete=6)], "6h ago", True, False, "last success 6h ago"),
        # stale: older than twice the interval
        (cronjob(last_success=47.9), [], "1d ago", True, False, "last success 1d ago"),
        (
            cronjob(last_success=49),
            [],
            "2d ago",
            False,
            False,
            "last success 2d ago, over twice its interval (every 1d)",
        ),
        # the newest Job failed: FAILED whatever the age of the last success
        (
            cronjob(last_success=20),
            [backup_job("b-1", 21, complete=20), backup_job("b-2", 2, failed="BackoffLimitExceeded")],
            "20h ago",
            False,
            True,
            "its last job b-2 failed (BackoffLimitExceeded: Job has reached the specified backoff limit); "
            "last success 20h ago",
        ),
        # an older failure followed by a success is over; a running Job changes nothing yet
        (
            cronjob(),
            [backup_job("b-1", 30, failed="DeadlineExceeded"), backup_job("b-2", 3, complete=2)],
            "2h ago",
            True,
            False,
            "last success 2h ago",
        ),
        (cronjob(last_success=20), [backup_job("b-3", 0.1)], "20h ago", True, False, "last success 20h ago"),
        # suspended (BACKUP_SCHEDULE=off): shown as such, fine whatever its history
        (
            cronjob(suspend=True, created=500),
            [backup_job("b-1", 400, failed="x")],
            "suspended",
            True,
            False,
            "suspended; last success never yet",
        ),
        (cronjob(suspend=True, last_success=100), [], "suspended", True, False, "suspended; last success 4d ago"),
        # Jobs another CronJob (or an earlier CronJob of the same name) made are not its own
        (
            cronjob(created=60),
            [backup_job("x-1", 1, complete=1, owner="other")],
            "never yet",
            False,
            False,
            "no success yet, 2d after its creation (runs every 1d)",
        ),
        (
            cronjob(created=60),
            [backup_job("x-1", 1, failed="x", uid="old")],
            "never yet",
            False,
            False,
            "no success yet, 2d after its creation (runs every 1d)",
        ),
    ],
)
def test_a_cronjob_is_judged_by_its_last_success_and_its_newest_job(obj, jobs, last, done, failed, message):
    shown, status = r.cronjob_status(obj, jobs, NOW, DAY)
    assert (shown, status.done, status.failed, status.message) == (last, done, failed, message)
    assert (status.ready, status.desired) == (1 if done else 0, 1)


def test_the_stale_limit_is_twice_the_interval_given():
    assert r.cronjob_status(cronjob(last_success=3), [], NOW, 3600)[1].done is False  # hourly: 3 h is stale
    assert r.cronjob_status(cronjob(last_success=3), [], NOW, 2 * 3600)[1].done is True


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0s"),
        (59.9, "59s"),
        (60, "1m"),
        (3599, "59m"),
        (3600, "1h"),
        (86399, "23h"),
        (86400, "1d"),
        (-5, "0s"),
    ],
)
def test_ages_are_shown_in_their_largest_whole_unit(seconds, shown):
    assert r.age(seconds) == shown


def test_timestamps_as_the_api_writes_them():
    assert r.timestamp("2026-11-30T03:17:00Z") == datetime(2026, 11, 30, 3, 17, tzinfo=UTC)
    assert r.timestamp(None) is None
    assert r.timestamp("yesterday") is None
