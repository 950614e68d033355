"""k3stack/rotate.py without a cluster: the plan (steps and their order, what is updated where), the choice
of the new value, and rotate() over a fake API and fake PostgreSQL/Redis that keep a real password state
(a SCRAM verifier, a requirepass) — failed halfway on purpose, then run again."""

from __future__ import annotations

import base64
import json

import bcrypt
import pytest

from k3stack import restore as rs
from k3stack import rotate as rt
from k3stack.console import Console
from k3stack.kube import KubeError
from k3stack.secrets import decode, resolve
from tests.unit.test_backup import SECRET_VALUES, FakeKube, load_settings, pod


def scram_matches(verifier: str, password: str) -> bool:
    _, rest = verifier.split("$", 1)
    iterations_salt, _ = rest.split("$", 1)
    iterations, salt = iterations_salt.split(":")
    return rs.scram_verifier(password, base64.b64decode(salt), int(iterations)) == verifier


class FakeServices:
    """The running PostgreSQL and Redis behind exec: passwords checked as the servers would."""

    def __init__(self, pg_password: str, redis_password: str, events: list):
        self.pg = rs.scram_verifier(pg_password)
        self.redis = redis_password
        self.events = events
        self.argvs: list[list[str]] = []

    def run(self, namespace, pod, container, argv, *, stdout=None, stdin=None, stdin_size=0, ok=(0,)):
        self.argvs.append(argv)
        data = stdin.read(stdin_size) if stdin is not None else b""
        assert argv[:3] == ["sh", "-c", 'head -c "$0" | exec "$@"']  # all of stdin is fed, then closed
        assert argv[3] == str(len(data))
        command = argv[4:]
        if command[:2] == ["sh", "-c"] and "PGPASSWORD" in command[2]:
            line = data.decode().split("\n", 1)[0]
            return b"1\n" if scram_matches(self.pg, line) else b""
        if command[0] == "psql":
            sql = data.decode()
            assert sql.startswith('ALTER ROLE "openwebui" PASSWORD \'SCRAM-SHA-256$')
            self.pg = sql.split("'")[1]
            self.events.append(("exec", "ALTER ROLE"))
            return b""
        if command[:2] == ["sh", "-c"] and "REDISCLI_AUTH" in command[2]:
            auth, _, rest = data.decode().partition("\n")
            if auth != self.redis:
                return b"(error) NOAUTH Authentication required."
            if command[-4:] == ["-x", "CONFIG", "SET", "requirepass"]:
                self.redis = rest
                self.events.append(("exec", "CONFIG SET"))
                return b"OK\n"
            assert command[-1] == "PING"
            return b"PONG\n"
        raise AssertionError(f"unexpected command {command}")


class Stack:
    def __init__(self, **given: str):
        self.settings = load_settings(**given)
        objects = [m.obj for m in resolve(load_settings(**SECRET_VALUES), lambda ns, name: None).objects]
        objects += [
            pod("postgres-1", "postgres", "postgres:17.6", {"POSTGRES_USER": "openwebui", "POSTGRES_DB": "openwebui"}),
            pod("redis-1", "redis", "redis:7.4"),
        ]
        for name in ("open-webui", "redis"):
            template = {"metadata": {"annotations": {rt.CHECKSUM_ANNOTATION: "old"}}}
            objects.append(
                {"kind": "Deployment", "metadata": {"name": name, "namespace": "llm"}, "spec": {"template": template}}
            )
        self.kube = FakeKube(objects)
        self.services = FakeServices(
            SECRET_VALUES["POSTGRES_PASSWORD"], SECRET_VALUES["REDIS_PASSWORD"], self.kube.writes
        )
        self.rolled: list[list[str]] = []
        self.printed = []

    def secret(self, name: str, namespace: str = "llm") -> dict[str, str]:
        return decode(self.kube.get("v1", "Secret", name, namespace))

    def rotate(self, setting: str, **kw) -> rt.RotateResult:
        import io

        out = io.StringIO()
        self.printed.append(out)

        def wait(names):
            self.rolled.append(names)
            self.kube.writes.append(("wait", ",".join(names)))

        console = Console(stream=out, err_stream=out, interactive=False)
        return rt.rotate(self.kube, self.settings, setting, console, runner=self.services, wait=wait, **kw)


def test_the_steps_run_journal_live_secrets_rollouts_verify_in_that_order():
    assert rt.steps("POSTGRES_PASSWORD") == [
        "journal",
        "live postgres",
        "secret postgres",
        "secret open-webui",
        "rollout open-webui",
        "verify",
        "journal removed",
    ]
    assert rt.steps("REDIS_PASSWORD") == [
        "journal",
        "live redis",
        "secret redis",
        "secret open-webui",
        "rollout redis",
        "rollout open-webui",
        "verify",
        "journal removed",
    ]
    assert rt.steps("WEBUI_SECRET_KEY") == [
        "journal",
        "secret open-webui",
        "rollout open-webui",
        "verify",
        "journal removed",
    ]
    assert rt.steps("NETDATA_PASSWORD") == ["journal", "secret netdata-basic-auth", "verify", "journal removed"]


def test_what_is_updated_where():
    assert rt.ROTATIONS["POSTGRES_PASSWORD"].secrets == (
        ("STACK_NAMESPACE", "postgres", ("POSTGRES_PASSWORD",)),
        ("STACK_NAMESPACE", "open-webui", ("DATABASE_URL",)),
    )
    assert rt.ROTATIONS["REDIS_PASSWORD"].secrets == (
        ("STACK_NAMESPACE", "redis", ("REDIS_PASSWORD", "redis.conf")),
        ("STACK_NAMESPACE", "open-webui", ("REDIS_URL",)),
    )
    assert rt.ROTATIONS["NETDATA_PASSWORD"].secrets == (
        ("MONITORING_NAMESPACE", "netdata-basic-auth", ("password", "users")),
    )
    assert "signed out" in rt.ROTATIONS["WEBUI_SECRET_KEY"].warning
    assert all(r.warning is None for s, r in rt.ROTATIONS.items() if s != "WEBUI_SECRET_KEY")
    assert rt.journal_name("POSTGRES_PASSWORD") == "k3stack-rotate-postgres-password"


def test_what_cannot_be_rotated_is_refused_with_the_fix():
    with pytest.raises(rt.RotateError, match=r"WEBUI_ADMIN_PASSWORD: cannot be rotated.*Settings > Account") as err:
        rt.rotation_of("WEBUI_ADMIN_PASSWORD")
    assert "POSTGRES_PASSWORD, REDIS_PASSWORD, WEBUI_SECRET_KEY, NETDATA_PASSWORD" in err.value.hint
    with pytest.raises(rt.RotateError, match=r"^K3S_TOKEN: cannot be rotated — fix"):
        rt.rotation_of("K3S_TOKEN")


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("sh0rt!", "shorter than 12"),
        ("a" * 11, "shorter than 12"),
        ("twelve chars\nmore", "line break"),
        ("x" * 12 + "\0", "NUL"),
        ("y" * 12 + "\r", "line break"),
    ],
)
def test_a_new_value_that_cannot_travel_stdin_is_refused_without_showing_it(value, why):
    with pytest.raises(rt.RotateError, match=why) as err:
        rt.check_value("REDIS_PASSWORD", value)
    assert value not in str(err.value)


def test_netdata_passwords_are_bcrypt_sized():
    rt.check_value("NETDATA_PASSWORD", "x" * 72)
    rt.check_value("REDIS_PASSWORD", "x" * 73)
    with pytest.raises(rt.RotateError, match="72 bytes"):
        rt.check_value("NETDATA_PASSWORD", "x" * 73)


def test_choose_the_new_value():
    new, old = rt.choose("P", given=None, in_settings=None, journal=None, current="current-value-1")
    assert old == "current-value-1"
    assert len(new) == 43  # token_urlsafe(32)
    assert rt.choose("P", given=None, in_settings=None, journal=None, current="c" * 12)[0] != new
    assert rt.choose("P", given="given-value-12", in_settings=None, journal=None, current="c" * 12) == (
        "given-value-12",
        "c" * 12,
    )
    # a rotation that stopped halfway: its value and its old value, whatever the Secret holds now
    journal = {"new": "journal-new-12", "old": "journal-old-12"}
    assert rt.choose("P", given=None, in_settings=None, journal=journal, current="journal-new-12") == (
        "journal-new-12",
        "journal-old-12",
    )
    assert rt.choose("P", given="given-value-12", in_settings=None, journal=journal, current="x" * 12) == (
        "given-value-12",
        "journal-old-12",
    )
    # changed in the settings first
    assert rt.choose("P", given=None, in_settings="settings-new-1", journal=None, current="c" * 12) == (
        "settings-new-1",
        "c" * 12,
    )
    assert (
        rt.choose("P", given="settings-new-1", in_settings="settings-new-1", journal=None, current="c" * 12)[0]
        == "settings-new-1"
    )


def test_choose_refuses_what_the_next_deploy_would_undo():
    with pytest.raises(rt.RotateError, match="settings hold another value"):
        rt.choose("P", given="given-value-12", in_settings="settings-new-1", journal=None, current="c" * 12)
    with pytest.raises(rt.RotateError, match="settings hold the current value") as err:
        rt.choose("P", given=None, in_settings="c" * 12, journal=None, current="c" * 12)
    assert "remove P from the settings" in err.value.hint
    with pytest.raises(rt.RotateError, match="the new value is the current one"):
        rt.choose("P", given="c" * 12, in_settings=None, journal=None, current="c" * 12)


def test_patch_of_only_what_differs():
    assert rt.patch_of({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"}, ("a", "b")) == {
        "b": base64.b64encode(b"3").decode()
    }
    assert rt.patch_of({"a": "1"}, {"a": "1"}, ("a",)) == {}


def test_postgres_rotation_in_order_and_verified():
    stack = Stack()
    result = stack.rotate("POSTGRES_PASSWORD")
    new = stack.secret("postgres")["POSTGRES_PASSWORD"]
    old = SECRET_VALUES["POSTGRES_PASSWORD"]
    assert new != old
    assert scram_matches(stack.services.pg, new)
    assert not scram_matches(stack.services.pg, old)
    assert stack.kube.writes == [
        ("apply", "Secret/k3stack-rotate-postgres-password"),
        ("exec", "ALTER ROLE"),
        ("apply", "Secret/postgres"),
        ("apply", "Secret/open-webui"),
        ("apply", "Deployment/open-webui"),
        ("wait", "open-webui"),
        ("delete", "Secret/k3stack-rotate-postgres-password"),
    ]
    assert [how for _, how in result.steps] == ["done"] * 7
    webui = stack.secret("open-webui")
    assert (
        webui["DATABASE_URL"]
        == resolve(stack.settings, lambda ns, n: {"POSTGRES_PASSWORD": new} if n == "postgres" else None).values[
            "DATABASE_URL"
        ]
    )
    assert webui["REDIS_URL"].startswith("redis://:")  # untouched keys stay
    assert webui["WEBUI_SECRET_KEY"] == SECRET_VALUES["WEBUI_SECRET_KEY"]
    deployment = stack.kube.get("apps/v1", "Deployment", "open-webui", "llm")
    assert deployment["spec"]["template"]["metadata"]["annotations"][rt.CHECKSUM_ANNOTATION] not in ("old", None)
    assert stack.kube.get("v1", "Secret", rt.journal_name("POSTGRES_PASSWORD"), "llm") is None
    # never on argv, never printed
    assert all(v not in " ".join(a) for a in stack.services.argvs for v in (new, old))
    assert all(v not in out.getvalue() for out in stack.printed for v in (new, old))
    assert "POSTGRES_PASSWORD rotated" in stack.printed[-1].getvalue()


@pytest.mark.parametrize(
    "fail",
    [
        "Secret/postgres",
        "Secret/open-webui",
        "Deployment/open-webui",
        "wait",
        "Secret/k3stack-rotate-postgres-password-delete",
    ],
)
def test_postgres_rotation_failed_halfway_then_run_again_converges(fail):
    stack = Stack()
    apply, delete, services_run = stack.kube.apply, stack.kube.delete, stack.services.run

    def failing_apply(obj, **kw):
        if f"{obj['kind']}/{obj['metadata']['name']}" == fail:
            raise KubeError("injected")
        return apply(obj, **kw)

    def failing_delete(api_version, kind, name, namespace=None, **kw):
        if f"{kind}/{name}-delete" == fail:
            raise KubeError("injected")
        return delete(api_version, kind, name, namespace, **kw)

    stack.kube.apply, stack.kube.delete = failing_apply, failing_delete
    kw = {}
    if fail == "wait":
        kw["wait"] = lambda names: (_ for _ in ()).throw(KubeError("injected"))
        with pytest.raises(KubeError, match="injected"):
            rt.rotate(
                stack.kube, stack.settings, "POSTGRES_PASSWORD", Console(interactive=False), runner=stack.services, **kw
            )
    else:
        with pytest.raises(KubeError, match="injected"):
            stack.rotate("POSTGRES_PASSWORD")
    journal = json.loads(
        decode(stack.kube.get("v1", "Secret", rt.journal_name("POSTGRES_PASSWORD"), "llm"))["rotation"]
    )
    pending = journal["new"]
    assert journal["old"] == SECRET_VALUES["POSTGRES_PASSWORD"]
    assert scram_matches(stack.services.pg, pending)  # the database has it, and so does the journal: nothing lost
    stack.kube.apply, stack.kube.delete = apply, delete
    assert stack.services.run == services_run
    before = len(stack.kube.writes)
    again = stack.rotate("POSTGRES_PASSWORD")
    assert ("exec", "ALTER ROLE") not in stack.kube.writes[before:]  # the database already had it
    assert again.resumed
    assert again.steps[:2] == [("journal", "already"), ("live postgres", "already")]
    assert stack.secret("postgres")["POSTGRES_PASSWORD"] == pending
    assert stack.secret("open-webui")["DATABASE_URL"].count(pending) == 1  # token_urlsafe needs no quoting
    assert stack.kube.get("v1", "Secret", rt.journal_name("POSTGRES_PASSWORD"), "llm") is None
    # a third run is a new rotation (the journal is gone), from the value now in use
    third = stack.rotate("POSTGRES_PASSWORD")
    assert not third.resumed
    assert not scram_matches(stack.services.pg, pending)


def test_redis_rotation_changes_the_running_redis_first_then_the_secrets():
    stack = Stack()
    new = 'a new "redis" pass\\word # with spaces'
    stack.rotate("REDIS_PASSWORD", new_value=new)
    assert stack.services.redis == new
    assert stack.secret("redis")["REDIS_PASSWORD"] == new
    assert 'requirepass "a new \\"redis\\" pass\\\\word # with spaces"' in stack.secret("redis")["redis.conf"]
    assert "a%20new%20%22redis%22%20pass%5Cword%20%23%20with%20spaces@" in stack.secret("open-webui")["REDIS_URL"]
    assert [w for w in stack.kube.writes if w[0] != "apply" or "rotate" not in w[1]][:6] == [
        ("exec", "CONFIG SET"),
        ("apply", "Secret/redis"),
        ("apply", "Secret/open-webui"),
        ("apply", "Deployment/redis"),
        ("apply", "Deployment/open-webui"),
        ("wait", "redis,open-webui"),
    ]


def test_redis_rotation_failed_after_config_set_converges_and_signs_in_with_the_new_one():
    stack = Stack()
    apply = stack.kube.apply

    def failing_apply(obj, **kw):
        if obj["metadata"]["name"] == "redis":
            raise KubeError("injected")
        return apply(obj, **kw)

    stack.kube.apply = failing_apply
    with pytest.raises(KubeError):
        stack.rotate("REDIS_PASSWORD", new_value="the-new-redis-password")
    assert stack.services.redis == "the-new-redis-password"
    assert stack.secret("redis")["REDIS_PASSWORD"] == SECRET_VALUES["REDIS_PASSWORD"]
    stack.kube.apply = apply
    result = stack.rotate("REDIS_PASSWORD")  # no value given: the journal's
    assert result.steps[1] == ("live redis", "already")
    assert stack.secret("redis")["REDIS_PASSWORD"] == "the-new-redis-password"


def test_redis_that_accepts_neither_password_stops_before_any_secret():
    stack = Stack()
    stack.services.redis = "someone else's password"
    with pytest.raises(rt.RotateError, match="neither the old nor the new password"):
        stack.rotate("REDIS_PASSWORD")
    assert stack.secret("redis")["REDIS_PASSWORD"] == SECRET_VALUES["REDIS_PASSWORD"]


def test_webui_secret_key_warns_that_everyone_is_signed_out():
    stack = Stack()
    result = stack.rotate("WEBUI_SECRET_KEY")
    assert result.warnings == [rt.ROTATIONS["WEBUI_SECRET_KEY"].warning]
    assert stack.secret("open-webui")["WEBUI_SECRET_KEY"] != SECRET_VALUES["WEBUI_SECRET_KEY"]
    assert stack.rolled == [["open-webui"]]
    assert "warning: WEBUI_SECRET_KEY rotated: every user" in stack.printed[-1].getvalue()
    assert result.to_json()["steps"][-1] == ["journal removed", "done"]


def test_netdata_password_updates_the_htpasswd_line_with_it():
    stack = Stack()
    stack.rotate("NETDATA_PASSWORD", new_value="new netdata password")
    data = stack.secret("netdata-basic-auth", "monitoring")
    user, _, hashed = data["users"].partition(":")
    assert user == stack.settings["NETDATA_USER"]
    assert bcrypt.checkpw(b"new netdata password", hashed.encode())
    assert not bcrypt.checkpw(SECRET_VALUES["NETDATA_PASSWORD"].encode(), hashed.encode())
    assert data["password"] == "new netdata password"
    assert stack.rolled == []


def test_a_stack_not_deployed_is_refused():
    stack = Stack()
    stack.kube.objects.pop(("Secret", "llm", "postgres"))
    with pytest.raises(rt.RotateError, match=r"Secret llm/postgres \(key POSTGRES_PASSWORD\) is not there.*inv deploy"):
        stack.rotate("POSTGRES_PASSWORD")
    assert stack.kube.writes == []


def test_a_value_held_by_the_settings_is_rotated_only_to_the_settings_value():
    stack = Stack(POSTGRES_PASSWORD="the-settings-new-password")
    stack.rotate("POSTGRES_PASSWORD")
    assert stack.secret("postgres")["POSTGRES_PASSWORD"] == "the-settings-new-password"
    with pytest.raises(rt.RotateError, match="settings hold the current value"):
        stack.rotate("POSTGRES_PASSWORD")


def test_a_database_that_keeps_the_old_password_fails_the_verification():
    stack = Stack()

    class Ignoring(FakeServices):
        def run(self, namespace, pod, container, argv, **kw):
            kept = self.pg
            out = super().run(namespace, pod, container, argv, **kw)
            self.pg = kept  # ALTER ROLE "succeeds" but changes nothing
            return out

    ignoring = Ignoring(SECRET_VALUES["POSTGRES_PASSWORD"], SECRET_VALUES["REDIS_PASSWORD"], stack.kube.writes)
    stack.services = ignoring
    with pytest.raises(rt.RotateError, match="the new password does not sign in to PostgreSQL"):
        stack.rotate("POSTGRES_PASSWORD")
    assert stack.kube.get("v1", "Secret", rt.journal_name("POSTGRES_PASSWORD"), "llm") is not None  # kept


class AlsoAccepting(FakeServices):
    """A server that still signs in with `password` (e.g. a pg_hba.conf `trust` line for host
    connections): the login command holding `marker` answers `answer` for it."""

    def __init__(self, marker: str, password: str, answer: bytes, events: list):
        super().__init__(SECRET_VALUES["POSTGRES_PASSWORD"], SECRET_VALUES["REDIS_PASSWORD"], events)
        self.marker, self.password, self.answer = marker, password, answer

    def run(self, namespace, pod, container, argv, *, stdin=None, stdin_size=0, **kw):
        import io

        data = stdin.read(stdin_size)
        if self.marker in " ".join(argv) and data.startswith(self.password.encode() + b"\n"):
            return self.answer
        return super().run(namespace, pod, container, argv, stdin=io.BytesIO(data), stdin_size=stdin_size, **kw)


@pytest.mark.parametrize(
    ("setting", "marker", "answer", "service"),
    [("REDIS_PASSWORD", "PING", b"PONG\n", "Redis"), ("POSTGRES_PASSWORD", "PGPASSWORD", b"1\n", "PostgreSQL")],
)
def test_a_service_that_still_accepts_the_old_password_fails_the_verification(setting, marker, answer, service):
    stack = Stack()
    stack.services = AlsoAccepting(marker, SECRET_VALUES[setting], answer, stack.kube.writes)
    with pytest.raises(rt.RotateError, match=f"{service} still accepts the old password"):
        stack.rotate(setting)


def test_an_unfinished_rotation_stops_deploy_with_the_command_that_finishes_it():
    stack = Stack()
    assert rt.pending(stack.kube, stack.settings) == []
    rt.refuse_pending(stack.kube, stack.settings)
    apply = stack.kube.apply
    stack.kube.apply = lambda obj, **kw: (
        (_ for _ in ()).throw(KubeError("x")) if obj["kind"] == "Deployment" else apply(obj, **kw)
    )
    with pytest.raises(KubeError):
        stack.rotate("REDIS_PASSWORD")
    assert rt.pending(stack.kube, stack.settings) == ["REDIS_PASSWORD"]
    with pytest.raises(
        rt.RotateError, match=r"REDIS_PASSWORD stopped halfway.*`inv rotate REDIS_PASSWORD --yes` finishes it"
    ):
        rt.refuse_pending(stack.kube, stack.settings)
