"""The deploy Lease's expiry rule (k3stack/lease.py)."""

import datetime as dt

from k3stack import lease


def stamp(seconds_ago: float) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_a_renewed_lease_is_live_and_a_silent_one_expires():
    live = {"spec": {"holderIdentity": "a@h pid 1", "leaseDurationSeconds": 60, "renewTime": stamp(10)}}
    assert not lease.expired(live)
    dead = {"spec": {"holderIdentity": "a@h pid 1", "leaseDurationSeconds": 60, "renewTime": stamp(61)}}
    assert lease.expired(dead)
    short = {"spec": {"holderIdentity": "a@h pid 1", "leaseDurationSeconds": 5, "renewTime": stamp(10)}}
    assert lease.expired(short)


def test_a_released_or_unreadable_lease_is_free():
    assert lease.expired({"spec": {"renewTime": stamp(1)}})  # no holder
    assert lease.expired({"spec": {"holderIdentity": "x", "renewTime": "yesterday"}})
    assert not lease.expired({"spec": {"holderIdentity": "x", "acquireTime": stamp(1)}})  # never renewed yet


def test_the_holder_names_user_host_and_process():
    who = lease.holder_identity()
    assert who.count("@") == 1
    assert who.endswith(f"pid {__import__('os').getpid()}")
