"""Pull Ollama models into a stack, with nothing but a kubeconfig: through the API server's
service proxy (no port-forward, no public Ollama), with progress, resume and verification —
what `inv models.pull` does, without invoke or a settings file.

    python -m scripts.pull_models --namespace llm-stack llama3.2:1b nomic-embed-text:v1.5
    python -m scripts.pull_models --kubeconfig ~/.kube/config --context k3stack --json mistral:7b

Exit status: 0 every model present, 1 a model failed (its reason and hint printed), 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys

from k3stack.console import Console
from k3stack.kube import Kube, KubeError
from k3stack.ollama import PORT, SERVICE, Ollama, OllamaError, name_problem, pull_models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model names as Ollama spells them, e.g. llama3.2:1b")
    parser.add_argument("--namespace", default="llm-stack", help="the stack's namespace (STACK_NAMESPACE)")
    parser.add_argument("--service", default=SERVICE, help="Ollama's Service name")
    parser.add_argument("--port", type=int, default=PORT, help="Ollama's Service port")
    parser.add_argument("--kubeconfig", help="kubeconfig path (default: $KUBECONFIG, else ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    parser.add_argument("--stall-seconds", type=float, default=60, help="drop a download without new bytes this long")
    parser.add_argument("--json", action="store_true", help="print the pull report as JSON (for CI)")
    args = parser.parse_args(argv)
    console = Console()
    bad = [f"{name}: {problem}" for name in args.models if (problem := name_problem(name))]
    if bad:
        console.error("; ".join(bad))
        return 2
    try:
        kube = Kube(args.kubeconfig, args.context)
        ollama = Ollama(kube, args.namespace, service=args.service, port=args.port, stall_seconds=args.stall_seconds)
        report = pull_models(ollama, args.models, console)
    except (KubeError, OllamaError) as exc:
        console.error(str(exc))
        return 1
    except KeyboardInterrupt:
        console.error("interrupted: finished layers are kept; run again to resume")
        return 130
    if args.json:
        console.json(report.to_json())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
