#!/usr/bin/env bash
# A real kube-apiserver (and etcd) for the Kubernetes tier-1 tests, built once per machine.
#
# No cluster or container runtime can run here, but the API server can: Debian's `kubernetes`
# source package (1.20.2, vendor/ included) builds it with Debian's golang-1.19. Known fixes:
# GOPATH mode with the tree linked under $GOPATH/src/k8s.io/kubernetes, `make generated_files`
# first (needs rsync), and Debian's newer reflect2/json-iterator in place of the vendored ones,
# which crash under Go >= 1.18. The binary is kept in $KUBE_CACHE (outside the checkout, like
# pip's cache) so a fresh clone on this machine does not build again.
#
# Prints the folder holding kube-apiserver on its last line. Exit 3: the build is impossible on
# this machine (no apt as root and nothing cached) — the tests say so and skip.
set -euo pipefail
version=1.20.2
cache=${KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aigc-lifecycle/kube/v$version}
bin="$cache/bin"
if [ -x "$bin/kube-apiserver" ] && command -v etcd > /dev/null; then echo "$bin"; exit 0; fi

if [ "$(id -u)" = 0 ]; then sudo=(); elif sudo -n true 2> /dev/null; then sudo=(sudo -n); else
  echo "kube-apiserver is not built and apt needs root: tier-1 Kubernetes tests cannot run" >&2
  exit 3
fi
export DEBIAN_FRONTEND=noninteractive
packages=(etcd-server golang-1.19-go rsync dpkg-dev
  golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev)
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${packages[@]}" > /dev/null \
  || { "${sudo[@]}" apt-get update -q > /dev/null \
       && "${sudo[@]}" apt-get install -y -q --no-install-recommends "${packages[@]}" > /dev/null; }
if [ -x "$bin/kube-apiserver" ]; then echo "$bin"; exit 0; fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'chmod -R u+w "$work" 2> /dev/null; rm -rf "$work"' EXIT
# Source packages through apt with a private source list: the machine's apt config is left as is.
apt_dir="$work/apt"
mkdir -p "$apt_dir/lists/partial"
cat > "$apt_dir/sources.list" << 'EOF'
deb-src http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian-security bookworm-security main
EOF
apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=-"
  -o "Dir::State::Lists=$apt_dir/lists" -q)
echo "building kube-apiserver $version from Debian's source (about 10 minutes on 2 cores)" >&2
apt-get "${apt_opts[@]}" update > /dev/null
(cd "$work" && apt-get "${apt_opts[@]}" source --download-only kubernetes > /dev/null \
  && dpkg-source -q -x kubernetes_*.dsc src > /dev/null)

gopath="$work/gopath"
mkdir -p "$gopath/src/k8s.io"
ln -s "$work/src" "$gopath/src/k8s.io/kubernetes"
vendor="$work/src/vendor/github.com"
for pair in modern-go/reflect2 json-iterator/go; do
  rm -rf "${vendor:?}/$pair"
  cp -r "/usr/share/gocode/src/github.com/$pair" "$vendor/$pair"
done
export GOPATH="$gopath" GO111MODULE=off GOFLAGS= GOCACHE="$work/gocache"
export PATH="/usr/lib/go-1.19/bin:$PATH"
cd "$gopath/src/k8s.io/kubernetes"
make generated_files > "$work/generate.log" 2>&1 || { tail -40 "$work/generate.log" >&2; exit 1; }
go build -o "$work/kube-apiserver" ./cmd/kube-apiserver
mkdir -p "$bin"
mv "$work/kube-apiserver" "$bin/kube-apiserver"
echo "$bin"
