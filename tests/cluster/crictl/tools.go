//go:build tools

// Package tools pins crictl (cri-tools), used by tests/cluster/down and for debugging the node.
// A module of its own so that its dependency versions never change the Kubernetes build.
package tools

import _ "sigs.k8s.io/cri-tools/cmd/crictl"
