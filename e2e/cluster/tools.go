//go:build tools

// The etcd and kwok main packages are built from this module (`go build go.etcd.io/etcd/server/v3`,
// `go build sigs.k8s.io/kwok/cmd/kwok`) so they resolve against the same dependency graph as
// the Kubernetes components; these imports keep them in go.mod through `go mod tidy`.
package main

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
