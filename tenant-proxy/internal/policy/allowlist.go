// Package policy decides what a tenant may ask of the core etcd: which RPCs it may call (the allowlist) and the
// bounds every request must keep. It only decides: no I/O, no state; the proxy's interceptors apply it.
package policy

import (
	"fmt"
	"sort"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Allowed is every etcd RPC a tenant may call, by full gRPC method, with the reason a kube-apiserver-based server
// needs it. Everything else, of every service, is refused with PERMISSION_DENIED. docs/security.md lists the same
// table; a test keeps the two equal.
var Allowed = map[string]string{
	"/etcdserverpb.KV/Range":           "get, list and count of objects; the storage health check reads <prefix>/health",
	"/etcdserverpb.KV/Txn":             "create, update and delete are compare-and-swap transactions on the object's revision",
	"/etcdserverpb.KV/Put":             "plain writes: kube-apiserver writes through Txn, etcdctl put and tools use Put",
	"/etcdserverpb.KV/DeleteRange":     "plain deletes: kube-apiserver deletes through Txn, etcdctl del uses it",
	"/etcdserverpb.Watch/Watch":        "the watch cache and every watch request, with progress requests for consistent lists",
	"/etcdserverpb.Lease/LeaseGrant":   "objects with a TTL (events, endpoint leases) are written under a lease",
	"/etcdserverpb.Maintenance/Status": "the etcd version check of feature detection, and the storage size metric",
}

// Allows reports whether a tenant may call the full gRPC method.
func Allows(method string) bool {
	_, ok := Allowed[method]
	return ok
}

// AllowedMethods is the allowlist, sorted: for messages and documentation.
func AllowedMethods() []string {
	methods := make([]string, 0, len(Allowed))
	for method := range Allowed {
		methods = append(methods, method)
	}
	sort.Strings(methods)
	return methods
}

// Reason says why a request was refused; it is the `reason` label of the refusal metric.
type Reason string

const (
	RPCNotAllowed     Reason = "rpc-not-allowed"
	RequestTooLarge   Reason = "request-too-large"
	TooManyOps        Reason = "too-many-ops"
	TooManyReads      Reason = "too-many-reads"
	NestedTxn         Reason = "nested-txn"
	RangeInTxn        Reason = "range-in-txn"
	EmptyOp           Reason = "empty-op"
	InvalidCompare    Reason = "invalid-compare"
	UnknownValue      Reason = "unknown-value"
	ChosenLeaseID     Reason = "chosen-lease-id"
	EmptyWatchRequest Reason = "empty-watch-request"
	TooManyWatches    Reason = "too-many-watches"
)

// Reasons is every Reason, for metrics that export each from the start.
var Reasons = []Reason{
	RPCNotAllowed, RequestTooLarge, TooManyOps, TooManyReads, NestedTxn, RangeInTxn, EmptyOp, InvalidCompare, UnknownValue,
	ChosenLeaseID, EmptyWatchRequest, TooManyWatches,
}

// Refusal is a request the proxy does not pass on: why, and the gRPC status the client gets. It is an error that
// grpc-go sends as that status.
type Refusal struct {
	Reason Reason
	status *status.Status
}

func refuse(reason Reason, code codes.Code, format string, args ...any) *Refusal {
	return &Refusal{Reason: reason, status: status.New(code, "etcdstorage tenant proxy: "+fmt.Sprintf(format, args...))}
}

func (r *Refusal) Error() string { return r.status.Message() }

// GRPCStatus makes a Refusal the status grpc-go answers with.
func (r *Refusal) GRPCStatus() *status.Status { return r.status }

// Denied is the refusal of an RPC outside the allowlist.
func Denied(method string) *Refusal {
	short := strings.TrimPrefix(method, "/")
	return refuse(RPCNotAllowed, codes.PermissionDenied,
		"etcd RPC %s is not allowed for tenants; allowed: %s", short, strings.Join(shortNames(), ", "))
}

func shortNames() []string {
	methods := AllowedMethods()
	for i, method := range methods {
		methods[i] = strings.TrimPrefix(method, "/etcdserverpb.")
	}
	return methods
}
