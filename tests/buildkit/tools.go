//go:build tools

// Package tools pins BuildKit's daemon and client for tests/buildkit/build (go.mod holds the version).
package tools

import (
	_ "github.com/moby/buildkit/cmd/buildctl"
	_ "github.com/moby/buildkit/cmd/buildkitd"
)
