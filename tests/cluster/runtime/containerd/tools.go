//go:build tools

// Package tools pins containerd 2 and its runc shim for the test cluster (user namespaces need
// containerd >= 2.0). A module of its own: its dependency versions never touch the other builds.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
)
