#!/usr/bin/env bash
# Benchmark of the test cluster: seconds from `tests/cluster/up` (binaries and images cached) to the
# node Ready, and the resident memory of each component of the idle cluster after it settles.
# Restarts the cluster (down, then up): run it when no tests use the cluster.
# Usage: bench/cluster_up.sh [settle seconds, default 60]   (appends to bench/RESULTS.md)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=../tests/cluster/lib.sh
source tests/cluster/lib.sh
settle="${1:-60}"

tests/cluster/down >/dev/null 2>&1
start=$(date +%s%N)
tests/cluster/up >/tmp/kade-bench-up.log 2>&1
ready=$(grep -o 'Ready after [0-9]*s' /tmp/kade-bench-up.log | grep -o '[0-9]*')
total_ms=$(( ($(date +%s%N) - start) / 1000000 ))
sleep "$settle"

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
rows="" sum=0
for name in registry etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy; do
  pid="$(pid_of "$name")" || { rows+="| $name | not running |"$'\n'; continue; }
  kib=$(rss_kib "$pid"); sum=$((sum + kib))
  rows+="| $name | $((kib / 1024)) |"$'\n'
done
pods=$("$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" get pods -A --no-headers 2>/dev/null | wc -l)
{
  echo
  echo "## test cluster up — $(date -u '+%Y-%m-%d %H:%M') UTC"
  echo
  echo "- machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), Linux $(uname -r) (shared with other jobs)"
  echo "- command: \`bench/cluster_up.sh $settle\` (down, then up with binaries and images cached)"
  echo "- Kubernetes $K8S_VERSION, etcd $(etcd --version | awk '/etcd Version/ {print $3}'), containerd $(containerd --version | awk '{print $3}')"
  echo "- up to node Ready: ${ready}s; up to its last line (default service account, images checked): $((total_ms / 1000)).$((total_ms % 1000 / 100))s"
  echo "- resident memory ${settle}s after up, $pods pods in the cluster:"
  echo
  echo "| component | RSS MiB |"
  echo "|---|---|"
  printf '%s' "$rows"
  echo "| **total** | **$((sum / 1024))** |"
} | tee -a bench/RESULTS.md
