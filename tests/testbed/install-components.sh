#!/usr/bin/env bash
# Installs the real stack components the test bed runs (TESTBED.md "The stack's own components"):
# PostgreSQL 15, redis-server and Netdata from Debian, and Open WebUI from PyPI (pinned in
# tests/testbed/real/open-webui.txt to the image tag's version) into its own venv under
# $K3STACK_TESTBED_CACHE/open-webui-<version>/. Idempotent: a second run only checks and prints
# one "cached" line per component. Needs root (apt-get) and Python 3.11 or 3.12.
#   --check   install nothing; exit 0 when every component is installed, 1 (naming what is missing) if not
set -euo pipefail
check_only=false
case "${1:-}" in
  --check) check_only=true ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${K3STACK_TESTBED_CACHE:-$HOME/.cache/k3stack-testbed}
pins=$here/real/open-webui.txt

# --- Debian packages -------------------------------------------------------------------------
declare -A packages=([postgresql]=postgresql-15 [redis]=redis-server [netdata]=netdata)
missing=()
for component in postgresql redis netdata; do
  pkg=${packages[$component]}
  if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    echo "$component: cached ($pkg $(dpkg-query -W -f='${Version}' "$pkg"))"
  else
    missing+=("$pkg")
  fi
done
if [ ${#missing[@]} -gt 0 ] && $check_only; then
  echo "install-components: not installed: ${missing[*]}" >&2
fi
if [ ${#missing[@]} -gt 0 ] && ! $check_only; then
  started=$(date +%s)
  apt_opts=(-o DPkg::Lock::Timeout=900 -qq)
  # No daemon is started by the packages' scripts: the bed starts its own, in its namespaces.
  export DEBIAN_FRONTEND=noninteractive RUNLEVEL=1
  apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get "${apt_opts[@]}" update && apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null; }
  for component in postgresql redis netdata; do
    pkg=${packages[$component]}
    if [[ " ${missing[*]} " == *" $pkg "* ]]; then
      echo "$component: installed ($pkg $(dpkg-query -W -f='${Version}' "$pkg"), $(( $(date +%s) - started )) s)"
    fi
  done
fi

# --- Open WebUI from PyPI ----------------------------------------------------------------------
version=$(sed -n 's/^open-webui\[postgres\]==\(.*\)$/\1/p' "$pins")
[ -n "$version" ] || { echo "install-components: no open-webui pin in $pins" >&2; exit 1; }
venv=$cache_root/open-webui-$version
stamp=$venv/.k3stack-installed
# The stamp holds the sha256 of the pins themselves (comments may change without a reinstall).
want=$(grep -v '^[[:space:]]*\(#\|$\)' "$pins" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/open-webui" ]; then
  echo "open-webui: cached ($version in $venv)"
  [ ${#missing[@]} -eq 0 ] || ! $check_only || exit 1
  exit 0
fi
if $check_only; then
  echo "install-components: not installed: open-webui $version ($venv)" >&2
  exit 1
fi
python=""
for candidate in /usr/bin/python3.12 /usr/bin/python3.11 /usr/bin/python3; do
  if [ -x "$candidate" ] && "$candidate" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))'; then
    python=$candidate; break
  fi
done
[ -n "$python" ] || { echo "install-components: Open WebUI $version needs Python >=3.11,<3.13" >&2; exit 1; }
started=$(date +%s)
# The stamp is written last: an interrupted install is redone from scratch.
rm -rf "$venv"
"$python" -m venv "$venv"
# --quiet keeps the log short; a failure still prints pip's error.
# (pip's warnings about this machine's extra local indexes are dropped; errors stay.)
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$pins" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
"$venv/bin/python" -c 'import open_webui, psycopg2' # the [postgres] extra is there
echo "$want" >"$stamp"
echo "open-webui: installed ($version in $venv, $(( $(date +%s) - started )) s)"
