#!/usr/bin/env bash
# Build the real control plane for poold's tests: kube-apiserver, etcd and
# kube-controller-manager from the k8s.io/kubernetes module pinned in go.mod.
# Binaries go to $POOLD_CLUSTER_BIN (default: .cache/cluster/bin in the checkout, git-ignored);
# a stamp of the sources makes a second run instant. Needs Go (go.mod names the version).
# Go's own caches (GOMODCACHE, GOCACHE: `go env` tells where) make a rebuild after a clean
# clone take minutes instead of the cold build's tens of minutes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="${POOLD_CLUSTER_BIN:-$repo/.cache/cluster/bin}"
if [[ "${1:-}" != "--check" ]] && ! command -v go >/dev/null; then
  echo "tests/cluster/build.sh: Go is not installed (https://go.dev/doc/install); the real-control-plane tests need it" >&2
  exit 2
fi
stamp="$(cd "$here" && cat go.mod go.sum build.sh cmd/*/main.go | sha256sum | cut -c1-16)"
names=(kube-apiserver etcd kube-controller-manager)
if [[ -f "$bin/.stamp" && "$(cat "$bin/.stamp")" == "$stamp" ]]; then
  ok=1
  for name in "${names[@]}"; do [[ -x "$bin/$name" ]] || ok=0; done
  if [[ $ok == 1 ]]; then echo "control plane binaries are up to date in $bin"; exit 0; fi
fi
if [[ "${1:-}" == "--check" ]]; then exit 1; fi  # out of date: say so, build nothing
mkdir -p "$bin"
rm -f "$bin/.stamp"
version=k8s.io/component-base/version
release="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == "k8s.io/kubernetes" {print $3; exit}' "$here/go.mod")"
minor="$(echo "$release" | cut -d. -f2)"
ldflags="-s -w -X $version.gitVersion=$release -X $version.gitMajor=1 -X $version.gitMinor=$minor -X $version.gitTreeState=clean"
start=$(date +%s)
echo "building ${names[*]} ($release) into $bin; GOCACHE=$(go env GOCACHE) GOMODCACHE=$(go env GOMODCACHE)"
(cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$bin/" ./cmd/kube-apiserver ./cmd/etcd ./cmd/kube-controller-manager)
echo "$stamp" > "$bin/.stamp"
echo "built in $(( $(date +%s) - start )) s"
