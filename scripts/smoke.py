"""The public smoke checks from any machine, with just the two host names and the logins — no
kubeconfig, no settings file: HTTPS with a valid certificate, the HTTP→HTTPS redirect, Open
WebUI's version, the admin sign-in and its model list, a real websocket (Socket.IO) session, and
Netdata behind basic auth. For a cron job or an uptime probe.

    WEBUI_ADMIN_PASSWORD=… NETDATA_PASSWORD=… python -m scripts.smoke \\
        --chat chat.example.com --monitor monitor.example.com --admin admin@example.com \\
        --version v0.11.0 --model llama3.1:8b --junit smoke.xml

Passwords come from the environment only (never argv). Exit status: 0 every check passed,
1 a check failed (reason and hint printed), 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys

from k3stack import report as rep
from k3stack.console import Console
from k3stack.smoke import SmokeConfig, SmokeConfigError, parse_connect_to, smoke


def config_from(args: argparse.Namespace, environ) -> SmokeConfig:
    """The checks' configuration from the flags and the two passwords in `environ`."""
    return SmokeConfig(
        stack_namespace="-",  # the public checks talk to the hosts only
        monitoring_namespace="-",
        chat_host=args.chat,
        monitor_host=args.monitor,
        models=tuple(args.model or ()),
        webui_version=args.version,
        admin_email=args.admin,
        admin_password=environ.get("WEBUI_ADMIN_PASSWORD", ""),
        netdata_user=args.netdata_user,
        netdata_password=environ.get("NETDATA_PASSWORD", ""),
        acme_staging=args.staging,
        insecure=args.staging,
        ca_bundle=args.ca_bundle,
        connect_to=parse_connect_to(args.resolve or ()),
        https_port=args.https_port,
        http_port=args.http_port,
        deadline=args.timeout,
    )


def main(argv: list[str] | None = None, environ=os.environ) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chat", required=True, help="Open WebUI's host name (CHAT_HOST)")
    parser.add_argument("--monitor", required=True, help="Netdata's host name (MONITOR_HOST)")
    parser.add_argument("--admin", required=True, help="the Open WebUI admin's e-mail (WEBUI_ADMIN_EMAIL)")
    parser.add_argument("--version", required=True, help="the Open WebUI version expected, e.g. v0.11.0")
    parser.add_argument("--model", action="append", help="a model the sign-in must list; repeatable")
    parser.add_argument("--netdata-user", default="admin", help="Netdata's basic-auth user (NETDATA_USER)")
    parser.add_argument("--staging", action="store_true", help="accept a Let's Encrypt STAGING certificate only")
    parser.add_argument("--ca-bundle", help="trust this CA file instead of the system's")
    parser.add_argument("--resolve", action="append", help="HOST:PORT:ADDR, like curl --resolve; repeatable")
    parser.add_argument("--https-port", type=int, default=443)
    parser.add_argument("--http-port", type=int, default=80)
    parser.add_argument("--timeout", type=float, default=120, help="seconds failing checks keep retrying")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--junit", help="write JUnit XML (one testcase per check) to this file")
    args = parser.parse_args(argv)
    console = Console()
    try:
        config = config_from(args, environ)
    except SmokeConfigError as exc:  # --staging with --ca-bundle
        console.error(str(exc))
        return 2
    except ValueError as exc:  # a malformed --resolve
        console.error(f"--resolve: {exc}")
        return 2
    missing = [name for name in ("WEBUI_ADMIN_PASSWORD", "NETDATA_PASSWORD") if not environ.get(name)]
    if missing:
        console.error(f"{' and '.join(missing)} not set — fix: export them (the checks sign in; never on argv)")
        return 2
    result = smoke(None, config, console, only=["public"])
    rep.emit(result, console, as_json=args.json, junit=args.junit, summary=environ.get("GITHUB_STEP_SUMMARY"))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
