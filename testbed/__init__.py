"""Real components on loopback for the tests and the benchmarks: etcd, the tenant proxy, kube-apiserver.

`binaries/` builds etcd and kube-apiserver from their Go modules into a cache outside the repository; `etcd`,
`proxy` and `stack` start a core etcd and a tenant's proxy as a pod runs them; `harness` runs a control plane
(also by hand: `python -m testbed.harness up`); `certs`, `etcdrpc` and `etcdwire` make the certificates and speak
etcd's gRPC. Nothing here is shipped.
"""
