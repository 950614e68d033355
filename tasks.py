"""k3stack's tasks. `inv --list` is the menu; each task's docstring says what it does for you.

Thin on purpose: flags in, one library call, one rendering of the result. The shared plumbing
(flag help and parsing, exit codes, the runs `up` chains) is k3stack/face.py; the work is the
library's (k3stack/pipeline.py and below). Heavy imports happen inside the tasks that need them.
"""

from __future__ import annotations

from invoke import Collection, Exit, task

from k3stack import face
from tests.tasks import lint, mutate, run_tests, setup_tests


@task(iterable=["host", "agent"], help=face.BOOTSTRAP_HELP)
def bootstrap(c, env=None, host=None, agent=None, user=None, port=None, trust_new_host_keys=False,
              trust_installer=False, strict_dns=False, timeout="300", kubeconfig=None, dry_run=False):  # fmt: skip
    """Install K3s (+ Traefik with Let's Encrypt) on the hosts over SSH and bring the kubeconfig home."""
    options = face.bootstrap_options(host, agent, user, port, trust_new_host_keys, trust_installer=trust_installer,
                                     strict_dns=strict_dns, timeout=face.seconds(timeout), kubeconfig_path=kubeconfig,
                                     dry_run=dry_run)  # fmt: skip
    face.run_bootstrap(face.console(), env, options)


@task(
    iterable=["host"],
    help={
        **{k: v for k, v in face.HOSTS_HELP.items() if k != "agent"},
        "kubeconfig": "write it here (default: KUBECONFIG_PATH, merged)",
    },
)
def kubeconfig(c, env=None, host=None, user=None, port=None, trust_new_host_keys=False, kubeconfig=None):
    """Fetch the cluster's kubeconfig from the first server and merge it into yours (new entries win)."""
    from k3stack import bootstrap as boot
    from k3stack import settings

    out = face.console()
    options = face.bootstrap_options(host, None, user, port, trust_new_host_keys, kubeconfig_path=kubeconfig)
    with face.reported(out):
        boot.kubeconfig_only(settings.load(env), options, out)


@task(
    iterable=["host", "agent"],
    help={**face.HOSTS_HELP, "yes": "really uninstall K3s (required): all cluster data goes"},
)
def reset(c, env=None, host=None, agent=None, user=None, port=None, trust_new_host_keys=False, yes=False):
    """Uninstall K3s from the hosts (agents first) and remove the cluster's kubeconfig context."""
    from k3stack import bootstrap as boot
    from k3stack import settings

    if not yes:
        raise face.fail(
            "reset uninstalls K3s and deletes the cluster with ALL ITS DATA; run again with --yes to confirm"
        )
    out = face.console()
    options = face.bootstrap_options(host, agent, user, port, trust_new_host_keys)
    with face.reported(out):
        boot.reset(settings.load(env), options, out)


@task(iterable=["env"], help=face.DEPLOY_HELP)
def deploy(c, env=None, kubeconfig=None, context=None, dry_run=False, force=False, prune=True, wait=True,
           timeout="600", json=False, pull=True, backup=False, skip_backup=False, backup_dir=None):  # fmt: skip
    """Apply the stack in k8s/ to the cluster (server-side apply), wait until it is ready, pull the models."""
    choice = True if backup else (False if skip_backup else None)  # None: people get a backup, CI must choose
    face.run_deploy(face.console(), env or [None], kubeconfig, context, json=json, dry_run=dry_run, force=force,
                    prune=prune, wait=wait, timeout=face.seconds(timeout), pull=pull, backup=choice,
                    backup_dir=backup_dir, ci=face.in_ci())  # fmt: skip


@task(help=face.CLUSTER_HELP)
def diff(c, env=None, kubeconfig=None, context=None):
    """Show what `inv deploy` would change, as a unified diff (secrets redacted); exit 1 if anything would."""
    from k3stack import deploy as stack

    out = face.console()
    with face.reported(out):
        _, kube, planned = face.cluster(out, env, kubeconfig, context)
        changed = stack.show_diff(kube, planned.plan, out)
    out.step(f"{changed} object(s) would change" if changed else "no changes")
    if changed:
        raise Exit(code=1)


@task(help=face.RENDER_HELP)
def render(c, env=None, out=None, show_secrets=False, validate=False):
    """Render k8s/ with your settings, without a cluster: print or write the objects deploy would apply."""
    from pathlib import Path

    from k3stack import manifests, pipeline, settings

    console = face.console()
    with face.reported(console):
        loaded = settings.load(env)
        objects = pipeline.rendered(loaded, show_secrets=show_secrets)
        for path in manifests.skipped_files():
            console.note(
                f"skipped k8s/{path.parent.name}/{path.name}: not a *.yaml/*.yml manifest (or an editor leftover)"
            )
        if validate:
            console.note(pipeline.validate_rendered(objects, loaded["K8S_VERSION"]))
        if out:
            pipeline.write_rendered(objects, Path(out), private=show_secrets)
            console.step(f"wrote {len(objects)} objects to {out}/")
        else:
            console.document(manifests.to_yaml(objects))


@task(help=face.BACKUP_HELP)
def backup(c, env=None, kubeconfig=None, context=None, to=None, json=False, cluster=False):
    """Back the stack up into one archive: database, Open WebUI's volume, Secrets (encrypted), models, settings."""
    face.run_backup(face.console(), env, kubeconfig, context, to=to, json=json, cluster=cluster)


@task(help=face.RESTORE_HELP)
def restore(c, path, env=None, kubeconfig=None, context=None, force=False, smoke=True, json=False):
    """Restore an archive of `inv backup`: Secrets, database, volume; roll the pods, pull missing models, smoke."""
    face.run_restore(face.console(), path, env, kubeconfig, context, force=force, smoke=smoke, json=json)


@task(help=face.ROTATE_HELP)
def rotate(c, secret, env=None, kubeconfig=None, context=None, yes=False, json=False, timeout="600"):
    """Change POSTGRES_PASSWORD, REDIS_PASSWORD, WEBUI_SECRET_KEY or NETDATA_PASSWORD of the running stack, verified."""
    face.run_rotate(face.console(), secret, env, kubeconfig, context, yes=yes, json=json, timeout=face.seconds(timeout))


@task(help=face.CLUSTER_HELP)
def status(c, env=None, kubeconfig=None, context=None):
    """Show each component: ready/desired, image tag, volumes (bound + size) and URL; exit 1 unless all are ready."""
    from k3stack import deploy as stack
    from k3stack import pipeline

    out = face.console()
    with face.reported(out):
        _, kube, planned = face.cluster(out, env, kubeconfig, context)
        rows = stack.status_rows(kube, planned.plan)
    out.table(f"k3stack on {kube.server}", ["namespace", "workload", "ready", "state", "image", "volumes", "url"], rows)
    if not stack.healthy(rows):
        raise face.fail(f"the stack is not healthy: {pipeline.not_ready(rows)} — `inv deploy` brings it back")


@task(
    help={
        **face.CLUSTER_HELP,
        "yes": "really delete (required)",
        "purge": "also delete PVCs (all data!), Secrets and the namespaces",
    }
)
def destroy(c, env=None, kubeconfig=None, context=None, yes=False, purge=False):
    """Remove the stack from the cluster; volumes and secrets stay unless --purge."""
    from k3stack import deploy as stack

    if not yes:
        raise face.fail(
            f"destroy deletes the stack's workloads{' and ALL DATA' if purge else ''}; run again with --yes to confirm"
        )
    out = face.console()
    with face.reported(out):
        _, kube, planned = face.cluster(out, env, kubeconfig, context)
        results = stack.destroy(kube, planned.plan, out, purge=purge)
    kept = "" if purge else " (PVCs and Secrets kept: `inv deploy` brings the stack back with its data)"
    out.step(f"deleted {len(results)} object(s){kept}")


@task(help=face.CLUSTER_HELP)
def credentials(c, env=None, kubeconfig=None, context=None):
    """Show the Open WebUI admin URL and login, and the Netdata login (refused under CI)."""
    from k3stack import pipeline

    if face.in_ci():
        raise face.fail("credentials are not printed when CI=true (they would end up in the job log)")
    plain = face.console()  # a console that redacts nothing: showing these is the point
    with face.reported(plain):
        loaded, _, planned = face.cluster(face.console(), env, kubeconfig, context)
    rows = pipeline.credential_rows(loaded, planned.plan.secrets.values)
    plain.table("credentials", ["service", "url", "user", "password"], rows)


@task(iterable=["resolve"], help=face.SMOKE_HELP)
def smoke(c, env=None, kubeconfig=None, context=None, json=False, junit=None, insecure=False, ca_bundle=None,
          resolve=None, timeout=None, only=""):  # fmt: skip
    """Prove the stack works end to end: cluster, Ollama and Open WebUI inside; HTTPS, login, websocket outside."""
    overrides = {"insecure": insecure, "ca_bundle": ca_bundle, "deadline": timeout and face.seconds(timeout),
                 "connect_to": resolve}  # fmt: skip
    face.run_smoke(face.console(), env, kubeconfig, context, json=json, junit=junit, only=face.groups(only),
                   **{k: v for k, v in overrides.items() if v})  # fmt: skip


@task(iterable=["model"], help=face.PULL_HELP)
def models_pull(c, env=None, kubeconfig=None, context=None, model=None, json=False, in_cluster=False, timeout="3600"):
    """Pull models into Ollama through the API server (progress, resume, verify); present ones are skipped."""
    from k3stack import ollama, pulljob, settings

    out, timeout = face.console(), face.seconds(timeout)
    with face.reported(out):
        loaded = settings.load(env)
        kube, names = face.kube_for(loaded, kubeconfig, context), model or loaded.models
        if in_cluster:
            action = pulljob.pull_in_cluster(kube, loaded, names, out, timeout=timeout)
            report = None
        else:
            report = ollama.pull_models(ollama.Ollama.from_settings(kube, loaded), names, out)
    if json:
        out.json(report.to_json() if report else {"ok": True, "job": action, "models": names})
    if report and not report.ok:
        raise Exit(code=1)


@task(help={**face.CLUSTER_HELP, "json": "print the list as JSON"})
def models_list(c, env=None, kubeconfig=None, context=None, json=False):
    """List the models Ollama has, and which configured ones are missing."""
    from k3stack import ollama, settings

    out = face.console()
    with face.reported(out):
        loaded = settings.load(env)
        present = ollama.Ollama.from_settings(face.kube_for(loaded, kubeconfig, context), loaded).models()
    if json:
        out.json([{"name": m.name, "size": m.size, "digest": m.digest} for m in present])
    else:
        out.table("models", ollama.MODEL_COLUMNS, ollama.model_rows(present, loaded.models))


@task(iterable=["host", "agent"], help=face.UP_HELP)
def up(c, env=None, host=None, agent=None, user=None, port=None, trust_new_host_keys=False, trust_installer=False,
       insecure=False, junit=None, only="", timeout="600", pull=True):  # fmt: skip
    """Everything: bootstrap the hosts, deploy the stack, pull the models, smoke-test it; stops at the first failure."""
    out = face.console()
    timeout, groups = face.seconds(timeout), face.groups(only)  # bad flags fail before any host is touched
    options = face.bootstrap_options(host, agent, user, port, trust_new_host_keys, trust_installer=trust_installer,
                                     timeout=timeout)  # fmt: skip
    out.step("1/3 bootstrap")
    loaded, report = face.run_bootstrap(out, env, options)
    kubeconfig, context = str(report.kubeconfig.path), loaded["KUBECONFIG_CONTEXT"]
    out.step("2/3 deploy")
    face.run_deploy(out, [env], kubeconfig, context, timeout=timeout, pull=pull)
    out.step("3/3 smoke")
    face.run_smoke(out, env, kubeconfig, context, junit=junit, only=groups, insecure=insecure)


# `inv --list` is the menu: models.* group the Ollama tasks.
models = Collection("models")
models.add_task(models_pull, name="pull")
models.add_task(models_list, name="list")
ns = Collection(bootstrap, kubeconfig, reset, deploy, diff, render, status, destroy, backup, restore, rotate,
                credentials, smoke, up, setup_tests, run_tests, lint, mutate, models)  # fmt: skip
