#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and kube-scheduler from Debian bookworm's
# `kubernetes` source package (the only Kubernetes source reachable from these machines) and
# caches them under $K3STACK_TESTBED_CACHE/<source version>/bin. A cache hit does nothing.
# Build dependencies must already be installed (`inv setup` does); this script touches no system apt state.
set -euo pipefail

cache_root=${K3STACK_TESTBED_CACHE:-$HOME/.cache/k3stack-testbed}
work=$cache_root/src
apt_dir=$cache_root/apt
mkdir -p "$work" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
# One build at a time (two test runs, or inv setup beside a test, share the work directory):
# the second waits, then finds the first one's binaries cached.
exec 9>"$cache_root/.build.lock"
flock 9

# Private apt configuration: the system's URIs and suites as deb-src, own lists and cache.
sources=$apt_dir/sources.list
: >"$sources"
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  awk '
    /^URIs:/    { uri=$2 }
    /^Suites:/  { $1=""; suites=$0 }
    /^Components:/ { $1=""; comps=$0 }
    /^$/ { if (uri!="") { n=split(suites, s, " "); for (i=1;i<=n;i++) print "deb-src [trusted=yes] " uri " " s[i] comps }; uri="" }
    END { if (uri!="") { n=split(suites, s, " "); for (i=1;i<=n;i++) print "deb-src [trusted=yes] " uri " " s[i] comps } }
  ' "$f" >>"$sources"
done
if [ -f /etc/apt/sources.list ]; then
  sed -n 's/^deb \(.*\)/deb-src [trusted=yes] \1/p' /etc/apt/sources.list >>"$sources"
fi
apt_opts=(-o "Dir::Etc::SourceList=$sources" -o "Dir::Etc::SourceParts=/dev/null"
          -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
          -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")

apt-get "${apt_opts[@]}" -qq update
version=$(apt-cache "${apt_opts[@]}" showsrc kubernetes | awk '/^Version:/ {print $2}' | sort -V | tail -n1)
[ -n "$version" ] || { echo "build-kube: no 'kubernetes' source package found in $sources" >&2; exit 1; }
upstream=${version#*really}; upstream=${upstream%%-*}   # 1.20.5+really1.20.2-1.1+deb12u1 -> 1.20.2
out=$cache_root/$version/bin
if [ -x "$out/kube-apiserver" ] && [ -x "$out/kube-controller-manager" ] && [ -x "$out/kube-scheduler" ]; then
  echo "build-kube: cached $out"
  exit 0
fi

echo "build-kube: building Kubernetes v$upstream from Debian source $version"
started=$(date +%s)
rm -rf "$work"; mkdir -p "$work"; cd "$work"
apt-get "${apt_opts[@]}" -qq source --download-only kubernetes="$version"
dpkg-source --no-check -x ./*.dsc tree >/dev/null
export GOPATH=$work/gopath GOCACHE=$cache_root/gocache GO111MODULE=off GOPROXY=off \
       CGO_ENABLED=0 GOTOOLCHAIN=local PATH=/usr/lib/go-1.19/bin:$PATH
mkdir -p "$GOPATH/src/k8s.io"
ln -s "$work/tree" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"
# reflect2 v1.0.1 in vendor/ crashes on map iteration with Go >= 1.18; Debian ships 1.0.2.
rm -rf vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
make gen_openapi >/dev/null
major=${upstream%%.*}; minor=${upstream#*.}; minor=${minor%%.*}
ldflags=""
for pkg in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=v$upstream -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
mkdir -p "$out.tmp"
go build -p 2 -tags selinux,notest -ldflags "-s -w$ldflags" -o "$out.tmp/" \
  ./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kube-scheduler
echo $(( $(date +%s) - started )) >"$out.tmp/build-seconds"
rm -rf "$out"; mv "$out.tmp" "$out"
rm -rf "$work"
echo "build-kube: built $out"
