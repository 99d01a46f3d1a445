"""The shared domain of the webhook and the cert-rotation job.

Object names and keys (`names`), the EtcdStorage spec as both read it (`spec`), Go-style durations (`durations`),
the process settings (`settings`), RFC 3339 times (`times`) and the report the job writes for the hook (`report`).
Nothing here talks to Kubernetes or serves HTTP.
"""
