"""Settings: env/<name>.env (python-dotenv) + the process environment → one validated, frozen Settings.

Every setting is declared once below (name, default, what it is, how to check it). env/example.env
documents the same list; a test keeps the two in step. Problems are collected, not raised one by
one: a bad configuration is reported whole, secrets shown redacted.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import itertools
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType

from . import reader
from .errors import K3stackError, command
from .manifests import image_tag

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
# Kubernetes' quantity grammar, from the comment on `type Quantity` in k8s.io/apimachinery
# pkg/api/resource/quantity.go (https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/):
#   <quantity> ::= <signedNumber><suffix>;  <number> ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
#   <suffix> ::= <binarySI> (Ki Mi Gi Ti Pi Ei) | <decimalSI> (n u m "" k M G T P E)
#              | <decimalExponent> (e|E<signedNumber>)
# A regex, not kubernetes.utils.quantity.parse_quantity: importing that loads the whole client
# (measured: ~0.6 s), and `inv render` must not (tests/test_imports.py).
_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>[eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
)
_SCALE = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: Decimal(10) ** e for s, e in (("n", -9), ("u", -6), ("m", -3), ("k", 3), ("M", 6), ("G", 9))},
    **{s: Decimal(10) ** e for s, e in (("T", 12), ("P", 15), ("E", 18), ("", 0))},
}
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_IMAGE = re.compile(
    r"^[a-z0-9][a-z0-9._/-]*(:[0-9]+)?[a-z0-9._/-]*"  # registry[:port]/repository
    r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(@sha256:[0-9a-f]{64})?$"  # :tag, optionally @digest
)


def hostname(v: str) -> str | None:
    """None for a lower-case DNS name of two labels or more (RFC 1123; Kubernetes requires Ingress
    hosts in lower case, networking/v1 IngressRule.host); else what is expected, saying which fix."""
    if _HOST.match(v):
        return None
    fixed = v.lower().rstrip(".")
    if fixed != v and _HOST.match(fixed):
        which = []
        if v != v.lower():
            which.append("in lower case")
        if v.endswith("."):
            which.append("without the trailing dot")
        return f"the name {' and '.join(which)}: {fixed} (Ingress hosts are lower-case names without a root dot)"
    return "a DNS name such as example.com or 203.0.113.10.sslip.io"


def email(v: str) -> str | None:
    """A check (Setting.check: None when valid, else what is expected): a plain e-mail address."""
    # Plain characters only: the address is written into text (Traefik's chart values) unescaped.
    if re.match(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$", v):
        return None
    return "an e-mail address (Let's Encrypt sends expiry notices)"


def boolean(v: str) -> str | None:
    """A check: true/false, 1/0 or yes/no (any case)."""
    return None if v.lower() in ("true", "false", "1", "0", "yes", "no") else "true or false"


def parse_quantity(v: str) -> Decimal | None:
    """The value of a Kubernetes quantity ("500m" -> 0.5, "1Gi" -> 1073741824), None when `v` does
    not follow the grammar (k8s.io/apimachinery pkg/api/resource/quantity.go)."""
    match = _QUANTITY.match(v)
    if not match:
        return None
    suffix = match["suffix"] or ""
    try:
        scale = _SCALE[suffix] if suffix in _SCALE else Decimal(10) ** int(suffix[1:])  # else e<exponent>
        return Decimal(match["number"]) * scale
    except ArithmeticError:  # an exponent too large for Decimal
        return None


def quantity(v: str) -> str | None:
    """A CPU amount: a non-negative Kubernetes quantity (500m = half a core, 2 = two cores)."""
    value = parse_quantity(v)
    if value is None or value < 0:
        return "a Kubernetes quantity such as 500m, 2, 512Mi or 10Gi"
    return None


def byte_quantity(v: str) -> str | None:
    """Memory or storage: a non-negative quantity of whole bytes. `512m` parses, but means 0.512
    bytes (Kubernetes' docs warn about exactly this: "400m of memory" is 0.4 bytes), so it is refused."""
    value = parse_quantity(v)
    if value is None or value < 0:
        return "a Kubernetes quantity of bytes such as 512Mi or 10Gi"
    if value != value.to_integral_value():
        match = _QUANTITY.match(v)
        guess = f" (did you mean {match['number']}Mi?)" if match["suffix"] == "m" else ""
        return f"whole bytes such as 512Mi or 10Gi: {v} is a fraction of a byte{guess}"
    return None


def storage(v: str) -> str | None:
    """A volume size: whole bytes (byte_quantity) and more than none. The API server refuses a
    PersistentVolumeClaim whose storage request is not greater than zero (ValidatePositiveQuantityValue
    in k8s.io/kubernetes pkg/apis/core/validation), which would stop deploy halfway."""
    if problem := byte_quantity(v):
        return problem
    if parse_quantity(v) == 0:
        return "a volume size above zero such as 1Gi (Kubernetes refuses an empty PersistentVolumeClaim)"
    return None


def dns_label(v: str) -> str | None:
    """A check: an RFC 1123 DNS label (Kubernetes' rule for namespace and object names)."""
    return None if _DNS_LABEL.match(v) else "a lower-case DNS label (a-z, 0-9, -)"


# Namespaces Kubernetes and K3s run themselves in: a stack there would put its default-deny
# policy on their pods, and a purge would delete what lives there.
RESERVED_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def namespace(v: str) -> str | None:
    """A check: a DNS label that is not one of Kubernetes' own namespaces (RESERVED_NAMESPACES)."""
    if v in RESERVED_NAMESPACES:
        return f"a namespace of the stack's own, not {v} (reserved: {', '.join(RESERVED_NAMESPACES)})"
    return dns_label(v)


def image(v: str) -> str | None:
    """A check: an image reference with a pinned tag (a moving tag such as :latest only with a digest)."""
    if not _IMAGE.match(v):
        return "an image reference with a pinned tag, e.g. ollama/ollama:0.32.15"
    if image_tag(v) in ("latest", "main", "master", "dev") and "@" not in v:
        return "a pinned tag, not a moving one like :latest or :main"
    return None


def version(v: str) -> str | None:
    """A check: an exact chart version (MAJOR.MINOR.PATCH)."""
    return None if re.match(r"^[0-9]+\.[0-9]+\.[0-9]+$", v) else "an exact chart version such as 3.7.172"


def k8s_minor(v: str) -> str | None:
    """A check: a Kubernetes minor version such as 1.35 (the schema `render --validate` uses)."""
    return None if re.match(r"^1\.[0-9]{2}$", v) else "a Kubernetes minor version such as 1.35"


def models(v: str) -> str | None:
    """A check: comma-separated model names by Ollama's own grammar (ollama.name_problem)."""
    from .ollama import name_problem  # Ollama's own name grammar (types/model/name.go)

    bad = [m for m in split_list(v) if name_problem(m)]
    return f"comma-separated Ollama model names such as llama3.1:8b (not {', '.join(bad)})" if bad else None


def secret_value(v: str) -> str | None:
    """A check for a given secret: at least 12 characters (unset ones are generated, 32 random bytes)."""
    if len(v) < 12:
        return "at least 12 characters (or leave it unset and k3stack generates one)"
    return None


def url(v: str) -> str | None:
    """An https:// URL without spaces, quotes or backslashes (it is written into chart values and
    fetched by tools that do not verify plain http)."""
    if re.match(r"^https://[^\s\"'\\]+$", v):
        return None
    if v.lower().startswith("http://"):
        return f"https:// instead of http:// ({'https://' + v[7:]}): over plain http anyone on the way can alter it"
    return "an https:// URL (no spaces, quotes or backslashes)"


def installer_url(v: str) -> str | None:
    """K3S_INSTALL_URL: https://, or file:// for a copy on this machine (airgap, the test bed). The
    script runs as root on every host, so plain http (alterable on the way) is refused."""
    if v.startswith("file:///") and not re.search(r"[\s\"'\\]", v):
        return None
    problem = url(v)
    return problem and problem.replace("an https:// URL (", "an https:// URL (or file:/// for a local copy; ", 1)


def bcrypt_secret(v: str) -> str | None:
    """A secret that ends up hashed with bcrypt, which takes at most 72 bytes: Traefik's basic auth
    (htpasswd) and Open WebUI (utils/auth.py PASSWORD_BCRYPT_MAX_BYTES = 72, refused with
    PASSWORD_TOO_LONG, so the admin would never be created)."""
    size = len(v.encode("utf-8", "surrogatepass"))
    if size > 72:
        return f"at most 72 bytes (bcrypt hashes it and reads no further; this one has {size})"
    return secret_value(v)


def sudo_password(v: str) -> str | None:
    """sudo reads a password up to the first newline: one with a line break can never be typed."""
    return "one line (sudo reads the password up to the first line break)" if "\n" in v or "\r" in v else None


def _host_or_ip(host: str) -> bool:
    """A DNS name (lower case, RFC 1123), a single-label name such as `localhost`, or an IP address."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOST.match(host) or _DNS_LABEL.match(host))


def split_endpoint(v: str) -> tuple[str, int | None]:
    """(host, port or None) of API_ENDPOINT: `host`, `host:port`, `[v6]:port`, a bare IPv6 address.
    Raises ValueError when it is not one of these."""
    if v.startswith("["):
        host, sep, rest = v[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(v)
        port_text = rest[1:] if rest else None
    elif v.count(":") > 1:
        host, port_text = v, None  # a bare IPv6 address
    else:
        host, _, port_text = v.partition(":")
        port_text = port_text if ":" in v else None
    if port_text is not None and port(port_text):
        raise ValueError(v)
    if not _host_or_ip(host):
        raise ValueError(v)
    return host, int(port_text) if port_text is not None else None


def endpoint(v: str) -> str | None:
    """API_ENDPOINT: host[:port] as clients dial it; K3s puts the host into its certificate
    (--tls-san takes names and addresses, not URLs: docs.k3s.io/cli/server), so a scheme or a
    path is refused with the form that was meant."""
    try:
        split_endpoint(v)
        return None
    except ValueError:
        pass
    if "://" in v or "/" in v:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(v if "://" in v else "//" + v)
            host, explicit = parts.hostname, parts.port
        except ValueError:
            host, explicit = None, None
        if host and _host_or_ip(host):
            shown = f"[{host}]" if ":" in host else host
            with_port = f"{shown}:{explicit}" if explicit else f"{shown}:6443"
            return f"host[:port] without a scheme or path: {with_port} or {host}"
    return "host[:port] without a scheme or path, e.g. 203.0.113.10:6443 or 203.0.113.10"


def tls_sans(v: str) -> str | None:
    """K3S_TLS_SAN: names (a leading `*.` wildcard allowed, RFC 6125) or IP addresses only (K3s
    --tls-san, https://docs.k3s.io/cli/server), no scheme, port or path."""
    bad = [item for item in split_list(v) if not _host_or_ip(item.removeprefix("*."))]
    return f"comma-separated DNS names or IP addresses, no scheme or port (not {', '.join(bad)})" if bad else None


# Label syntax, https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#syntax-and-character-set:
# a key is an optional prefix (a DNS subdomain, at most 253 characters) and `/`, then a name of at
# most 63 characters, alphanumeric at both ends with `-`, `_`, `.` between; a value is empty or
# the same shape as a name (at most 63 characters).
_LABEL_NAME = re.compile(r"^(?=.{1,63}$)[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^((?=.{1,63}$)[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?)?$")
_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
# The kubelet refuses to start with --node-labels in the kubernetes.io / k8s.io namespaces except
# these (kubelet reference, --node-labels: https://kubernetes.io/docs/reference/command-line-tools-reference/kubelet/).
_KUBELET_PREFIXES = ("kubelet.kubernetes.io", "node.kubernetes.io")
_KUBELET_LABELS = frozenset(
    {
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/instance-type",
        "beta.kubernetes.io/os",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "kubernetes.io/arch",
        "kubernetes.io/hostname",
        "kubernetes.io/os",
        "node.kubernetes.io/instance-type",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    }
)
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def _label_key_problem(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and not _SUBDOMAIN.match(prefix):
        return f"key {key!r}: the prefix before / must be a lower-case DNS subdomain"
    if not _LABEL_NAME.match(name):
        return f"key {key!r}: the name must be 1-63 letters, digits, -, _ or ., starting and ending alphanumeric"
    if slash and (prefix in ("kubernetes.io", "k8s.io") or prefix.endswith((".kubernetes.io", ".k8s.io"))):
        allowed = key in _KUBELET_LABELS or any(prefix == p or prefix.endswith("." + p) for p in _KUBELET_PREFIXES)
        if not allowed:
            return f"key {key!r}: the kubelet refuses kubernetes.io/k8s.io keys other than node.kubernetes.io/*"
    return None


def _label_problem(key: str, value: str) -> str | None:
    """What is wrong with a label (or taint) key=value, None when both follow the label syntax."""
    if not _LABEL_VALUE.match(value):
        return f"value {value!r}: at most 63 letters, digits, -, _ or ., starting and ending alphanumeric"
    return _label_key_problem(key)


def node_labels(v: str) -> str | None:
    """K3S_NODE_LABELS: key=value entries by Kubernetes' label syntax (see above)."""
    for item in split_list(v):
        key, eq, value = item.partition("=")
        problem = _label_problem(key, value) if eq else f"{item!r} has no ="
        if problem:
            return f"Kubernetes labels key=value, comma-separated; {problem}"
    return None


def node_taints(v: str) -> str | None:
    """K3S_NODE_TAINTS: key[=value]:Effect entries, Effect one of NoSchedule, PreferNoSchedule,
    NoExecute; key and value follow the label syntax
    (https://kubernetes.io/docs/concepts/scheduling-eviction/taint-and-toleration/)."""
    for item in split_list(v):
        rest, colon, effect = item.rpartition(":")
        key, _, value = rest.partition("=")
        if colon and effect in TAINT_EFFECTS:
            problem = _label_problem(key, value)
        else:
            problem = f"{item!r} needs :Effect, one of {', '.join(TAINT_EFFECTS)}"
        if problem:
            return f"taints key=value:Effect, comma-separated; {problem}"
    return None


def k3s_version(v: str) -> str | None:
    """A check: a K3s release (v1.35.8+k3s1) or a channel (refused under CI by bootstrap)."""
    if re.match(r"^v1\.[0-9]+\.[0-9]+\+k3s[0-9]+$", v) or v in CHANNELS:
        return None
    return f"a K3s release such as v1.35.8+k3s1 (or, outside CI, a channel: {', '.join(CHANNELS)})"


CHANNELS = ("stable", "latest", "testing")


def sha256_hex(v: str) -> str | None:
    """A check: a sha256 digest as sha256sum prints it (64 lower-case hex digits)."""
    return None if re.match(r"^[0-9a-f]{64}$", v) else "64 lower-case hex digits (output of sha256sum)"


def host_list(v: str) -> str | None:
    """A check: comma-separated [user@]host[:port] entries."""
    bad = [h for h in split_list(v) if not re.match(r"^([a-z_][a-z0-9_-]*@)?[A-Za-z0-9.:\[\]-]+$", h)]
    return f"comma-separated [user@]host[:port] entries (not {', '.join(bad)})" if bad else None


def port(v: str) -> str | None:
    """A check: a TCP port number (1-65535)."""
    return None if v.isdigit() and 0 < int(v) < 65536 else "a TCP port number"


def count(v: str) -> str | None:
    """A check: a whole number from 1 to 100."""
    return None if v.isdigit() and 0 < int(v) <= 100 else "a whole number from 1 to 100"


def seconds(v: str) -> str | None:
    """A check: a positive number of seconds."""
    return None if re.match(r"^[0-9]+(\.[0-9]+)?$", v) and float(v) > 0 else "a number of seconds"


# -- cron schedules (BACKUP_SCHEDULE) ------------------------------------------------------------
# Kubernetes' CronJob controller parses spec.schedule with robfig/cron's standard parser
# (cron.ParseStandard, github.com/robfig/cron/v3 parser.go; the API server validates with the same
# call): five fields — minute (0-59), hour (0-23), day of month (1-31), month (1-12 or JAN-DEC),
# day of week (0-6 or SUN-SAT, names in any case) — each a comma-separated list of `*` (or `?`),
# N, N-M, with an optional /STEP (N/STEP runs from N to the field's end), or one of the descriptors
# below. Refused here although robfig reads them: a seconds field (6 fields), `@every <duration>`
# (not a calendar schedule), and a TZ=/CRON_TZ= prefix (the API server refuses it since 1.25: a
# CronJob's zone is spec.timeZone; before, the controller's own zone applies), and a schedule that
# never comes (0 0 30 2 *).
BACKUP_OFF = "off"  # BACKUP_SCHEDULE=off: the CronJob is kept, suspended
CRON_DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, 1)}
_WEEKDAYS = {name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
# (name, lowest, highest, names) of the five fields, in order
_CRON_FIELDS = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 6, _WEEKDAYS),
)
CRON_EXAMPLE = (
    "a cron schedule such as 17 3 * * * (minute hour day-of-month month day-of-week), @daily or @weekly, or off"
)
_CRON_YEARS = 8  # how far ahead a schedule's runs are looked for (a 29 February comes every 4 years)


@dataclass(frozen=True)
class CronSchedule:
    """A parsed schedule: the values each field admits, and whether day of month / day of week were
    `*` (robfig: a day matches when both fields do if either is `*`, else when either does)."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool

    def runs_on(self, day) -> bool:
        """Whether the schedule has runs on `day` (a datetime.date)."""
        if day.month not in self.months:
            return False
        in_month, in_week = day.day in self.days, (day.weekday() + 1) % 7 in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week

    def longest_gap(self) -> int | None:
        """The longest time between two runs, in seconds (the interval a run is expected within);
        None when it never runs in the next _CRON_YEARS years from a fixed date (a pure function)."""
        from datetime import date, timedelta

        times = sorted(h * 60 + m for h in self.hours for m in self.minutes)
        start = date(2024, 1, 1)
        days = [n for n in range(366 * _CRON_YEARS) if self.runs_on(start + timedelta(days=n))]
        if not days:
            return None
        gaps = [b - a for a, b in itertools.pairwise(times)]
        gaps += [(b - a) * 1440 - times[-1] + times[0] for a, b in itertools.pairwise(days)]
        return 60 * max(gaps or [366 * _CRON_YEARS * 1440])


def _cron_value(text: str, name: str, names: dict[str, int]) -> int:
    if text.lower() in names:
        return names[text.lower()]
    if not text.isascii() or not text.isdigit():
        kinds = f"a number or a name ({', '.join(n.upper() for n in names)})" if names else "a number"
        raise ValueError(f"{name} {text!r} is not {kinds}")
    return int(text)


def _cron_field(text: str, name: str, low: int, high: int, names: dict[str, int]) -> tuple[set[int], bool]:
    """The values one field admits and whether it was a plain `*`/`?` (robfig's getRange, per item)."""
    values, star = set(), False
    for item in text.split(","):
        span, slash, step_text = item.partition("/")
        if "/" in step_text:
            raise ValueError(f"{name} {item!r} has two /")
        step = 1
        if slash:
            if not step_text.isascii() or not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"{name} {item!r}: the step after / must be a positive number")
            step = int(step_text)
        if span in ("*", "?"):
            first, last = low, high
            star = star or step == 1
        else:
            first_text, dash, last_text = span.partition("-")
            first = _cron_value(first_text, name, names)
            last = _cron_value(last_text, name, names) if dash else (high if slash else first)
            if first < low or last > high:
                raise ValueError(f"{name} {item!r} is outside {low}-{high}")
            if first > last:
                raise ValueError(f"{name} {item!r} runs backwards")
        values.update(range(first, last + 1, step))
    return values, star


def parse_cron(v: str) -> CronSchedule:
    """BACKUP_SCHEDULE as Kubernetes reads it (see above). Raises ValueError saying what is wrong."""
    text = CRON_DESCRIPTORS.get(v.strip(), v)
    if v.startswith(("TZ=", "CRON_TZ=")):
        raise ValueError("no TZ=/CRON_TZ= prefix (Kubernetes refuses it; the cluster's time zone applies)")
    if text.startswith("@"):
        raise ValueError(f"{text.split()[0]} is not one of {', '.join(CRON_DESCRIPTORS)}")
    fields = text.split()
    if len(fields) != 5:
        extra = " (Kubernetes reads no seconds field)" if len(fields) == 6 else ""
        raise ValueError(f"{len(fields)} fields, not 5{extra}")
    parsed = [_cron_field(f, *spec) for f, spec in zip(fields, _CRON_FIELDS, strict=True)]
    (minutes, _), (hours, _), (days, any_day), (months, _), (weekdays, any_weekday) = parsed
    return CronSchedule(*map(frozenset, (minutes, hours, days, months, weekdays)), any_day, any_weekday)


def cron_interval(v: str) -> int | None:
    """The longest time between two runs of schedule `v`, in seconds; None when `v` is not a schedule
    Kubernetes reads (parse_cron) or never runs."""
    try:
        return parse_cron(v).longest_gap()
    except ValueError:
        return None


def backup_schedule(v: str) -> str | None:
    """A check: BACKUP_SCHEDULE is `off` or a schedule Kubernetes' CronJob reads that runs (parse_cron)."""
    if v.lower() == BACKUP_OFF:
        return None
    try:
        schedule = parse_cron(v)
    except ValueError as exc:
        return f"{CRON_EXAMPLE}; {exc}"
    if schedule.longest_gap() is None:
        return f"{CRON_EXAMPLE}; this one never runs (no such date)"
    return None


def split_list(v: str) -> list[str]:
    """A comma-separated setting as its items, blanks dropped: 'a, b,,c' -> ['a', 'b', 'c']."""
    return [item.strip() for item in v.split(",") if item.strip()]


@dataclass(frozen=True)
class Setting:
    """One setting: its name, default (None: required, or generated for a secret), the line of
    documentation env/example.env shows, its check, and whether it is a secret (never printed)."""

    name: str
    default: str | None  # None: required (or, for secrets, generated when absent)
    doc: str
    check: Callable[[str], str | None] | None = None
    secret: bool = False


def _resources(component: str, cpu: str, memory: str, cpu_limit: str, memory_limit: str) -> list[Setting]:
    c = component.upper().replace("-", "_")
    return [
        Setting(f"{c}_CPU_REQUEST", cpu, f"{component}: CPU requested", quantity),
        Setting(f"{c}_MEMORY_REQUEST", memory, f"{component}: memory requested", byte_quantity),
        Setting(f"{c}_CPU_LIMIT", cpu_limit, f"{component}: CPU limit", quantity),
        Setting(f"{c}_MEMORY_LIMIT", memory_limit, f"{component}: memory limit", byte_quantity),
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
    Setting(
        "K8S_VERSION",
        "1.35",
        "Kubernetes minor `render` renders for (CronJob API) and validates against; deploy asks the cluster",
        k8s_minor,
    ),
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
        "K3S_VERSION",
        "v1.35.8+k3s1",
        "K3s release (pinned; channels refused under CI); upgrades go one minor at a time",
        k3s_version,
    ),
    Setting(
        "K3S_INSTALL_URL",
        "https://raw.githubusercontent.com/k3s-io/k3s/${K3S_VERSION}/install.sh",
        "installer script (pinned to the release's tag), fetched here and verified before it runs",
        installer_url,
    ),
    Setting(
        "K3S_INSTALL_SHA256", "", "sha256 of the installer script (empty: refused unless --trust-installer)", sha256_hex
    ),
    Setting("K3S_AIRGAP_BINARY", "", "local k3s binary to upload instead of downloading on the hosts (airgap)"),
    Setting("K3S_AIRGAP_IMAGES", "", "local k3s-airgap-images-<arch>.tar(.zst|.gz) to upload with it (airgap)"),
    Setting(
        "API_ENDPOINT",
        "",
        "address clients use for the API server, host[:port] (empty: the first server's address)",
        endpoint,
    ),
    Setting("K3S_TLS_SAN", "", "extra names/addresses for the API server certificate, comma-separated", tls_sans),
    Setting("K3S_NODE_LABELS", "", "labels for every node, key=value, comma-separated", node_labels),
    Setting("K3S_NODE_TAINTS", "", "taints for agent nodes, key=value:Effect, comma-separated", node_taints),
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
    Setting("OLLAMA_STORAGE", "50Gi", "volume for Ollama models", storage),
    Setting("OPEN_WEBUI_STORAGE", "5Gi", "volume for Open WebUI uploads and cache", storage),
    Setting("POSTGRES_STORAGE", "10Gi", "volume for PostgreSQL", storage),
    Setting("REDIS_STORAGE", "1Gi", "volume for Redis", storage),
    Setting("NETDATA_STORAGE", "5Gi", "volume for Netdata's metrics database", storage),
    # Scheduled backups: a CronJob dumps PostgreSQL onto a volume of its own (k8s/llm-stack/backup.yaml)
    Setting(
        "BACKUP_SCHEDULE",
        "17 3 * * *",
        "when the PostgreSQL dump runs, cron in the cluster's time zone (or @daily ...); off suspends it",
        backup_schedule,
    ),
    Setting("BACKUP_KEEP", "7", "dumps kept on the backup volume: the oldest beyond this are deleted", count),
    Setting("BACKUP_STORAGE", "5Gi", "volume for the scheduled dumps (PVC postgres-backups)", storage),
    # Resources
    *_resources("ollama", "1", "4Gi", "8", "16Gi"),
    *_resources("open-webui", "250m", "1Gi", "2", "2Gi"),
    *_resources("postgres", "100m", "256Mi", "1", "1Gi"),
    *_resources("redis", "50m", "64Mi", "500m", "256Mi"),
    # Models and GPU
    Setting(
        "OLLAMA_MODELS",
        "llama3.1:8b,mistral:7b,nomic-embed-text:v1.5",
        "models pulled at deploy time (comma-separated); OLLAMA_EMBEDDING_MODEL is pulled too",
        models,
    ),
    Setting(
        "OLLAMA_EMBEDDING_MODEL",
        "nomic-embed-text:v1.5",
        "Ollama model Open WebUI embeds documents with (RAG), pulled at deploy time; none from Hugging Face",
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
    Setting("WEBUI_ADMIN_PASSWORD", None, "Open WebUI admin password", bcrypt_secret, secret=True),
    Setting("NETDATA_PASSWORD", None, "Netdata dashboard password", bcrypt_secret, secret=True),
    Setting(
        "K3S_TOKEN",
        None,
        "K3s join token (empty: read from the first server, else generated)",
        secret_value,
        secret=True,
    ),
    Setting(
        "SUDO_PASSWORD",
        None,
        "sudo password of SSH_USER on hosts without passwordless sudo",
        sudo_password,
        secret=True,
    ),
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
    """How a value is shown in a problem: secrets as <redacted>, others quoted on one line (repr
    escapes newlines), a long one cut to its start and length."""
    if setting.secret and value:
        return "<redacted>"
    return repr(value) if len(value) <= 80 else f"{value[:60]!r}… ({len(value)} characters)"


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
        """Whether boolean setting `name` is on (true, 1 or yes, any case)."""
        return self.values[name].lower() in ("true", "1", "yes")

    @property
    def models(self) -> list[str]:
        """The models deploy pulls and smoke expects Ollama to list: OLLAMA_MODELS in the order given,
        then OLLAMA_EMBEDDING_MODEL when OLLAMA_MODELS lacks it (by Ollama's name: `m` is `m:latest`).
        Open WebUI embeds every uploaded document with that model (RAG_EMBEDDING_ENGINE=ollama), so
        without it the first upload fails."""
        from .ollama import normalise

        listed = split_list(self.values["OLLAMA_MODELS"])
        embedding = self.values["OLLAMA_EMBEDDING_MODEL"].strip()  # never empty: empty is unset, the default
        if normalise(embedding) not in {normalise(m) for m in listed}:
            listed.append(embedding)
        return listed

    def render_vars(self) -> dict[str, str]:
        """What ${VARS} in k8s/ may use: every non-secret setting (secrets live in Secret objects),
        and what k3stack computes from them: BACKUP_CRONJOB_SCHEDULE and BACKUP_SUSPEND (the CronJob's
        schedule and suspend: BACKUP_SCHEDULE=off keeps the default schedule, suspended)."""
        off = self.values["BACKUP_SCHEDULE"].lower() == BACKUP_OFF
        return {
            **self.values,
            "BACKUP_CRONJOB_SCHEDULE": BY_NAME["BACKUP_SCHEDULE"].default if off else self.values["BACKUP_SCHEDULE"],
            "BACKUP_SUSPEND": "true" if off else "false",
        }


def env_file(env_name: str, env_dir: Path = ENV_DIR) -> Path:
    """The settings file of env `env_name`: <env_dir>/<env_name>.env (it need not exist)."""
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
        try:
            file_values = reader.env_values(path)
        except reader.ReadError as exc:
            raise SettingsError([str(exc)], str(path)) from None
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
        # An empty (or all-blank) value counts as unset (`OPEN_WEBUI_IMAGE=` keeps the pinned image;
        # an empty secret is generated), in the environment and in the file alike. Surrounding
        # blanks are dropped from plain settings; a secret is kept byte for byte.
        given = [v for v in (environ.get(setting.name), file_values.get(setting.name)) if v and v.strip()]
        value = (given[0] if setting.secret else given[0].strip()) if given else ""
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
    _cross_check(expanded, failed, problems)
    if problems:
        raise SettingsError(
            [_one_line(p) for p in problems], str(path) + ("" if path.exists() else " (absent) + environment")
        )
    return Settings(
        env_name=env_name,
        source=str(path),
        values=MappingProxyType({n: v for n, v in expanded.items() if n not in SECRET_NAMES}),
        secrets=MappingProxyType({n: v for n, v in expanded.items() if n in SECRET_NAMES and v}),
    )


_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


def _one_line(problem: str) -> str:
    """A problem on one line whatever a check quoted from the value: control characters and line
    separators shown as escapes (\\n, \\x00), as repr() would."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], problem)


def _text_problem(value: str) -> str | None:
    """What no setting may hold, whatever it is: text that is not Unicode (an undecodable byte in
    the environment arrives as a lone surrogate) and NUL, which no environment variable, command
    line or C string can carry."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "text that is valid UTF-8 (it holds an undecodable byte)"
    return "text without NUL characters" if "\0" in value else None


def _check(setting: Setting, value: str, problems: list[str]) -> None:
    if not value:
        if setting.default is None and not setting.secret:
            expected = setting.check("") if setting.check else "a value"
            problems.append(f"{setting.name}: not set — {setting.doc}; expected {expected}")
        return
    expected = _text_problem(value) or (setting.check(value) if setting.check else None)
    if expected:
        problems.append(f"{setting.name}={redact(setting, _shown(value))}: expected {expected}")


def _shown(value: str) -> str:
    """`value` safe to print: undecodable bytes (lone surrogates) shown as \\udcXX escapes."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


# Per component: the settings whose limit may not be below its request (Kubernetes refuses such a
# container: "must be less than or equal to cpu limit", core/v1 validation of ResourceRequirements).
RESOURCE_COMPONENTS = ("OLLAMA", "OPEN_WEBUI", "POSTGRES", "REDIS")


def _address(entry: str) -> str:
    """The host of a [user@]host[:port] entry as one spelling: lower case, an IP address in its
    canonical form (2001:DB8:0::1 and 2001:db8::1 are one host)."""
    host = entry.rpartition("@")[2]
    with contextlib.suppress(ValueError):
        host = split_endpoint(host)[0]
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host.lower()


def _cross_check(values: Mapping[str, str], failed: set[str], problems: list[str]) -> None:
    """Rules between settings, checked with the rest before any host or cluster is touched; a
    setting that already failed its own check is not judged again."""
    for component in RESOURCE_COMPONENTS:
        for resource in ("CPU", "MEMORY"):
            request, limit = f"{component}_{resource}_REQUEST", f"{component}_{resource}_LIMIT"
            if {request, limit} & failed:
                continue
            if parse_quantity(values[limit]) < parse_quantity(values[request]):
                problems.append(
                    f"{limit}={values[limit]!r}: expected at least {request} ({values[request]}); Kubernetes "
                    f"refuses a limit below its request (raise {limit} or lower {request})"
                )
    if not {"CHAT_HOST", "MONITOR_HOST"} & failed and values["CHAT_HOST"] == values["MONITOR_HOST"]:
        # Blame the one the user moved onto the other's name: its default differs from the value.
        monitor_default = REF.sub(lambda m: values.get(m.group(1), ""), BY_NAME["MONITOR_HOST"].default)
        moved = "CHAT_HOST" if values["MONITOR_HOST"] == monitor_default else "MONITOR_HOST"
        other = "MONITOR_HOST" if moved == "CHAT_HOST" else "CHAT_HOST"
        problems.append(
            f"{moved}={values[moved]!r}: expected a name other than {other}'s (both Ingresses would claim the "
            f"same host; e.g. {moved}={BY_NAME[moved].default})"
        )
    if not {"SERVERS", "AGENTS"} & failed:
        servers = [_address(e) for e in split_list(values["SERVERS"])]
        agents = [_address(e) for e in split_list(values["AGENTS"])]
        for name, hosts in (("SERVERS", servers), ("AGENTS", agents)):
            twice = sorted({h for h in hosts if hosts.count(h) > 1})
            if twice:
                problems.append(f"{name}: {', '.join(twice)} listed twice; expected each host once")
        both = sorted(set(servers) & set(agents))
        if both:
            problems.append(
                f"AGENTS: {', '.join(both)} also in SERVERS; expected each host in one list (a node is a server "
                f"or an agent: K3s servers run workloads too)"
            )


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
        f"# {command('deploy --env <name>')}; the process environment overrides this file (CI secrets).",
        "# ${NAME} refers to another setting. Secrets left empty are generated once and kept",
        "# in the cluster; set them only to choose your own.",
        "",
    ]
    for setting in SETTINGS:
        lines.append(f"# {setting.doc}" + (" (required)" if setting.default is None and not setting.secret else ""))
        lines.append(f"{'' if setting.default is not None else '# '}{setting.name}={setting.default or ''}")
    return "\n".join(lines) + "\n"
