"""k3stack's tasks. `inv --list` is the menu; each task's docstring says what it does for you.

Thin on purpose: parse flags, load settings, call k3stack, print. Heavy imports (kubernetes)
happen inside the tasks that need them, so `inv --list` and `inv lint` start fast.
"""

from __future__ import annotations

import os
import shlex
import sys
from contextlib import contextmanager

from invoke import Exit, task

CLUSTER_HELP = {
    "env": "settings file env/NAME.env (default: $K3STACK_ENV, else 'default')",
    "kubeconfig": "kubeconfig path (default: $KUBECONFIG, else ~/.kube/config)",
    "context": "kubeconfig context (default: KUBE_CONTEXT setting, else the current context)",
}


@contextmanager
def _reported(console):
    """Known failures become one clear message and exit status 1; no traceback."""
    from k3stack.apply import ApplyError
    from k3stack.bootstrap import BootstrapError
    from k3stack.kube import KubeError
    from k3stack.kubeconfig import KubeconfigError
    from k3stack.manifests import RenderError
    from k3stack.remote.connection import RemoteError
    from k3stack.rollout import RolloutError
    from k3stack.secrets import SecretsError
    from k3stack.settings import SettingsError

    known = (SettingsError, RenderError, SecretsError, ApplyError, KubeError, RolloutError)
    try:
        yield
    except (*known, BootstrapError, RemoteError, KubeconfigError) as exc:
        console.error(str(exc))
        raise Exit(code=1) from None


def _console():
    from k3stack.console import Console

    return Console()


def _cluster(console, env, kubeconfig, context):
    """Settings, a connection and the plan (secrets resolved, manifests rendered): all checks
    that need no write happen here, before anything is applied."""
    from k3stack import deploy, settings
    from k3stack.kube import Kube

    loaded = settings.load(env)
    kube = Kube(kubeconfig, context or loaded["KUBE_CONTEXT"] or None)
    plan = deploy.make_plan(loaded, deploy.read_secret_from(kube))
    console.add_secrets(plan.secrets.values.values())
    return loaded, kube, plan


HOSTS_HELP = {
    "env": CLUSTER_HELP["env"],
    "host": "server host [user@]host[:port]; repeat for more; `local` = this machine (default: SERVERS)",
    "agent": "agent host, same form; repeat for more (default: AGENTS, unless --host is given)",
    "user": "SSH user for entries without one (default: SSH_USER)",
    "port": "SSH port for entries without one (default: SSH_PORT)",
    "trust_new_host_keys": "accept unknown host keys, print their fingerprints and save them to SSH_KNOWN_HOSTS",
}


def _bootstrap_options(host, agent, user, port, trust_new_host_keys, **more):
    from k3stack.bootstrap import Options

    return Options(
        hosts=tuple(host or ()),
        agents=tuple(agent or ()),
        user=user,
        port=int(port) if port else None,
        trust_new_host_keys=trust_new_host_keys,
        **more,
    )


def _plans(console, envs, kubeconfig, context):
    """(settings, kube, plan) per settings file, made side by side; one connection for all."""
    from concurrent.futures import ThreadPoolExecutor

    first = _cluster(console, envs[0], kubeconfig, context)
    if len(envs) == 1:
        return [first]
    from k3stack import deploy, settings

    kube = first[1]

    def plan_for(env):
        loaded = settings.load(env)
        plan = deploy.make_plan(loaded, deploy.read_secret_from(kube))
        console.add_secrets(plan.secrets.values.values())
        return loaded, kube, plan

    with ThreadPoolExecutor(max_workers=len(envs) - 1) as pool:
        return [first, *pool.map(plan_for, envs[1:])]


@task(
    iterable=["host", "agent"],
    help={
        **HOSTS_HELP,
        "trust_installer": "run the installer even though K3S_INSTALL_SHA256 is not set (prints its checksum)",
        "strict_dns": "fail, not warn, when CHAT_HOST/MONITOR_HOST do not resolve to the first server",
        "timeout": "seconds to wait for K3s to start and the cluster to be ready",
        "kubeconfig": "write the cluster's kubeconfig here (default: KUBECONFIG_PATH, merged)",
    },
)
def bootstrap(
    c,
    env=None,
    host=None,
    agent=None,
    user=None,
    port=None,
    trust_new_host_keys=False,
    trust_installer=False,
    strict_dns=False,
    timeout=300,
    kubeconfig=None,
):
    """Install K3s (+ Traefik with Let's Encrypt) on the hosts over SSH and bring the kubeconfig home."""
    from k3stack import bootstrap as boot
    from k3stack import settings

    console = _console()
    with _reported(console):
        loaded = settings.load(env)
        console.add_secrets(loaded.secrets.values())
        options = _bootstrap_options(
            host,
            agent,
            user,
            port,
            trust_new_host_keys,
            trust_installer=trust_installer,
            strict_dns=strict_dns,
            timeout=float(timeout),
            kubeconfig_path=kubeconfig,
        )
        report = boot.bootstrap(loaded, options, console)
    verdict = "changed" if report.changed else "no changes"
    console.step(
        f"{verdict}: {len(report.nodes)} host(s) in {report.seconds:.1f}s; "
        f"use it with: kubectl --context {loaded['KUBECONFIG_CONTEXT']}"
    )


@task(
    iterable=["host"],
    help={
        **{k: v for k, v in HOSTS_HELP.items() if k != "agent"},
        "kubeconfig": "write it here (default: KUBECONFIG_PATH, merged)",
    },
)
def kubeconfig(c, env=None, host=None, user=None, port=None, trust_new_host_keys=False, kubeconfig=None):
    """Fetch the cluster's kubeconfig from the first server and merge it into yours (new entries win)."""
    from k3stack import bootstrap as boot
    from k3stack import settings

    console = _console()
    with _reported(console):
        loaded = settings.load(env)
        options = _bootstrap_options(host, None, user, port, trust_new_host_keys, kubeconfig_path=kubeconfig)
        boot.kubeconfig_only(loaded, options, console)


@task(iterable=["host", "agent"], help={**HOSTS_HELP, "yes": "really uninstall K3s (required): all cluster data goes"})
def reset(c, env=None, host=None, agent=None, user=None, port=None, trust_new_host_keys=False, yes=False):
    """Uninstall K3s from the hosts (agents first) and remove the cluster's kubeconfig context."""
    from k3stack import bootstrap as boot
    from k3stack import settings

    console = _console()
    if not yes:
        console.error("reset uninstalls K3s and deletes the cluster with ALL ITS DATA; run again with --yes to confirm")
        raise Exit(code=1)
    with _reported(console):
        loaded = settings.load(env)
        options = _bootstrap_options(host, agent, user, port, trust_new_host_keys)
        boot.reset(loaded, options, console)


@task(
    iterable=["env"],
    help={
        **CLUSTER_HELP,
        "env": CLUSTER_HELP["env"] + "; repeat to deploy several stacks (own namespaces) in one run",
        "dry_run": "ask the API server what would happen (server dry run); change nothing",
        "force": "take over fields another field manager owns (server-side apply --force-conflicts)",
        "prune": "delete this stack's objects no longer in k8s/ (never PVCs or Secrets; default on)",
        "wait": "wait for every workload to be ready, like kubectl rollout status (default on)",
        "timeout": "seconds to wait for rollouts",
        "json": "print a JSON summary at the end (for CI)",
    },
)
def deploy(
    c,
    env=None,
    kubeconfig=None,
    context=None,
    dry_run=False,
    force=False,
    prune=True,
    wait=True,
    timeout=600,
    json=False,
):
    """Apply the stack in k8s/ to the cluster (server-side apply) and wait until it is ready."""
    from k3stack import deploy as stack

    console = _console()
    with _reported(console):
        plans = _plans(console, env or [None], kubeconfig, context)
        kube = plans[0][1]
        objects = sum(len(plan.manifests) for _, _, plan in plans)
        sources = ", ".join(loaded.source for loaded, _, _ in plans)
        console.step(f"deploying {objects} objects to {kube.server} (settings: {sources})")
        report = stack.deploy_many(
            kube,
            [plan for _, _, plan in plans],
            console,
            force=force,
            dry_run=dry_run,
            prune=prune,
            wait=wait,
            timeout=float(timeout),
        )
        counts = ", ".join(f"{n} {action}" for action, n in sorted(report.counts().items()))
        verdict = "no changes" if not report.changed else "changed"
        console.step(f"{verdict}: {counts} in {report.seconds:.1f}s ({sum(kube.requests.values())} API requests)")
        if json:
            console.json(
                {
                    "changed": report.changed,
                    "counts": report.counts(),
                    "seconds": round(report.seconds, 2),
                    "objects": [
                        {"object": r.describe, "namespace": r.namespace, "action": r.action}
                        for r in [*report.results, *report.pruned]
                    ],
                    "rollouts": {t.describe(): s.message for t, s in report.rollouts.items()},
                }
            )


@task(help=CLUSTER_HELP)
def diff(c, env=None, kubeconfig=None, context=None):
    """Show what `inv deploy` would change, as a unified diff (secrets redacted); exit 1 if anything would."""
    from k3stack import deploy as stack

    console = _console()
    with _reported(console):
        _, kube, plan = _cluster(console, env, kubeconfig, context)
        changed = stack.show_diff(kube, plan, console)
    console.step(f"{changed} object(s) would change" if changed else "no changes")
    if changed:
        raise Exit(code=1)


@task(
    help={
        "env": CLUSTER_HELP["env"],
        "out": "write one YAML file per target into this directory (default: print to stdout)",
        "show_secrets": "include Secret data (generated values differ from the cluster's!)",
        "validate": "also validate every object strictly against K8S_VERSION (needs requirements-dev)",
    }
)
def render(c, env=None, out=None, show_secrets=False, validate=False):
    """Render k8s/ with your settings, without a cluster: print or write the objects deploy would apply."""
    from pathlib import Path

    from k3stack import deploy as stack
    from k3stack import manifests as mf
    from k3stack import settings

    console = _console()
    with _reported(console):
        loaded = settings.load(env)
        plan = stack.make_plan(loaded, lambda namespace, name: None)
        objects = plan.manifests
        if not show_secrets:
            objects = [
                mf.Manifest({**m.obj, "data": {k: "PHJlZGFjdGVkPg==" for k in m.obj.get("data", {})}}, m.source)
                if m.kind == "Secret"
                else m
                for m in objects
            ]
        if validate:
            problems = mf.validate(objects, loaded["K8S_VERSION"])
            if problems:
                raise mf.RenderError(problems)
        if out:
            directory = Path(out)
            directory.mkdir(parents=True, exist_ok=True)
            for target in [*mf.TARGETS, "k3stack"]:
                chosen = [m for m in objects if m.source.split("/")[0] == target]
                if chosen:
                    path = directory / f"{target}.yaml"
                    path.write_text(mf.to_yaml(chosen))
                    if show_secrets:
                        path.chmod(0o600)
            console.step(f"wrote {len(objects)} objects to {directory}/")
        else:
            sys.stdout.write(mf.to_yaml(objects))


@task(help=CLUSTER_HELP)
def status(c, env=None, kubeconfig=None, context=None):
    """Show each component: ready/desired, image tag, volumes (bound + size) and URL."""
    from k3stack import deploy as stack

    console = _console()
    with _reported(console):
        _, kube, plan = _cluster(console, env, kubeconfig, context)
        rows = stack.status_rows(kube, plan)
    console.table(
        f"k3stack on {kube.server}", ["namespace", "workload", "ready", "state", "image", "volumes", "url"], rows
    )


@task(
    help={
        **CLUSTER_HELP,
        "yes": "really delete (required)",
        "purge": "also delete PVCs (all data!), Secrets and the namespaces",
    }
)
def destroy(c, env=None, kubeconfig=None, context=None, yes=False, purge=False):
    """Remove the stack from the cluster; volumes and secrets stay unless --purge."""
    from k3stack import deploy as stack

    console = _console()
    if not yes:
        console.error(
            "destroy deletes the stack's workloads"
            + (" and ALL DATA" if purge else "")
            + "; run again with --yes to confirm"
        )
        raise Exit(code=1)
    with _reported(console):
        _, kube, plan = _cluster(console, env, kubeconfig, context)
        results = stack.destroy(kube, plan, console, purge=purge)
    kept = "" if purge else " (PVCs and Secrets kept: `inv deploy` brings the stack back with its data)"
    console.step(f"deleted {len(results)} object(s){kept}")


@task(help=CLUSTER_HELP)
def credentials(c, env=None, kubeconfig=None, context=None):
    """Show the Open WebUI admin URL and login, and the Netdata login (refused under CI)."""
    from k3stack.console import Console

    if os.environ.get("CI", "").lower() in ("true", "1"):
        Console().error("credentials are not printed when CI=true (they would end up in the job log)")
        raise Exit(code=1)
    plain = Console()
    with _reported(plain):
        loaded, _kube, plan = _cluster(Console(), env, kubeconfig, context)
    values = plan.secrets.values
    plain.table(
        "credentials",
        ["service", "url", "user", "password"],
        [
            [
                "Open WebUI (admin)",
                f"https://{loaded['CHAT_HOST']}",
                loaded["WEBUI_ADMIN_EMAIL"],
                values["WEBUI_ADMIN_PASSWORD"],
            ],
            ["Netdata", f"https://{loaded['MONITOR_HOST']}", loaded["NETDATA_USER"], values["NETDATA_PASSWORD"]],
        ],
    )


@task(
    name="test",
    help={
        "k": "only tests matching this pytest -k expression",
        "path": "a test file or folder (default: all of tests/)",
        "require_testbed": "fail, not skip, when the kube/ssh test bed cannot run (CI sets this)",
    },
)
def run_tests(c, k=None, path="tests", require_testbed=False):
    """Run the test suite: unit tests, then a real Kubernetes API and real SSH hosts (needs root)."""
    env = {"K3STACK_REQUIRE_TESTBED": "1"} if require_testbed else {}
    args = [sys.executable, "-m", "pytest", path] + (["-k", k] if k else [])
    c.run(shlex.join(args), env=env, pty=False)


@task
def lint(c):
    """Check style and common bugs with ruff (lint + format check)."""
    c.run(f"{sys.executable} -m ruff check .", pty=False)
    c.run(f"{sys.executable} -m ruff format --check .", pty=False)
