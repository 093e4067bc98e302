//go:build tools

// Package tools pins runc for the test cluster (idmapped mounts for user namespaces need
// runc >= 1.2). A module of its own: its dependency versions never touch the other builds.
package tools

import _ "github.com/opencontainers/runc"
