"""k3stack's tasks. `inv --list` is the menu; each task's docstring says what it does for you.

Thin on purpose: parse flags, load settings, call k3stack, print. Heavy imports (kubernetes)
happen inside the tasks that need them, so `inv --list` and `inv lint` start fast.
"""

from __future__ import annotations

import os
import shlex
import sys
from contextlib import contextmanager

from invoke import Collection, Exit, task

CLUSTER_HELP = {
    "env": "settings file env/NAME.env (default: $K3STACK_ENV, else 'default')",
    "kubeconfig": "kubeconfig path (default: $KUBECONFIG, else ~/.kube/config)",
    "context": "kubeconfig context (default: KUBE_CONTEXT setting, else the current context)",
}


@contextmanager
def _reported(console):
    """Known failures become one clear line and exit 1; Ctrl-C says what it means and exits 130;
    anything unexpected is one line too (exit 2), with K3STACK_DEBUG=1 for the traceback."""
    from k3stack.errors import K3stackError  # imports nothing: no client loaded to report an error

    try:
        yield
    except KeyboardInterrupt:
        console.error("interrupted: what finished is kept; run the same command again to converge")
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


def _console():
    from k3stack.console import Console

    return Console()


def _usage(text: str) -> Exit:
    """A bad flag value: one line on stderr, exit 2 (a usage error, as argparse and kubectl do)."""
    _console().error(text)
    return Exit(code=2)


def _seconds(value, flag: str = "--timeout") -> float:
    """A duration flag in seconds (invoke passes text); a usage error unless a positive number."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise _usage(f"{flag} {value}: expected a number of seconds greater than 0, e.g. {flag} 600")
    return seconds


def _groups(only: str) -> list[str]:
    """--only cluster,public → the smoke groups, checked before anything connects."""
    from k3stack.smoke import GROUPS

    groups = [g.strip() for g in (only or "").split(",") if g.strip()]
    if unknown := [g for g in groups if g not in GROUPS]:
        raise _usage(f"--only {only}: unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    return groups


def _kube(loaded, kubeconfig, context):
    """A connection to the cluster: --kubeconfig/--context, else KUBE_CONTEXT, else the current one."""
    from k3stack.kube import Kube

    return Kube(kubeconfig, context or loaded["KUBE_CONTEXT"] or None)


def _cluster(console, env, kubeconfig, context):
    """Settings, a connection and the plan (secrets resolved, manifests rendered): all checks
    that need no write happen here, before anything is applied."""
    from k3stack import deploy, settings

    loaded = settings.load(env)
    kube = _kube(loaded, kubeconfig, context)
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

    if port and not str(port).isdigit():
        _console().error(f"--port {port}: not a TCP port number")
        raise Exit(code=1)
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
        "dry_run": "connect, read facts and preflight, then print per host what would change; touch nothing",
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
    timeout="300",
    kubeconfig=None,
    dry_run=False,
):
    """Install K3s (+ Traefik with Let's Encrypt) on the hosts over SSH and bring the kubeconfig home."""
    options = _bootstrap_options(
        host,
        agent,
        user,
        port,
        trust_new_host_keys,
        trust_installer=trust_installer,
        strict_dns=strict_dns,
        timeout=_seconds(timeout),
        kubeconfig_path=kubeconfig,
        dry_run=dry_run,
    )
    _run_bootstrap(_console(), env, options)


def _run_bootstrap(console, env, options):
    from k3stack import bootstrap as boot
    from k3stack import settings

    with _reported(console):
        loaded = settings.load(env)
        console.add_secrets(loaded.secrets.values())
        report = boot.bootstrap(loaded, options, console)
    if options.dry_run:
        would = sum(n.action == "would change" for n in report.nodes)
        console.step(f"dry run: {would} of {len(report.nodes)} host(s) would change; nothing was touched")
        return loaded, report
    verdict = "changed" if report.changed else "no changes"
    console.step(
        f"{verdict}: {len(report.nodes)} host(s) in {report.seconds:.1f}s; "
        f"use it with: kubectl --context {loaded['KUBECONFIG_CONTEXT']}"
    )
    return loaded, report


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
        "pull": "pull OLLAMA_MODELS once Ollama is ready (default on; --no-pull skips)",
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
    timeout="600",
    json=False,
    pull=True,
):
    """Apply the stack in k8s/ to the cluster (server-side apply), wait until it is ready, pull the models."""
    timeout = _seconds(timeout)
    _run_deploy(
        _console(),
        env or [None],
        kubeconfig,
        context,
        dry_run=dry_run,
        force=force,
        prune=prune,
        wait=wait,
        timeout=timeout,
        json=json,
        pull=pull,
    )


def _run_deploy(console, envs, kubeconfig, context, *, dry_run, force, prune, wait, timeout, json, pull):
    from k3stack import deploy as stack
    from k3stack.ollama import Ollama, OllamaError, pull_models

    with _reported(console):
        plans = _plans(console, envs, kubeconfig, context)
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
            timeout=_seconds(timeout),
        )
        pulled = []
        if pull and wait and not dry_run:
            for loaded, _, _ in plans:
                if loaded.models:
                    try:
                        pulled.append(pull_models(Ollama.from_settings(kube, loaded), loaded.models, console))
                    except OllamaError as exc:
                        raise _failure(console, f"model pull: {exc}") from None
        new_models = sum(r.action == "pulled" for p in pulled for r in p.results)
        counts = ", ".join(f"{n} {action}" for action, n in sorted(report.counts().items()))
        if new_models:
            counts += f", {new_models} model(s) pulled"
        verdict = "no changes" if not (report.changed or new_models) else "changed"
        console.step(f"{verdict}: {counts} in {report.seconds:.1f}s ({sum(kube.requests.values())} API requests)")
        if json:
            console.json(
                {
                    "changed": report.changed or bool(new_models),
                    "counts": report.counts(),
                    "seconds": round(report.seconds, 2),
                    "objects": [
                        {"object": r.describe, "namespace": r.namespace, "action": r.action}
                        for r in [*report.results, *report.pruned]
                    ],
                    "rollouts": {t.describe(): s.message for t, s in report.rollouts.items()},
                    "models": [m for p in pulled for m in p.to_json()["models"]],
                }
            )
        failed = [r for p in pulled for r in p.results if not r.ok]
        if failed:
            raise _failure(
                console,
                f"model {failed[0].model}: {failed[0].error}" + (f" ({failed[0].hint})" if failed[0].hint else ""),
            )
    return report


def _failure(console, message: str):
    console.error(message)
    return Exit(code=1)


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
        for path in mf.skipped_files():
            console.note(
                f"skipped k8s/{path.parent.name}/{path.name}: not a *.yaml/*.yml manifest (or an editor leftover)"
            )
        if not show_secrets:
            objects = [
                mf.Manifest({**m.obj, "data": {k: "PHJlZGFjdGVkPg==" for k in m.obj.get("data", {})}}, m.source)
                if m.kind == "Secret"
                else m
                for m in objects
            ]
        if validate:
            try:
                import kubernetes_validate  # noqa: F401 - a dev requirement; checked before use
            except ImportError:
                console.error("render --validate needs kubernetes-validate — fix: pip install -r requirements-dev.txt")
                raise Exit(code=1) from None
            custom: list = []
            problems = mf.validate(objects, loaded["K8S_VERSION"], skipped=custom)
            if problems:
                raise mf.RenderError(problems)
            kinds = sorted({m.kind for m in custom})
            console.note(
                f"valid: {len(objects) - len(custom)} objects checked strictly against Kubernetes "
                f"{loaded['K8S_VERSION']}"
                + (f"; {len(custom)} custom resources ({', '.join(kinds)}) have no bundled schema" if custom else "")
            )
        if out:
            directory = Path(out)
            directory.mkdir(parents=True, exist_ok=True)
            for target in [*mf.TARGETS, "k3stack"]:
                chosen = [m for m in objects if m.source.split("/")[0] == target]
                if chosen:
                    path = directory / f"{target}.yaml"
                    # With secrets shown, the file is private from its first byte (even if it
                    # existed before with a looser mode).
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if show_secrets else 0o644)
                    if show_secrets:
                        os.fchmod(fd, 0o600)
                    with os.fdopen(fd, "w") as written:
                        written.write(mf.to_yaml(chosen))
            console.step(f"wrote {len(objects)} objects to {directory}/")
        else:
            sys.stdout.write(mf.to_yaml(objects))


@task(help=CLUSTER_HELP)
def status(c, env=None, kubeconfig=None, context=None):
    """Show each component: ready/desired, image tag, volumes (bound + size) and URL; exit 1 unless all are ready."""
    from k3stack import deploy as stack

    console = _console()
    with _reported(console):
        _, kube, plan = _cluster(console, env, kubeconfig, context)
        rows = stack.status_rows(kube, plan)
    console.table(
        f"k3stack on {kube.server}", ["namespace", "workload", "ready", "state", "image", "volumes", "url"], rows
    )
    if not stack.healthy(rows):
        unhealthy = ", ".join(f"{row[1]} ({row[0]}): {row[3]}" for row in rows if row[3] != "ready")
        console.error(f"the stack is not healthy: {unhealthy} — `inv deploy` brings it back")
        raise Exit(code=1)


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


SMOKE_HELP = {
    **CLUSTER_HELP,
    "json": "print the results as JSON",
    "junit": "write JUnit XML (one testcase per check) to this file",
    "insecure": "accept a Let's Encrypt STAGING certificate (nothing else) for the public checks",
    "ca_bundle": "trust this CA file for the public checks (default: SMOKE_CA_BUNDLE, else the system's)",
    "resolve": "HOST:PORT:ADDR: reach HOST:PORT at ADDR without DNS, like curl --resolve; repeatable",
    "timeout": "seconds eventually-true checks keep retrying (default: SMOKE_TIMEOUT)",
    "only": "run only these groups, comma-separated: cluster, in-cluster, public",
}


@task(iterable=["resolve"], help=SMOKE_HELP)
def smoke(
    c,
    env=None,
    kubeconfig=None,
    context=None,
    json=False,
    junit=None,
    insecure=False,
    ca_bundle=None,
    resolve=None,
    timeout=None,
    only="",
):
    """Prove the stack works end to end: cluster, Ollama and Open WebUI inside; HTTPS, login, websocket outside."""
    timeout = _seconds(timeout) if timeout is not None else None
    _run_smoke(_console(), env, kubeconfig, context, json, junit, insecure, ca_bundle, resolve, timeout, _groups(only))


def _run_smoke(console, env, kubeconfig, context, json, junit, insecure, ca_bundle, resolve, timeout, only):
    from k3stack import report as rep
    from k3stack import smoke as sm

    with _reported(console):
        loaded, kube, plan = _cluster(console, env, kubeconfig, context)
        overrides = {"insecure": insecure}
        if ca_bundle:
            overrides["ca_bundle"] = ca_bundle
        if timeout:
            overrides["deadline"] = timeout
        try:
            if resolve:
                overrides["connect_to"] = sm.parse_connect_to(resolve)
            config = sm.SmokeConfig.from_settings(loaded, plan.secrets.values, **overrides)
            result = sm.smoke(kube, config, console, only=only)
        except ValueError as exc:
            raise _failure(console, f"smoke: {exc}") from None
    rep.emit(result, console, as_json=json, junit=junit)
    if not result.ok:
        raise Exit(code=1)
    return result


@task(
    iterable=["model"],
    help={
        **CLUSTER_HELP,
        "model": "a model to pull, e.g. llama3.1:8b; repeatable (default: OLLAMA_MODELS)",
        "json": "print the pull report as JSON",
        "in_cluster": "pull from a Job next to Ollama (k8s/jobs/) and follow it, instead of streaming here",
        "timeout": "seconds to wait for the in-cluster Job",
    },
)
def models_pull(c, env=None, kubeconfig=None, context=None, model=None, json=False, in_cluster=False, timeout="3600"):
    """Pull models into Ollama through the API server (progress, resume, verify); present ones are skipped."""
    from k3stack import settings
    from k3stack.ollama import Ollama, OllamaError, pull_models

    console = _console()
    timeout = _seconds(timeout)
    with _reported(console):
        loaded = settings.load(env)
        kube = _kube(loaded, kubeconfig, context)
        names = model or loaded.models
        try:
            if in_cluster:
                from k3stack.pulljob import pull_in_cluster

                action = pull_in_cluster(kube, loaded, names, console, timeout=timeout)
                if json:
                    console.json({"ok": True, "job": action, "models": names})
                return
            report = pull_models(Ollama.from_settings(kube, loaded), names, console)
        except OllamaError as exc:
            raise _failure(console, f"{exc}" + (f" ({exc.hint})" if exc.hint else "")) from None
    if json:
        console.json(report.to_json())
    if not report.ok:
        raise Exit(code=1)


@task(help={**CLUSTER_HELP, "json": "print the list as JSON"})
def models_list(c, env=None, kubeconfig=None, context=None, json=False):
    """List the models Ollama has, and which configured ones are missing."""
    from k3stack import ollama, settings

    console = _console()
    with _reported(console):
        loaded = settings.load(env)
        kube = _kube(loaded, kubeconfig, context)
        try:
            present = ollama.Ollama.from_settings(kube, loaded).models()
        except ollama.OllamaError as exc:
            raise _failure(console, str(exc)) from None
    if json:
        console.json([{"name": m.name, "size": m.size, "digest": m.digest} for m in present])
    else:
        console.table("models", ollama.MODEL_COLUMNS, ollama.model_rows(present, loaded.models))


@task(
    iterable=["host", "agent"],
    help={
        **HOSTS_HELP,
        "trust_installer": "run the installer even though K3S_INSTALL_SHA256 is not set (prints its checksum)",
        "insecure": SMOKE_HELP["insecure"],
        "junit": SMOKE_HELP["junit"],
        "only": SMOKE_HELP["only"] + " (default: all)",
        "timeout": "seconds to wait at each stage",
        "pull": "pull OLLAMA_MODELS after the deploy (default on; --no-pull skips)",
    },
)
def up(
    c,
    env=None,
    host=None,
    agent=None,
    user=None,
    port=None,
    trust_new_host_keys=False,
    trust_installer=False,
    insecure=False,
    junit=None,
    only="",
    timeout="600",
    pull=True,
):
    """Everything: bootstrap the hosts, deploy the stack, pull the models, smoke-test it; stops at the first failure."""
    console = _console()
    timeout, groups = _seconds(timeout), _groups(only)  # bad flags fail before any host is touched
    options = _bootstrap_options(
        host,
        agent,
        user,
        port,
        trust_new_host_keys,
        trust_installer=trust_installer,
        timeout=timeout,
    )
    console.step("1/3 bootstrap")
    loaded, report = _run_bootstrap(console, env, options)
    kubeconfig = str(report.kubeconfig.path)
    context = loaded["KUBECONFIG_CONTEXT"]
    console.step("2/3 deploy")
    _run_deploy(
        console,
        [env],
        kubeconfig,
        context,
        dry_run=False,
        force=False,
        prune=True,
        wait=True,
        timeout=timeout,
        json=False,
        pull=pull,
    )
    console.step("3/3 smoke")
    _run_smoke(console, env, kubeconfig, context, False, junit, insecure, None, None, None, groups)


@task(name="setup")
def setup_tests(c):
    """Install what the tests need (system packages, linters, the test bed's builds); seconds when done."""
    from tests.provision import is_root, provision

    console = _console()
    console.step("setting up the test prerequisites" + ("" if is_root() else " (not root: checking only)"))
    outcomes = provision(lambda o: console.result(o.step, o.status, o.detail), announce=console.line)
    if any(o.status == "failed" for o in outcomes):
        console.error("setup failed (the step above says why), so no test ran — fix it and run again")
        raise Exit(code=1)
    if any(o.status == "missing" for o in outcomes):
        console.warn("missing prerequisites: their tests skip (or fail under CI); run `inv setup` as root")


@task(
    name="test",
    help={
        "k": "only tests matching this pytest -k expression",
        "path": "a test file or folder (default: all of tests/)",
        "require_testbed": "fail, not skip, when a tier or tool cannot run (default when CI=true)",
        "setup": "install what the tests need first, as `inv setup` does (default: on; --no-setup skips it)",
    },
)
def run_tests(c, k=None, path="tests", require_testbed=False, setup=True):
    """Run the test suite (lint, unit, a real Kubernetes API, real SSH hosts), set up first."""
    if setup:
        setup_tests(c)
    env = {"K3STACK_REQUIRE_TESTBED": "1"} if require_testbed else {}
    args = [sys.executable, "-m", "pytest", path] + (["-k", k] if k else [])
    result = c.run(shlex.join(args), env=env, pty=False, warn=True)
    if result.exited == 5:  # pytest: no test was collected — a broken suite, never a pass
        _console().error(f"no tests collected from {path}" + (f" with -k {k!r}" if k else ""))
        raise Exit(code=1)
    if result.exited:
        raise Exit(code=result.exited)


@task
def lint(c):
    """Check style and common bugs with ruff (lint + format check)."""
    c.run(f"{sys.executable} -m ruff check .", pty=False)
    c.run(f"{sys.executable} -m ruff format --check .", pty=False)


# `inv --list` is the menu: models.* group the Ollama tasks.
models = Collection("models")
models.add_task(models_pull, name="pull")
models.add_task(models_list, name="list")
ns = Collection(
    bootstrap,
    kubeconfig,
    reset,
    deploy,
    diff,
    render,
    status,
    destroy,
    credentials,
    smoke,
    up,
    setup_tests,
    run_tests,
    lint,
    models,
)
