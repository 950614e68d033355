"""The Invoke face's plumbing, shared by the tasks in tasks.py: flag help, flag parsing, exit
codes, and the runs that several tasks chain (`up` = bootstrap + deploy + smoke).

The face is the only part that knows it is a command line: it turns K3stackError into
`error: <what> — fix: <hint>` and exit 1, a bad flag into exit 2, Ctrl-C into exit 130 and
anything unexpected into one line and exit 2 (K3STACK_DEBUG=1 shows the traceback). It imports
invoke and nothing heavy at module level: `inv --list` loads no client, no fabric, no rich.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager, nullcontext

from invoke import Exit

CLUSTER_HELP = {
    "env": "settings file env/NAME.env (default: $K3STACK_ENV, else 'default')",
    "kubeconfig": "kubeconfig path (default: $KUBECONFIG, else ~/.kube/config)",
    "context": "kubeconfig context (default: KUBE_CONTEXT setting, else the current context)",
}
HOSTS_HELP = {
    "env": CLUSTER_HELP["env"],
    "host": "server host [user@]host[:port]; repeat for more; `local` = this machine (default: SERVERS)",
    "agent": "agent host, same form; repeat for more (default: AGENTS, unless --host is given)",
    "user": "SSH user for entries without one (default: SSH_USER)",
    "port": "SSH port for entries without one (default: SSH_PORT)",
    "trust_new_host_keys": "accept unknown host keys, print their fingerprints and save them to SSH_KNOWN_HOSTS",
}
TRUST_INSTALLER_HELP = "run the installer even though K3S_INSTALL_SHA256 is not set (prints its checksum)"
DEPLOY_HELP = {
    **CLUSTER_HELP,
    "env": CLUSTER_HELP["env"] + "; repeat to deploy several stacks (own namespaces) in one run",
    "dry_run": "ask the API server what would happen (server dry run); change nothing",
    "force": "take over fields another field manager owns (server-side apply --force-conflicts)",
    "prune": "delete this stack's objects no longer in k8s/ (never PVCs or Secrets; default on)",
    "wait": "wait for every workload to be ready, like kubectl rollout status (default on)",
    "timeout": "seconds to wait for rollouts",
    "json": "print a JSON summary at the end (for CI)",
    "pull": "pull OLLAMA_MODELS once Ollama is ready (default on; --no-pull skips)",
    "backup": "take a backup first when a stateful image changes (the default for people; CI must choose)",
    "skip_backup": "deploy a stateful image change without a backup",
    "backup_dir": "where the pre-upgrade archive goes (default: here)",
}
BACKUP_HELP = {
    **CLUSTER_HELP,
    "to": "directory (the archive gets a dated name) or file path for the archive (default: here); mode 0600",
    "json": "print a JSON summary (path, size, parts with sha256) for CI",
    "cluster": "the K3s datastore instead: a snapshot on the first server over SSH (etcd-snapshot, or SQLite's "
    "online backup), brought here (mode 0600)",
}
RESTORE_HELP = {
    **CLUSTER_HELP,
    "force": "replace a database that already holds data (default: refused)",
    "smoke": "run the smoke checks after the restore (default on; --no-smoke skips)",
    "json": "print a JSON summary for CI",
}
ROTATE_HELP = {
    **CLUSTER_HELP,
    "yes": "confirm: the pods that use the secret restart (WEBUI_SECRET_KEY also signs every user out)",
    "json": "print the result as JSON (no secret in it)",
    "timeout": "seconds to wait for the rollouts",
}
SMOKE_HELP = {
    **CLUSTER_HELP,
    "json": "print the results as JSON",
    "junit": "write JUnit XML (one testcase per check) to this file",
    "insecure": "trust only Let's Encrypt's STAGING roots (shipped, pinned) for public checks; not with --ca-bundle",
    "ca_bundle": "trust this CA file for the public checks (default: SMOKE_CA_BUNDLE, else the system's)",
    "resolve": "HOST:PORT:ADDR: reach HOST:PORT at ADDR without DNS, like curl --resolve; repeatable",
    "timeout": "seconds eventually-true checks keep retrying (default: SMOKE_TIMEOUT)",
    "only": "run only these groups, comma-separated: cluster, in-cluster, public",
}

BOOTSTRAP_HELP = {
    **HOSTS_HELP,
    "trust_installer": TRUST_INSTALLER_HELP,
    "strict_dns": "fail, not warn, when CHAT_HOST/MONITOR_HOST do not resolve to the first server",
    "timeout": "seconds to wait for K3s to start and the cluster to be ready",
    "kubeconfig": "write the cluster's kubeconfig here (default: KUBECONFIG_PATH, merged)",
    "dry_run": "connect, read facts and preflight, then print per host what would change; touch nothing",
}
RENDER_HELP = {
    "env": CLUSTER_HELP["env"],
    "out": "write one YAML file per target into this directory (default: print to stdout)",
    "show_secrets": "include Secret data (generated values differ from the cluster's!)",
    "validate": "also validate every object strictly against K8S_VERSION (needs requirements-dev)",
}
PULL_HELP = {
    **CLUSTER_HELP,
    "model": "a model to pull, e.g. llama3.1:8b; repeatable (default: OLLAMA_MODELS)",
    "json": "print the pull report as JSON",
    "in_cluster": "pull from a Job next to Ollama (k8s/jobs/) and follow it, instead of streaming here",
    "timeout": "seconds to wait for the in-cluster Job",
}
UP_HELP = {
    **HOSTS_HELP,
    "trust_installer": TRUST_INSTALLER_HELP,
    "insecure": SMOKE_HELP["insecure"],
    "junit": SMOKE_HELP["junit"],
    "only": SMOKE_HELP["only"] + " (default: all)",
    "timeout": "seconds to wait at each stage",
    "pull": "pull OLLAMA_MODELS after the deploy (default on; --no-pull skips)",
}


@contextmanager
def reported(console):
    """Known failures become one clear line and exit 1; Ctrl-C says what it means and exits 130;
    anything unexpected is one line too (exit 2), with K3STACK_DEBUG=1 for the traceback."""
    from .errors import K3stackError  # imports nothing: no client loaded to report an error

    try:
        yield
    except KeyboardInterrupt:
        console.error("interrupted: what finished is kept; run the same command again to converge")
        _exit_soon_after_main(130)
        raise Exit(code=130) from None
    except Exit:
        raise
    except K3stackError as exc:
        console.error(str(exc))
        raise Exit(code=1) from None
    except Exception as exc:
        if os.environ.get("K3STACK_DEBUG", "").lower() in ("1", "true", "yes"):
            raise
        console.error(
            f"unexpected {type(exc).__name__}: {exc} — this is a bug in k3stack; "
            "run again with K3STACK_DEBUG=1 for the traceback and report it"
        )
        raise Exit(code=2) from None


def _exit_soon_after_main(code: int, grace: float = 1.0) -> None:
    """Ctrl-C must end the command within a second: once the main thread has finished, a worker
    blocked in a network read (up to its timeout, then its retries) would keep the interpreter
    waiting at exit. Give cleanup `grace` seconds, then leave with `code`. Only for the `inv`
    process itself (never a test runner that called a task in-process)."""
    if "invoke" not in sys.argv[0] and os.path.basename(sys.argv[0]) != "inv":
        return

    def watch() -> None:
        threading.main_thread().join()
        time.sleep(grace)  # the console flushes every line it prints: nothing is lost
        os._exit(code)

    threading.Thread(target=watch, name="exit-after-interrupt", daemon=True).start()


def console():
    """The one printer (k3stack.console), loaded on first use: rich is not needed for `--list`."""
    from .console import Console

    return Console()


def usage(text: str) -> Exit:
    """A bad flag value: one line on stderr, exit 2 (a usage error, as argparse and kubectl do)."""
    console().error(text)
    return Exit(code=2)


def fail(text: str) -> Exit:
    """A refusal or failed outcome the task decides itself: one line on stderr, exit 1."""
    console().error(text)
    return Exit(code=1)


def in_ci() -> bool:
    """Whether we run under CI (CI=true|1, as GitHub Actions and most CI systems set it)."""
    return os.environ.get("CI", "").lower() in ("true", "1")


def seconds(value, flag: str = "--timeout") -> float:
    """A duration flag in seconds (invoke passes text); a usage error unless a positive number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if not number > 0 or number == float("inf"):
        raise usage(f"{flag} {value}: expected a number of seconds greater than 0, e.g. {flag} 600")
    return number


def groups(only: str) -> list[str]:
    """--only cluster,public → the smoke groups, checked before anything connects."""
    from .smoke import GROUPS

    chosen = [g.strip() for g in (only or "").split(",") if g.strip()]
    if unknown := [g for g in chosen if g not in GROUPS]:
        raise usage(f"--only {only}: unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    return chosen


def kube_for(loaded, kubeconfig, context):
    """A connection to the cluster: --kubeconfig/--context, else KUBE_CONTEXT, else the current one."""
    from .kube import Kube

    return Kube(kubeconfig, context or loaded["KUBE_CONTEXT"] or None)


def cluster(out, env, kubeconfig, context):
    """(settings, kube, Stack) of one settings file: loaded, connected and planned, no write yet."""
    from . import pipeline, settings

    loaded = settings.load(env)
    kube = kube_for(loaded, kubeconfig, context)
    return loaded, kube, pipeline.plan(loaded, kube, out)


def bootstrap_options(host, agent, user, port, trust_new_host_keys, **more):
    """bootstrap.Options from the host flags (shared by bootstrap, kubeconfig, reset and up)."""
    from .bootstrap import Options

    if port and not (str(port).isdigit() and 1 <= int(port) <= 65535):
        raise usage(f"--port {port}: not a TCP port number (1-65535)")
    return Options(
        hosts=tuple(host or ()),
        agents=tuple(agent or ()),
        user=user,
        port=int(port) if port else None,
        trust_new_host_keys=trust_new_host_keys,
        ci=in_ci(),
        **more,
    )


def run_bootstrap(out, env, options):
    """Bootstrap (or plan it, with options.dry_run) and say what happened; returns (settings, report)."""
    from . import bootstrap as boot
    from . import settings

    with reported(out):
        loaded = settings.load(env)
        out.add_secrets(loaded.secrets.values())
        report = boot.bootstrap(loaded, options, out)
    if options.dry_run:
        would = sum(n.action == "would change" for n in report.nodes)
        out.step(f"dry run: {would} of {len(report.nodes)} host(s) would change; nothing was touched")
    else:
        verdict = "changed" if report.changed else "no changes"
        out.step(
            f"{verdict}: {len(report.nodes)} host(s) in {report.seconds:.1f}s; "
            f"use it with: kubectl --context {loaded['KUBECONFIG_CONTEXT']}"
        )
    return loaded, report


def run_deploy(out, envs, kubeconfig, context, *, json=False, **options):
    """Plan every settings file, deploy them (pipeline.deploy_stacks with `options`), print the
    summary line (and JSON); exit 1 on the first failed model pull."""
    from . import pipeline, settings

    with reported(out):
        loaded = [settings.load(env) for env in envs]  # every file checked before connecting
        kube = kube_for(loaded[0], kubeconfig, context)
        # One run per stack at a time, from planning (which reads and may generate secrets) on.
        with nullcontext() if options.get("dry_run") else pipeline.locked(kube, loaded, out):
            from . import rotate

            for one in loaded:  # a rotation stopped halfway: deploy would write the old value back
                rotate.refuse_pending(kube, one)
            stacks = pipeline.plan_all(loaded, kube, out)
            objects = sum(len(s.plan.manifests) for s in stacks)
            sources = ", ".join(s.settings.source for s in stacks)
            out.step(f"deploying {objects} objects to {kube.server} (settings: {sources})")
            outcome = pipeline.deploy_stacks(kube, stacks, out, **options)
    out.step(outcome.summary())
    if json:
        out.json(outcome.to_json())
    if failed := outcome.failed_models:
        raise fail(f"model {failed[0].model}: {failed[0].error}" + (f" ({failed[0].hint})" if failed[0].hint else ""))
    return outcome


def run_smoke(out, env, kubeconfig, context, *, json=False, junit=None, only=(), **overrides):
    """Smoke-test one stack (`overrides` for SmokeConfig: insecure, ca_bundle, deadline,
    connect_to), emit the report (table/JSON/JUnit/step summary); exit 1 unless all pass."""
    from . import report as rep
    from . import smoke as sm

    with reported(out):
        loaded, kube, stack = cluster(out, env, kubeconfig, context)
        try:
            if "connect_to" in overrides:
                overrides["connect_to"] = sm.parse_connect_to(overrides["connect_to"])
            config = sm.SmokeConfig.from_settings(loaded, stack.plan.secrets.values, **overrides)
        except ValueError as exc:
            raise fail(f"smoke: {exc}") from None
        result = sm.smoke(kube, config, out, only=list(only))
    rep.emit(result, out, as_json=json, junit=junit, summary=os.environ.get("GITHUB_STEP_SUMMARY"))
    if not result.ok:
        raise Exit(code=1)
    return result


def run_backup(out, env, kubeconfig, context, *, to=None, json=False, cluster=False):
    """`inv backup`: the passphrase first (a missing one costs no connection), then one archive.
    `cluster`: the K3s datastore snapshot instead, over SSH from the first server (bootstrap.cluster_backup)."""
    from . import backup as bk
    from . import settings

    if cluster:
        from . import bootstrap as boot

        with reported(out):
            loaded = settings.load(env)
            out.add_secrets(loaded.secrets.values())
            snapshot = boot.cluster_backup(loaded, bootstrap_options(None, None, None, None, False), out, to=to)
        if json:
            out.json(snapshot.to_json())
        return snapshot
    with reported(out):
        passphrase = bk.passphrase_from_env()
        loaded = settings.load(env)
        out.add_secrets([passphrase, *loaded.secrets.values()])
        result = bk.backup(kube_for(loaded, kubeconfig, context), loaded, out, passphrase=passphrase, to=to)
    if json:
        out.json(result.to_json())
    return result


def run_restore(out, path, env, kubeconfig, context, *, force=False, smoke=True, json=False):
    """`inv restore`: Secrets, database, volume from an archive; roll the pods, pull missing models,
    then smoke (exit 1 unless it passes)."""
    from . import backup as bk
    from . import ollama, settings
    from . import restore as rs

    with reported(out):
        passphrase = bk.passphrase_from_env()
        loaded = settings.load(env)
        out.add_secrets([passphrase, *loaded.secrets.values()])
        kube = kube_for(loaded, kubeconfig, context)
        result = rs.restore(kube, loaded, path, out, passphrase=passphrase, force=force)
        if result.models_missing:
            ollama.pull_models(ollama.Ollama.from_settings(kube, loaded), result.models_missing, out)
    if json:
        out.json(result.to_json())
    if smoke:
        run_smoke(out, env, kubeconfig, context)
    return result


def run_rotate(out, secret, env, kubeconfig, context, *, yes=False, json=False, timeout=600.0):
    """`inv rotate SECRET`: refused without --yes (naming what restarts), under the deploy Lease. The
    new value is generated, or the settings' (env file or environment) — never a flag (argv is public)."""
    from . import pipeline, rotate, settings

    if secret not in rotate.ROTATIONS:
        raise usage(f"rotate {secret}: choose one of {', '.join(rotate.ROTATIONS)}")
    rotation = rotate.ROTATIONS[secret]
    if not yes:
        rolled = ", ".join(f"deployment/{n}" for n in rotation.rollouts) or "nothing"
        extra = f"; {rotation.warning}" if rotation.warning else ""
        raise fail(
            f"rotate {secret} changes it in the running stack and restarts {rolled}{extra}; run again with --yes"
        )
    with reported(out):
        loaded = settings.load(env)
        kube = kube_for(loaded, kubeconfig, context)
        with pipeline.locked(kube, [loaded], out):
            result = rotate.rotate(kube, loaded, secret, out, timeout=timeout)
    if json:
        out.json(result.to_json())
    return result
