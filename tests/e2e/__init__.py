"""End-to-end tests against a real control plane (etcd and kube-apiserver on loopback); see harness.py."""
