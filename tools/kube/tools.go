//go:build tools

// Package tools pins the Kubernetes control plane that weft's Kubernetes-mode
// tests run against (a real kube-apiserver and kube-controller-manager).
// It is a module of its own so that weft's go.mod does not carry
// Kubernetes' dependency graph; `make kube-bins` builds the binaries into
// bin/.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
