//go:build tools

// Package tools pins the Kubernetes commands that hack/build-cluster-bins.sh builds: the control
// plane, and kubelet + kube-proxy for the real node (`make cluster-up REAL_NODE=1`, tests/node).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
