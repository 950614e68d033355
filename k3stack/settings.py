"""Settings: env/<name>.env (python-dotenv) + the process environment → one validated, frozen Settings.

Every setting is declared once below (name, default, what it is, how to check it). env/example.env
documents the same list; a test keeps the two in step. Problems are collected, not raised one by
one: a bad configuration is reported whole, secrets shown redacted.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from dotenv import dotenv_values

from .errors import K3stackError

REPO = Path(__file__).resolve().parent.parent
ENV_DIR = REPO / "env"
DEFAULT_ENV = "default"
REF = re.compile(r"\$\{([A-Z0-9_]+)\}")


class SettingsError(K3stackError, ValueError):
    """One or more settings are wrong; str() lists each with what is expected."""

    def __init__(self, problems: list[str], source: str):
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in settings ({source}):\n{lines}")


# -- checks: each returns None when fine, else what is expected ------------------------------
_HOST = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_IMAGE = re.compile(
    r"^[a-z0-9][a-z0-9._/-]*(:[0-9]+)?[a-z0-9._/-]*"  # registry[:port]/repository
    r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(@sha256:[0-9a-f]{64})?$"  # :tag, optionally @digest
)


def hostname(v: str) -> str | None:
    return None if _HOST.match(v) else "a DNS name such as example.com or 203.0.113.10.sslip.io"


def email(v: str) -> str | None:
    # Plain characters only: the address is written into text (Traefik's chart values) unescaped.
    if re.match(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$", v):
        return None
    return "an e-mail address (Let's Encrypt sends expiry notices)"


def boolean(v: str) -> str | None:
    return None if v.lower() in ("true", "false", "1", "0", "yes", "no") else "true or false"


def quantity(v: str) -> str | None:
    return None if _QUANTITY.match(v) else "a Kubernetes quantity such as 500m, 2, 512Mi or 10Gi"


def dns_label(v: str) -> str | None:
    return None if _DNS_LABEL.match(v) else "a lower-case DNS label (a-z, 0-9, -)"


# Namespaces Kubernetes and K3s run themselves in: a stack there would put its default-deny
# policy on their pods, and a purge would delete what lives there.
RESERVED_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def namespace(v: str) -> str | None:
    if v in RESERVED_NAMESPACES:
        return f"a namespace of the stack's own, not {v} (reserved: {', '.join(RESERVED_NAMESPACES)})"
    return dns_label(v)


def image(v: str) -> str | None:
    if not _IMAGE.match(v):
        return "an image reference with a pinned tag, e.g. ollama/ollama:0.32.15"
    if v.rsplit(":", 1)[1].split("@")[0] in ("latest", "main", "master", "dev"):
        return "a pinned tag, not a moving one like :latest or :main"
    return None


def version(v: str) -> str | None:
    return None if re.match(r"^[0-9]+\.[0-9]+\.[0-9]+$", v) else "an exact chart version such as 3.7.172"


def k8s_minor(v: str) -> str | None:
    return None if re.match(r"^1\.[0-9]{2}$", v) else "a Kubernetes minor version such as 1.35"


def models(v: str) -> str | None:
    from .ollama import name_problem  # Ollama's own name grammar (types/model/name.go)

    bad = [m for m in split_list(v) if name_problem(m)]
    return f"comma-separated Ollama model names such as llama3.1:8b (not {', '.join(bad)})" if bad else None


def secret_value(v: str) -> str | None:
    if len(v) < 12:
        return "at least 12 characters (or leave it unset and k3stack generates one)"
    return None


def url(v: str) -> str | None:
    return None if re.match(r"^https://[^\s\"'\\]+$", v) else "an https:// URL (no spaces, quotes or backslashes)"


def k3s_version(v: str) -> str | None:
    if re.match(r"^v1\.[0-9]+\.[0-9]+\+k3s[0-9]+$", v) or v in CHANNELS:
        return None
    return f"a K3s release such as v1.35.8+k3s1 (or, outside CI, a channel: {', '.join(CHANNELS)})"


CHANNELS = ("stable", "latest", "testing")


def sha256_hex(v: str) -> str | None:
    return None if re.match(r"^[0-9a-f]{64}$", v) else "64 lower-case hex digits (output of sha256sum)"


def host_list(v: str) -> str | None:
    bad = [h for h in split_list(v) if not re.match(r"^([a-z_][a-z0-9_-]*@)?[A-Za-z0-9.:\[\]-]+$", h)]
    return f"comma-separated [user@]host[:port] entries (not {', '.join(bad)})" if bad else None


def port(v: str) -> str | None:
    return None if v.isdigit() and 0 < int(v) < 65536 else "a TCP port number"


def count(v: str) -> str | None:
    return None if v.isdigit() and 0 < int(v) <= 100 else "a whole number from 1 to 100"


def seconds(v: str) -> str | None:
    return None if re.match(r"^[0-9]+(\.[0-9]+)?$", v) and float(v) > 0 else "a number of seconds"


def split_list(v: str) -> list[str]:
    return [item.strip() for item in v.split(",") if item.strip()]


@dataclass(frozen=True)
class Setting:
    name: str
    default: str | None  # None: required (or, for secrets, generated when absent)
    doc: str
    check: Callable[[str], str | None] | None = None
    secret: bool = False


def _resources(component: str, cpu: str, memory: str, cpu_limit: str, memory_limit: str) -> list[Setting]:
    c = component.upper().replace("-", "_")
    return [
        Setting(f"{c}_CPU_REQUEST", cpu, f"{component}: CPU requested", quantity),
        Setting(f"{c}_MEMORY_REQUEST", memory, f"{component}: memory requested", quantity),
        Setting(f"{c}_CPU_LIMIT", cpu_limit, f"{component}: CPU limit", quantity),
        Setting(f"{c}_MEMORY_LIMIT", memory_limit, f"{component}: memory limit", quantity),
    ]


SETTINGS: tuple[Setting, ...] = (
    # Where the stack is reached
    Setting("DOMAIN", None, "public DNS name of the server (own domain, or <ip>.sslip.io)", hostname),
    Setting("CHAT_HOST", "chat.${DOMAIN}", "host name of Open WebUI", hostname),
    Setting("MONITOR_HOST", "monitor.${DOMAIN}", "host name of the Netdata dashboard", hostname),
    Setting("ACME_EMAIL", None, "e-mail for the Let's Encrypt account", email),
    Setting("ACME_STAGING", "false", "true: Let's Encrypt staging CA (untrusted certs, no rate limits)", boolean),
    Setting("ACME_RESOLVER", "letsencrypt", "Traefik certificate resolver name used by the ingresses", dns_label),
    # Cluster
    Setting("KUBE_CONTEXT", "", "kubeconfig context to use (empty: the current context)"),
    Setting("K8S_VERSION", "1.35", "Kubernetes minor the manifests are validated against (the pinned K3s)", k8s_minor),
    Setting("STACK_NAMESPACE", "llm-stack", "namespace of Open WebUI, Ollama, PostgreSQL, Redis", namespace),
    Setting("MONITORING_NAMESPACE", "monitoring", "namespace of Netdata", namespace),
    Setting("STORAGE_CLASS", "local-path", "StorageClass of every volume (K3s ships local-path)", dns_label),
    # Hosts and K3s (inv bootstrap)
    Setting(
        "SERVERS", "", "K3s server hosts, [user@]host[:port], comma-separated; the first one initialises", host_list
    ),
    Setting("AGENTS", "", "K3s agent (worker) hosts, same form", host_list),
    Setting("SSH_USER", "root", "SSH user when a host entry names none (non-root users need sudo)"),
    Setting("SSH_PORT", "22", "SSH port when a host entry names none", port),
    Setting("SSH_KEY", "", "private key file (empty: ssh-agent and ~/.ssh defaults)"),
    Setting("SSH_KNOWN_HOSTS", "~/.ssh/known_hosts", "known_hosts file that host keys are checked against"),
    Setting("SSH_HOST_KEYS", "", "pinned host keys host=SHA256:fingerprint, comma-separated (CI: from a secret)"),
    Setting("SSH_JUMP_HOST", "", "bastion to connect through, [user@]host[:port]", host_list),
    Setting("SSH_TIMEOUT", "10", "seconds to wait for an SSH connection", seconds),
    Setting(
        "K3S_VERSION", "v1.35.8+k3s1", "K3s release to install (pinned; channels are refused under CI)", k3s_version
    ),
    Setting(
        "K3S_INSTALL_URL",
        "https://raw.githubusercontent.com/k3s-io/k3s/${K3S_VERSION}/install.sh",
        "installer script (pinned to the release's tag), fetched here and verified before it runs",
    ),
    Setting(
        "K3S_INSTALL_SHA256", "", "sha256 of the installer script (empty: refused unless --trust-installer)", sha256_hex
    ),
    Setting("K3S_AIRGAP_BINARY", "", "local k3s binary to upload instead of downloading on the hosts (airgap)"),
    Setting("K3S_AIRGAP_IMAGES", "", "local k3s-airgap-images-<arch>.tar(.zst|.gz) to upload with it (airgap)"),
    Setting("API_ENDPOINT", "", "address clients use for the API server (empty: the first server's address)"),
    Setting("K3S_TLS_SAN", "", "extra names/addresses for the API server certificate, comma-separated"),
    Setting("K3S_NODE_LABELS", "", "labels for every node, key=value, comma-separated"),
    Setting("K3S_NODE_TAINTS", "", "taints for agent nodes, key=value:Effect, comma-separated"),
    Setting(
        "K3S_DISABLE",
        "",
        "bundled K3s components to disable, comma-separated (never traefik: the stack needs it)",
        lambda v: (
            "components other than traefik (the stack's ingresses need it)" if "traefik" in split_list(v) else None
        ),
    ),
    Setting("KUBECONFIG_PATH", "~/.kube/config", "where bootstrap writes (merges) the cluster's kubeconfig"),
    Setting("KUBECONFIG_CONTEXT", "k3stack", "context name bootstrap gives the cluster in that kubeconfig", dns_label),
    # Images and charts (pinned)
    Setting("OPEN_WEBUI_IMAGE", "ghcr.io/open-webui/open-webui:v0.11.0", "Open WebUI image", image),
    Setting("OLLAMA_IMAGE", "ollama/ollama:0.32.15", "Ollama image", image),
    Setting("POSTGRES_IMAGE", "postgres:17.6", "PostgreSQL image (major 17: data in /var/lib/postgresql/data)", image),
    Setting("REDIS_IMAGE", "redis:7.4.5", "Redis image", image),
    Setting("NETDATA_CHART_REPO", "https://netdata.github.io/helmchart/", "Netdata Helm repository", url),
    Setting("NETDATA_CHART_VERSION", "3.7.172", "Netdata chart version", version),
    # Storage
    Setting("OLLAMA_STORAGE", "50Gi", "volume for Ollama models", quantity),
    Setting("OPEN_WEBUI_STORAGE", "5Gi", "volume for Open WebUI uploads and cache", quantity),
    Setting("POSTGRES_STORAGE", "10Gi", "volume for PostgreSQL", quantity),
    Setting("REDIS_STORAGE", "1Gi", "volume for Redis", quantity),
    Setting("NETDATA_STORAGE", "5Gi", "volume for Netdata's metrics database", quantity),
    # Resources
    *_resources("ollama", "1", "4Gi", "8", "16Gi"),
    *_resources("open-webui", "250m", "1Gi", "2", "2Gi"),
    *_resources("postgres", "100m", "256Mi", "1", "1Gi"),
    *_resources("redis", "50m", "64Mi", "500m", "256Mi"),
    # Models and GPU
    Setting(
        "OLLAMA_MODELS",
        "llama3.1:8b,mistral:7b,nomic-embed-text:v1.5",
        "models pulled at deploy time (comma-separated); keep OLLAMA_EMBEDDING_MODEL among them",
        models,
    ),
    Setting(
        "OLLAMA_EMBEDDING_MODEL",
        "nomic-embed-text:v1.5",
        "Ollama model Open WebUI embeds documents with (RAG); nothing is downloaded from Hugging Face",
        models,
    ),
    Setting(
        "OLLAMA_PULL_STALL_SECONDS", "60", "a model download without progress this long is dropped and resumed", seconds
    ),
    Setting("OLLAMA_PULL_ATTEMPTS", "4", "tries per model pull (a retry resumes finished layers)", count),
    Setting("GPU_ENABLED", "false", "true: Ollama asks for nvidia.com/gpu and runtimeClassName nvidia", boolean),
    # Smoke checks (inv smoke)
    Setting(
        "SMOKE_TIMEOUT", "120", "seconds eventually-true checks (certificate issued, pods ready) keep retrying", seconds
    ),
    Setting("SMOKE_CA_BUNDLE", "", "CA file to trust for the public checks instead of the system's (a private CA)"),
    Setting(
        "SMOKE_RESOLVE", "", "HOST:PORT:ADDR entries, comma-separated: reach hosts at ADDR without DNS (curl --resolve)"
    ),
    # Accounts
    Setting("POSTGRES_USER", "openwebui", "PostgreSQL user of Open WebUI", dns_label),
    Setting("POSTGRES_DB", "openwebui", "PostgreSQL database of Open WebUI", dns_label),
    Setting("WEBUI_ADMIN_NAME", "Admin", "display name of the Open WebUI admin"),
    Setting("WEBUI_ADMIN_EMAIL", "admin@${DOMAIN}", "e-mail (login) of the Open WebUI admin", email),
    Setting("NETDATA_USER", "admin", "user name for the Netdata dashboard's basic auth", dns_label),
    # Secrets: set them here or in the environment, or leave unset to have them generated once
    Setting("POSTGRES_PASSWORD", None, "PostgreSQL password", secret_value, secret=True),
    Setting("REDIS_PASSWORD", None, "Redis password", secret_value, secret=True),
    Setting("WEBUI_SECRET_KEY", None, "Open WebUI session signing key", secret_value, secret=True),
    Setting("WEBUI_ADMIN_PASSWORD", None, "Open WebUI admin password", secret_value, secret=True),
    Setting("NETDATA_PASSWORD", None, "Netdata dashboard password", secret_value, secret=True),
    Setting(
        "K3S_TOKEN",
        None,
        "K3s join token (empty: read from the first server, else generated)",
        secret_value,
        secret=True,
    ),
    Setting("SUDO_PASSWORD", None, "sudo password of SSH_USER on hosts without passwordless sudo", secret=True),
    Setting(
        "SSH_KEY_PASSPHRASE",
        None,
        "passphrase of an encrypted SSH_KEY, from the environment (ssh-agent is the better choice)",
        secret=True,
    ),
)
BY_NAME = {s.name: s for s in SETTINGS}
SECRET_NAMES = frozenset(s.name for s in SETTINGS if s.secret)


def redact(setting: Setting, value: str) -> str:
    return "<redacted>" if setting.secret and value else repr(value)


@dataclass(frozen=True)
class Settings:
    """Validated settings. `values` holds every non-secret setting; `secrets` the secrets given
    (absent ones are resolved later: reused from the cluster or generated)."""

    env_name: str
    source: str
    values: Mapping[str, str]
    secrets: Mapping[str, str] = field(repr=False)

    def __getitem__(self, name: str) -> str:
        return self.values[name]

    def flag(self, name: str) -> bool:
        return self.values[name].lower() in ("true", "1", "yes")

    @property
    def models(self) -> list[str]:
        return split_list(self.values["OLLAMA_MODELS"])

    def render_vars(self) -> dict[str, str]:
        """What ${VARS} in k8s/ may use: every non-secret setting (secrets live in Secret objects)."""
        return dict(self.values)


def env_file(env_name: str, env_dir: Path = ENV_DIR) -> Path:
    return env_dir / f"{env_name}.env"


def load(
    env_name: str | None = None, *, env_dir: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Load env/<name>.env (name from the argument, K3STACK_ENV, else `default`); the process
    environment overrides the file. Raises SettingsError listing every problem."""
    environ = os.environ if environ is None else environ
    env_dir = env_dir or Path(environ.get("K3STACK_ENV_DIR") or ENV_DIR)
    env_name = env_name or environ.get("K3STACK_ENV") or DEFAULT_ENV
    path = env_file(env_name, env_dir)
    problems: list[str] = []
    if not re.match(r"^[A-Za-z0-9_.-]+$", env_name):
        raise SettingsError([f"--env {env_name!r}: use a plain name such as prod (reads env/prod.env)"], str(path))
    file_values: dict[str, str | None] = {}
    if path.exists():
        file_values = dotenv_values(path, interpolate=False)
        if path.stat().st_mode & 0o004 and any(file_values.get(n) for n in SECRET_NAMES):
            problems.append(f"{path}: holds secrets but is world-readable (fix: chmod 600 {path})")
    elif env_name != DEFAULT_ENV:
        available = ", ".join(sorted(p.stem for p in env_dir.glob("*.env") if p.stem != "example")) or "none"
        raise SettingsError(
            [f"--env {env_name}: {path} does not exist (available: {available}; copy env/example.env to start one)"],
            str(path),
        )
    unknown = sorted(k for k in file_values if k not in BY_NAME)
    for name in unknown:
        close = difflib.get_close_matches(name, list(BY_NAME), n=1, cutoff=0.75)  # typos, not topics
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.append(f"{name}: unknown setting in {path.name}{hint}; see env/example.env")

    raw: dict[str, str] = {}
    for setting in SETTINGS:
        # An empty value counts as unset (`OPEN_WEBUI_IMAGE=` keeps the pinned image; an empty
        # secret is generated), in the environment and in the file alike.
        value = (environ.get(setting.name) or "").strip() or (file_values.get(setting.name) or "").strip()
        raw[setting.name] = value or (setting.default or "")
    # ${NAME} lets one setting build on another (CHAT_HOST=chat.${DOMAIN}); a secret is taken
    # literally, always: `Xy7${DOMAIN}q` is a password, not a template.
    expanded = {
        name: value if name in SECRET_NAMES else _expand(name, value, raw, problems) for name, value in raw.items()
    }

    failed: set[str] = set()
    for setting in SETTINGS:
        value = expanded[setting.name]
        if any(ref in failed for ref in REF.findall(raw[setting.name])):
            continue  # e.g. CHAT_HOST=chat.${DOMAIN}: the problem is DOMAIN's, reported once
        before = len(problems)
        _check(setting, value, problems)
        if len(problems) > before:
            failed.add(setting.name)
    if problems:
        raise SettingsError(problems, str(path) + ("" if path.exists() else " (absent) + environment"))
    return Settings(
        env_name=env_name,
        source=str(path),
        values=MappingProxyType({n: v for n, v in expanded.items() if n not in SECRET_NAMES}),
        secrets=MappingProxyType({n: v for n, v in expanded.items() if n in SECRET_NAMES and v}),
    )


def _check(setting: Setting, value: str, problems: list[str]) -> None:
    if not value:
        if setting.default is None and not setting.secret:
            expected = setting.check("") if setting.check else "a value"
            problems.append(f"{setting.name}: not set — {setting.doc}; expected {expected}")
        return
    expected = setting.check(value) if setting.check else None
    if expected:
        problems.append(f"{setting.name}={redact(setting, value)}: expected {expected}")


def _expand(name: str, value: str, raw: Mapping[str, str], problems: list[str]) -> str:
    def sub(match: re.Match) -> str:
        ref = match.group(1)
        if ref not in raw or ref in SECRET_NAMES:
            problems.append(f"{name}: refers to ${{{ref}}}, which is not a setting that can be referenced")
            return ""
        return REF.sub(lambda m: raw.get(m.group(1), ""), raw[ref])

    return REF.sub(sub, value)


def example_env() -> str:
    """The text of env/example.env: every setting, its meaning and default."""
    lines = [
        "# k3stack settings. Copy to env/<name>.env (e.g. env/prod.env, chmod 600) and use",
        "# `inv deploy --env <name>`; the process environment overrides this file (CI secrets).",
        "# ${NAME} refers to another setting. Secrets left empty are generated once and kept",
        "# in the cluster; set them only to choose your own.",
        "",
    ]
    for setting in SETTINGS:
        lines.append(f"# {setting.doc}" + (" (required)" if setting.default is None and not setting.secret else ""))
        lines.append(f"{'' if setting.default is not None else '# '}{setting.name}={setting.default or ''}")
    return "\n".join(lines) + "\n"
