"""A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager built from
the pinned k8s.io/kubernetes module) and a kubelet stand-in, for poold's tests and for
`make cluster-up`. README.md, "Testing against a real API server", says how to use it."""
