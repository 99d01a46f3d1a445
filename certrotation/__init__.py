"""The cert-rotation job: one pass over every EtcdStorage, creating and rotating its CAs and certificates.

`job` runs a pass: per tenant `gather` reads, `plan` (pure) decides the ordered writes and, from their outcome, the
report of what was delivered, `apply` writes; `rotation` decides when a CA or certificate is renewed and how a lost
signer is recovered, `pki` makes and reads keys and certificates, `fixes` says what the operator does about a failure,
`events` words the Events on the EtcdStorage, `kube` is the Kubernetes I/O. `python -m certrotation` (or
`etcdstorage-cert-rotation`) runs one pass.
"""
