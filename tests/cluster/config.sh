# Configuration files of the test cluster's components, written into $STATE. Sourced by `up`.
# shellcheck shell=bash

# write_file PATH: write stdin to PATH atomically.
write_file() { cat >"$1.tmp" && mv "$1.tmp" "$1"; }

write_registry_config() {
  mkdir -p "$STATE/registry"
  write_file "$STATE/registry.yml" <<EOF_
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $STATE/registry
  delete:
    enabled: true
http:
  addr: $REGISTRY
EOF_
}

# containerd 2 (config version 3; tests/cluster/runtime/build) with its own runc: user namespaces
# (`hostUsers: false`) need containerd >= 2.0 and runc >= 1.2 (idmapped mounts).
write_containerd_config() {
  mkdir -p "$STATE/containerd" "$STATE/run/containerd" "$STATE/containerd/hosts/$REGISTRY"
  # The cluster registry speaks plain HTTP under the one name the host and pods use too.
  write_file "$STATE/containerd/hosts/$REGISTRY/hosts.toml" <<EOF_
server = "http://$REGISTRY"
[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve"]
EOF_
  write_file "$STATE/containerd.toml" <<EOF_
version = 3
root = "$STATE/containerd/root"
state = "$STATE/run/containerd/state"
imports = []
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.erofs"]

[grpc]
  address = "$CONTAINERD_SOCKET"
[ttrpc]
  address = "$CONTAINERD_SOCKET.ttrpc"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"
# NRI's socket is a fixed host path (/var/run/nri): not ours to take on a shared machine.
[plugins."io.containerd.nri.v1.nri"]
  disable = true
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "$STATE/containerd/hosts"
[plugins."io.containerd.cri.v1.runtime"]
  # This VM's root lacks CAP_SYS_RESOURCE, so runc cannot lower oom_score_adj (the sandbox asks for
  # -998: "nsexec: failed to update /proc/self/oom_score_adj: Permission denied"). Clamp it at ours.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      # Never Debian's containerd 1.6 shim from PATH.
      runtime_path = "$RUNTIME_BIN/containerd-shim-runc-v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$RUNTIME_BIN/runc"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$STATE/cni/net.d"
EOF_
}

write_cni_config() {
  mkdir -p "$STATE/cni/net.d" "$STATE/cni/ipam"
  write_file "$STATE/cni/net.d/10-kade.conflist" <<EOF_
{
  "cniVersion": "0.4.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$POD_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE/cni/ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$POD_GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF_
}

write_kubelet_config() {
  mkdir -p "$STATE/kubelet" "$STATE/pod-logs"
  write_file "$STATE/kubelet.yaml" <<EOF_
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
containerRuntimeEndpoint: unix://$CONTAINERD_SOCKET
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
podLogsDir: $STATE/pod-logs
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
serializeImagePulls: false
# A shared test machine: never evict or garbage-collect images because of other people's disk use.
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 110
EOF_
}

write_kube_proxy_config() {
  write_file "$STATE/kube-proxy.yaml" <<EOF_
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clientConnection:
  kubeconfig: $STATE/kube-proxy.kubeconfig
conntrack:
  maxPerCore: 0
  min: 0
EOF_
}
