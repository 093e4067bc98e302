# Shared settings and helpers for tests/cluster/{build,images,up,down}. Sourced, never run.
# Everything lives outside the repository so a fresh clone reuses a running cluster and the
# binaries and images built once per machine.
# shellcheck shell=bash

# Bump when a change to the components' commands or configuration must reach a running cluster
# (`up` restarts what an older version started; see `start`).
CLUSTER_VERSION=2

KADE_CLUSTER_HOME="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${KADE_CLUSTER_CACHE:-/var/cache/kade-cluster}"   # binaries, images: built once per machine
STATE="${KADE_CLUSTER_STATE:-/var/lib/kade-cluster}"     # certificates, data, sockets of one cluster
LOGS="$STATE/logs"                                       # one log file per component
PIDS="$STATE/pids"
PKI="$STATE/pki"
KUBECONFIG_ADMIN="$STATE/admin.kubeconfig"

K8S_VERSION="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$KADE_CLUSTER_HOME/go.mod")"
# Keyed by the version and a hash of the pins and the build script: any change builds afresh.
BUILD_ID="$(cat "$KADE_CLUSTER_HOME"/{go.mod,go.sum,crictl/go.mod,crictl/go.sum,build} 2>/dev/null | sha256sum | cut -c1-12)"
BIN="$CACHE/bin/$K8S_VERSION-$BUILD_ID"
# The container runtime (containerd 2 + runc, for user namespaces), pinned in runtime/*/go.mod and
# built by runtime/build. Keyed apart from BIN: a runtime change never rebuilds Kubernetes.
pinned() { awk -v m="$2" '$1 == "require" && $2 == m {print $3}' "$KADE_CLUSTER_HOME/runtime/$1/go.mod"; }
CONTAINERD_VERSION="$(pinned containerd github.com/containerd/containerd/v2)"
RUNC_VERSION="$(pinned runc github.com/opencontainers/runc)"
RUNTIME_ID="$(cat "$KADE_CLUSTER_HOME"/runtime/{containerd,runc}/go.{mod,sum} "$KADE_CLUSTER_HOME/runtime/build" 2>/dev/null |
  sha256sum | cut -c1-12)"
RUNTIME_BIN="$CACHE/runtime/containerd-$CONTAINERD_VERSION-runc-$RUNC_VERSION-$RUNTIME_ID"

# Networks. The node's own address sits on a bridge with no ports ("kade0") that `up` creates, so it
# is routable from pods (through their gateway) and from the host, and never leaves this machine.
NODE_NAME=kade-node
NODE_BRIDGE=kade0
NODE_IP=10.245.0.1
POD_BRIDGE=kadecni0          # made by the CNI bridge plugin
POD_CIDR=10.244.0.0/16
NODE_POD_CIDR=10.244.0.0/24
POD_GATEWAY=10.244.0.1
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SERVICE_IP=10.96.0.1
CNI_NETWORK=kade

APISERVER_PORT=6443
APISERVER="https://$NODE_IP:$APISERVER_PORT"
ETCD_CLIENT_PORT=23790
ETCD_PEER_PORT=23800
REGISTRY_PORT=5000
REGISTRY="$NODE_IP:$REGISTRY_PORT"   # the one name of the registry, for the host, containerd and pods

PAUSE_IMAGE="$REGISTRY/kade/pause:3.10"
BASE_IMAGE="$REGISTRY/kade/debian:bookworm"

CONTAINERD_SOCKET="$STATE/run/containerd/containerd.sock"

log() { printf '%s cluster: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# pid_of NAME: the pid of a component started by `start`, if it still runs that command line. A
# stale pid file (a start that lost a race) is mended by looking the exact command line up.
pid_of() {
  local pid want
  [[ -f "$PIDS/$1.cmd" ]] || return 1
  want="$(<"$PIDS/$1.cmd")"
  pid="$(cat "$PIDS/$1.pid" 2>/dev/null)" || pid=""
  if [[ -n "$pid" && "$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" == "$want "* ]]; then
    echo "$pid"
    return 0
  fi
  # Only a full command line (it names this cluster's own files) identifies a process for sure; the
  # program may sit in another build folder (started by an older `up`): `start` then restarts it.
  [[ "$want" == *" "* ]] || return 1
  pid="$(pgrep -o -f "$(cmd_pattern "$want")")" || return 1
  echo "$pid" >"$PIDS/$1.pid"
  echo "$pid"
}

# cmd_pattern COMMAND: a pgrep -f pattern for COMMAND with its program in any folder.
cmd_pattern() {
  local program="${1%% *}" args="${1#* }"
  printf '^([^ ]*/)?%s %s( |$)' "$(re_escape "${program##*/}")" "$(re_escape "$args")"
}

re_escape() { printf '%s' "$1" | sed 's/[][\.*^$+?(){}|]/\\&/g'; }

running() { pid_of "$1" >/dev/null; }

# fingerprint ARGS...: a hash of a command line and of the state files it names (configs, certificates;
# the programs are named by their build folder).
fingerprint() {
  local arg
  {
    printf '%s\0' "$@"
    for arg in "$@"; do if [[ "$arg" == "$STATE"/* && -f "$arg" ]]; then cat "$arg"; fi; done
  } | sha256sum | cut -c1-16
}

# stop NAME...: SIGTERM to each running component (and its duplicates), then SIGKILL to those still
# there after 10 s.
stop() {
  local name pid pids=() i alive
  for name in "$@"; do
    stop_duplicates "$name"
    if pid="$(pid_of "$name")"; then
      log "stopping $name ($pid)"
      kill -TERM "$pid" 2>/dev/null
      pids+=("$pid")
    fi
    rm -f "$PIDS/$name.pid"
  done
  for ((i = 0; i < 100; i++)); do
    alive=""
    for pid in "${pids[@]}"; do [[ -d /proc/$pid ]] && alive=1; done
    [[ -z "$alive" ]] && return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  return 0
}

# stop_duplicates NAME: a second process with this component's arguments (two racing `up`s of
# different versions) fights the first over ports and iptables: stop all but the one recorded.
stop_duplicates() {
  local keep pid want
  keep="$(pid_of "$1")" || return 0
  want="$(<"$PIDS/$1.cmd")"
  [[ "$want" == *" "* ]] || return 0
  for pid in $(pgrep -f "$(cmd_pattern "$want")"); do
    [[ "$pid" == "$keep" ]] && continue
    log "stopping a duplicate $1 ($pid)"
    kill -TERM "$pid" 2>/dev/null
  done
}

# start NAME PROGRAM ARGS...: run detached (own session), log to $LOGS/NAME.log, record the pid.
# A running component is left alone unless an older version of these scripts started it (a lower
# CLUSTER_VERSION in its record, or no record): then it is restarted with this command. Several
# checkouts of the repository share the cluster, so a checkout never undoes a newer one's start.
start() {
  local name="$1" want pid i record; shift
  want="$(fingerprint "$@")"
  stop_duplicates "$name"
  if pid="$(pid_of "$name")"; then
    # "<pid> [<version>] <fingerprint>" of the last start (version 1 wrote no version field).
    read -r -a record <"$PIDS/$name.fingerprint" 2>/dev/null || record=()
    ((${#record[@]} == 2)) && record=("${record[0]}" 1 "${record[1]}")
    if [[ "${record[0]:-}" == "$pid" ]] && ((${record[1]:-0} >= CLUSTER_VERSION)); then
      [[ "${record[2]}" == "$want" ]] || log "$name runs with another command or configuration (kept; version ${record[1]})"
      return 0
    fi
    log "restarting $name: an older version of these scripts started it"
    stop "$name"
  fi
  mkdir -p "$LOGS" "$PIDS"
  rm -f "$PIDS/$name.pid"
  printf '%s' "$*" >"$PIDS/$name.cmd"
  log "starting $name (log: $LOGS/$name.log)"
  # The child writes its own pid: setsid forks when it is already a process group leader.
  # fds 8 and 9 are the scripts' lock files: a daemon must not hold them.
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PIDS/$name.pid" "$@" </dev/null >>"$LOGS/$name.log" 2>&1 8>&- 9>&- &
  for i in 1 2 3 4 5 6 7 8 9 10; do [[ -s "$PIDS/$name.pid" ]] && break; sleep 0.1; done
  echo "$(cat "$PIDS/$name.pid" 2>/dev/null) $CLUSTER_VERSION $want" >"$PIDS/$name.fingerprint"
}

# wait_for WHAT SECONDS COMMAND...: retry COMMAND until it succeeds, or fail naming the log to read.
wait_for() {
  local what="$1" seconds="$2" deadline; shift 2
  deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      die "$what not ready after ${seconds}s; see the logs in $LOGS (tail -50 $LOGS/*.log)"
    fi
    sleep 0.5
  done
}

kubectl() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
