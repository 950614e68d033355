"""Load k8s/<target>/*.yaml, render ${VARS} strictly, stamp k3stack's labels, order for apply.

Rendering works on the parsed YAML (each scalar), not on the text: a value can never change
the structure of a manifest, and an undefined ${VAR} is reported with its file and line.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from . import kinds, reader
from .errors import K3stackError

REPO = Path(__file__).resolve().parent.parent
K8S_DIR = REPO / "k8s"
TARGETS = ("llm-stack", "monitoring")  # k8s/k3s/ is placed on servers by bootstrap, not applied
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "k3stack"
SOURCE_ANNOTATION = "k3stack.dev/source"
VAR = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


class RenderError(K3stackError, ValueError):
    """Manifests could not be rendered; str() lists every problem with file:line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "\n".join(problems)
            if len(problems) == 1
            else f"{len(problems)} problems in k8s/:\n" + "\n".join(f"  - {p}" for p in problems)
        )


def group_of(api_version: str) -> str:
    """apps/v1 -> apps; v1 (the core group) -> ''."""
    return api_version.split("/")[0] if "/" in api_version else ""


def image_tag(reference: str) -> str:
    """The tag of an image reference, "" when it has none: `[registry[:port]/]path[:tag][@digest]`
    (the distribution reference grammar, github.com/distribution/reference). The digest is not
    the tag, and a registry's port is not either: `ghcr.io:443/x@sha256:…` has no tag."""
    name = reference.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else ""


def describe(api_version: str, kind: str, name: str) -> str:
    """kubectl's spelling of an object: deployment.apps/ollama, service/ollama."""
    group = group_of(api_version)
    return f"{kind.lower()}{'.' + group if group else ''}/{name}"


def object_key(obj: dict) -> tuple[str, str, str, str]:
    """(group, kind, namespace, name): what identifies an object across API versions."""
    meta = obj["metadata"]
    return (group_of(obj["apiVersion"]), obj["kind"], meta.get("namespace") or "", meta["name"])


@dataclass(frozen=True)
class Manifest:
    """One rendered object and where it came from."""

    obj: dict
    source: str  # "llm-stack/postgres.yaml"

    @property
    def kind(self) -> str:
        """The object's kind, e.g. Deployment."""
        return self.obj["kind"]

    @property
    def name(self) -> str:
        """The object's metadata.name."""
        return self.obj["metadata"]["name"]

    @property
    def namespace(self) -> str | None:
        """The object's metadata.namespace; None when the manifest sets none (cluster-scoped kinds)."""
        return self.obj["metadata"].get("namespace")

    @property
    def key(self) -> tuple[str, str, str, str]:
        """(group, kind, namespace, name), see `object_key`: how the object is matched with the cluster's."""
        return object_key(self.obj)

    @property
    def phase(self) -> int:
        """The apply phase of its kind (k3stack.kinds.phase): lower goes first; an unregistered kind last."""
        return kinds.phase(self.kind)

    def describe(self) -> str:
        """kubectl's spelling of the object: deployment.apps/ollama, service/ollama."""
        return describe(self.obj["apiVersion"], self.kind, self.name)


MANIFEST_SUFFIXES = (".yaml", ".yml")


def _leftover(path: Path) -> bool:
    """Editor and OS leftovers beside the manifests: dotfiles (.#lock, .swp), backups (~, .bak,
    .orig, .rej), emacs autosaves (#name#). Never read, whatever their ending."""
    name = path.name
    return name.startswith((".", "#")) or name.endswith(("~", ".bak", ".orig", ".rej", ".swp"))


def _files(k8s_dir: Path, targets: Iterable[str]) -> list[Path]:
    """Every file directly in k8s/<target>/, sorted per target."""
    return [
        p for t in targets for p in sorted((k8s_dir / t).iterdir() if (k8s_dir / t).is_dir() else []) if p.is_file()
    ]


def _read(path: Path) -> bool:
    return path.suffix in MANIFEST_SUFFIXES and not _leftover(path)


def manifest_files(k8s_dir: Path = K8S_DIR, targets: Iterable[str] = TARGETS) -> list[Path]:
    """Every *.yaml and *.yml of k8s/<target>/, sorted per target; leftovers (see `skipped_files`) excluded."""
    return [p for p in _files(k8s_dir, targets) if _read(p)]


def skipped_files(k8s_dir: Path = K8S_DIR, targets: Iterable[str] = TARGETS) -> list[Path]:
    """Files in k8s/<target>/ that are not read: leftovers and files that are not *.yaml/*.yml."""
    return [p for p in _files(k8s_dir, targets) if not _read(p)]


def render(
    variables: Mapping[str, str], *, k8s_dir: Path = K8S_DIR, targets: Iterable[str] = TARGETS, gpu: bool = False
) -> list[Manifest]:
    """Render every manifest of `targets`; raises RenderError naming every undefined variable,
    YAML error or malformed object (file and line)."""
    problems: list[str] = []
    manifests: list[Manifest] = []
    for path in manifest_files(k8s_dir, targets):
        source = str(path.relative_to(k8s_dir))
        for line, obj in _load(path, source, variables, problems):
            if problem := shape_problem(obj):
                problems.append(f"k8s/{source}:{line}: {problem}")
                continue
            manifests.append(Manifest(_stamp(obj, source), source))
    seen: dict[tuple, str] = {}
    for m in manifests:
        if m.key in seen:
            problems.append(f"k8s/{m.source}: {m.describe()} is also defined in k8s/{seen[m.key]}")
        seen[m.key] = m.source
    if problems:
        raise RenderError(problems)
    if gpu:
        manifests = [_with_gpu(m) for m in manifests]
    return sorted(manifests, key=lambda m: m.phase)


def _load(path: Path, source: str, variables: Mapping[str, str], problems: list[str]) -> list[tuple[int, object]]:
    """(line, document) for every non-empty document of `path`, ${VARS} substituted. A file that
    cannot be read or parsed adds one problem `k8s/<source>:<line>: what — fix: how` (k3stack.reader)."""
    shown = f"k8s/{source}"
    try:
        text = reader.read_text(path, shown=shown)
        documents = reader.yaml_documents(
            text, shown, transform=lambda node, loader: _substitute(node, loader, text, source, variables, problems)
        )
    except reader.ReadError as exc:
        problems.append(str(exc))
        return []
    return [(d.line, d.value) for d in documents]


def _line_of(node: ScalarNode, text: str, original: str, match: re.Match) -> int:
    """The 1-based line of `text` (the file) holding `match` (a ${VAR} in the scalar's value
    `original`). Found in the scalar's own source span, the n-th `${VAR}` for the n-th in the value:
    folded (>) and plain multi-line scalars turn line breaks into spaces, so counting the value's
    newlines names the wrong line."""
    span = text[node.start_mark.index : node.end_mark.index]
    nth = original[: match.start()].count(match.group(0))
    at = -1
    for _ in range(nth + 1):
        at = span.find(match.group(0), at + 1)
        if at < 0:  # written differently in the source (an escape in a quoted scalar): the scalar's line
            return node.start_mark.line + 1
    return node.start_mark.line + 1 + span[:at].count("\n")


def _substitute(node, loader, text: str, source: str, variables: Mapping[str, str], problems: list[str]) -> None:
    if isinstance(node, MappingNode):
        for key, value in node.value:
            _substitute(key, loader, text, source, variables, problems)
            _substitute(value, loader, text, source, variables, problems)
    elif isinstance(node, SequenceNode):
        for item in node.value:
            _substitute(item, loader, text, source, variables, problems)
    elif isinstance(node, ScalarNode) and "${" in node.value:
        original = node.value

        def value_of(match: re.Match) -> str:
            name = match.group(1)
            if name in variables:
                return variables[name]
            line = _line_of(node, text, original, match)
            problems.append(
                f"k8s/{source}:{line}: ${{{name}}} is not defined "
                f"(a setting of env/example.env, or a value k3stack computes)"
            )
            return ""

        node.value = VAR.sub(value_of, original)
        # `replicas: ${N}` stays typed like the YAML it stands for; quoted scalars stay strings.
        if node.style is None and VAR.fullmatch(original):
            node.tag = loader.resolve(ScalarNode, node.value, (True, False))


def shape_problem(obj: object) -> str | None:
    """What makes `obj` unusable as a Kubernetes object before any API server sees it, as
    `what — fix: how`; None when its identity has the shape the API requires: apiVersion, kind and
    metadata.name (and metadata.namespace, when given) are non-empty strings, and metadata.labels /
    metadata.annotations are maps of strings to strings (ObjectMeta's types, k8s.io/apimachinery)."""
    if not isinstance(obj, dict) or not all(k in obj for k in ("apiVersion", "kind", "metadata")):
        return "a document lacks apiVersion, kind or metadata.name — fix: give every document all three"
    metadata = obj["metadata"]
    if not isinstance(metadata, dict) or not metadata.get("name"):
        return "a document lacks apiVersion, kind or metadata.name — fix: give every document all three"
    for where, value in (
        ("apiVersion", obj["apiVersion"]),
        ("kind", obj["kind"]),
        ("metadata.name", metadata["name"]),
        *([("metadata.namespace", metadata["namespace"])] if "namespace" in metadata else []),
    ):
        if not isinstance(value, str) or not value:
            return f"{where} is {_shown(value)}, not a name — fix: write it as a plain string, e.g. {where}: example"
    for field_name in ("labels", "annotations"):
        entries = metadata.get(field_name)
        if entries is None:
            continue
        if not isinstance(entries, dict):
            return (
                f"metadata.{field_name} is {_shown(entries)}, not a map — fix: write it as key: value lines "
                f"under metadata.{field_name}"
            )
        for key, value in entries.items():
            if not isinstance(key, str) or not isinstance(value, str):
                return (
                    f"metadata.{field_name}.{key}: {_shown(value)} is not a string — fix: quote it "
                    f'(Kubernetes {field_name} are strings), e.g. {key}: "{value}"'
                )
    return None


def _shown(value: object) -> str:
    """A value as a problem line shows it: its YAML type and a short repr."""
    kind = {dict: "a map", list: "a list", bool: "a boolean", int: "a number", float: "a number"}.get(type(value))
    text = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"{kind} {text}" if kind else ("empty" if value in ("", None) else text)


def _stamp(obj: dict, source: str) -> dict:
    metadata = obj["metadata"]
    metadata["labels"] = {**(metadata.get("labels") or {}), MANAGED_BY: MANAGER}
    metadata["annotations"] = {**(metadata.get("annotations") or {}), SOURCE_ANNOTATION: source}
    return obj


def _with_gpu(manifest: Manifest) -> Manifest:
    if manifest.kind != "Deployment" or manifest.name != "ollama":
        return manifest
    obj = copy.deepcopy(manifest.obj)
    pod = obj["spec"]["template"]["spec"]
    pod["runtimeClassName"] = "nvidia"
    for container in pod["containers"]:
        container.setdefault("resources", {}).setdefault("limits", {})["nvidia.com/gpu"] = 1
    return Manifest(obj, manifest.source)


def phases(manifests: Iterable[Manifest]) -> list[list[Manifest]]:
    """Manifests grouped by apply phase, in order."""
    grouped: dict[int, list[Manifest]] = {}
    for m in manifests:
        grouped.setdefault(m.phase, []).append(m)
    return [grouped[p] for p in sorted(grouped)]


def validate(manifests: Iterable[Manifest], k8s_version: str, skipped: list[Manifest] | None = None) -> list[str]:
    """Strict schema validation (kubernetes-validate) for the Kubernetes minor users run.
    Returns problems, one line each; custom resources (no bundled schema) are skipped and,
    when `skipped` is given, appended to it. Raises ImportError without kubernetes-validate
    (a dev requirement)."""
    import kubernetes_validate  # a dev/CI dependency: imported only when validating

    problems = []
    for m in manifests:
        try:
            kubernetes_validate.validate(m.obj, k8s_version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            if skipped is not None:
                skipped.append(m)
            continue
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            problems.append(f"k8s/{m.source}: {m.describe()}: {path}: {exc.message}")
    return problems


def to_yaml(manifests: Iterable[Manifest]) -> str:
    """The manifests as one YAML stream, each document starting with `---`, keys in manifest order
    (what `inv render` prints; bootstrap's k8s/k3s files); "" for no manifests."""
    return "".join("---\n" + yaml.safe_dump(m.obj, sort_keys=False) for m in manifests)
