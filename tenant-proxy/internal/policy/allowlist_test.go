package policy_test

import (
	"errors"
	"slices"
	"sort"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"etcdstorage.local/tenant-proxy/internal/policy"
)

// allowed is the allowlist as this test expects it, written out: a change to policy.Allowed must change it too.
var allowed = []string{
	"/etcdserverpb.KV/DeleteRange",
	"/etcdserverpb.KV/Put",
	"/etcdserverpb.KV/Range",
	"/etcdserverpb.KV/Txn",
	"/etcdserverpb.Lease/LeaseGrant",
	"/etcdserverpb.Maintenance/Status",
	"/etcdserverpb.Watch/Watch",
}

// electionAndLock are the RPCs of etcd's v3election and v3lock services (whose generated code lives in etcd's
// server module, which the proxy does not import).
var electionAndLock = []string{
	"/v3electionpb.Election/Campaign",
	"/v3electionpb.Election/Proclaim",
	"/v3electionpb.Election/Leader",
	"/v3electionpb.Election/Observe",
	"/v3electionpb.Election/Resign",
	"/v3lockpb.Lock/Lock",
	"/v3lockpb.Lock/Unlock",
}

// etcdMethods is every RPC of etcd's KV, Watch, Lease, Cluster, Maintenance and Auth services, read from the
// generated service descriptions (registered on a server that is never started), then v3election and v3lock.
func etcdMethods(t *testing.T) []string {
	t.Helper()
	server := grpc.NewServer()
	pb.RegisterKVServer(server, &pb.UnimplementedKVServer{})
	pb.RegisterWatchServer(server, &pb.UnimplementedWatchServer{})
	pb.RegisterLeaseServer(server, &pb.UnimplementedLeaseServer{})
	pb.RegisterClusterServer(server, &pb.UnimplementedClusterServer{})
	pb.RegisterMaintenanceServer(server, &pb.UnimplementedMaintenanceServer{})
	pb.RegisterAuthServer(server, &pb.UnimplementedAuthServer{})
	var methods []string
	for service, info := range server.GetServiceInfo() {
		for _, method := range info.Methods {
			methods = append(methods, "/"+service+"/"+method.Name)
		}
	}
	methods = append(methods, electionAndLock...)
	sort.Strings(methods)
	// A floor, so that a broken enumeration cannot make the test below vacuous: etcd 3.6 has 45 such RPCs.
	if len(methods) < 45 {
		t.Fatalf("found only %d etcd RPCs: %v", len(methods), methods)
	}
	return methods
}

func TestAllowsExactlyTheAllowlist(t *testing.T) {
	methods := etcdMethods(t)
	for _, method := range methods {
		want := slices.Contains(allowed, method)
		name := method + " is refused"
		if want {
			name = method + " is allowed"
		}
		t.Run(name, func(t *testing.T) {
			if got := policy.Allows(method); got != want {
				t.Errorf("Allows(%q) = %v, want %v", method, got, want)
			}
		})
	}
	t.Run("every allowed method is a real etcd RPC", func(t *testing.T) {
		for method := range policy.Allowed {
			if !slices.Contains(methods, method) {
				t.Errorf("Allowed holds %q, which etcd does not serve", method)
			}
		}
	})
	t.Run("the allowlist is exactly the seven RPCs kube-apiserver needs", func(t *testing.T) {
		if got := policy.AllowedMethods(); !slices.Equal(got, allowed) {
			t.Errorf("AllowedMethods() = %v, want %v", got, allowed)
		}
	})
	t.Run("every allowed RPC says why it is allowed", func(t *testing.T) {
		for method, why := range policy.Allowed {
			if strings.TrimSpace(why) == "" {
				t.Errorf("Allowed[%q] gives no reason", method)
			}
		}
	})
}

func TestAllowsRefusesNamesThatAreNotExactlyAnAllowedMethod(t *testing.T) {
	for _, tc := range []struct{ name, method string }{
		{"an empty method is refused", ""},
		{"a method without its leading slash is refused", "etcdserverpb.KV/Range"},
		{"a method with a trailing slash is refused", "/etcdserverpb.KV/Range/"},
		{"a method in another case is refused", "/etcdserverpb.kv/range"},
		{"a path that climbs from an allowed method to Snapshot is refused", "/etcdserverpb.KV/Range/../../etcdserverpb.Maintenance/Snapshot"},
		{"a percent-encoded allowed method is refused", "/etcdserverpb.KV/%52ange"},
		{"an allowed method with a query string is refused", "/etcdserverpb.KV/Range?x=1"},
		{"an allowed method of another package is refused", "/etcdserverpb.v2.KV/Range"},
		{"the grpc-gateway path of Range is refused", "/v3/kv/range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if policy.Allows(tc.method) {
				t.Errorf("Allows(%q) = true", tc.method)
			}
		})
	}
}

func TestAllowedMethodsIsSortedAndACopy(t *testing.T) {
	t.Run("the methods are sorted", func(t *testing.T) {
		if methods := policy.AllowedMethods(); !sort.StringsAreSorted(methods) {
			t.Errorf("AllowedMethods() = %v, not sorted", methods)
		}
	})
	t.Run("changing the returned slice does not change the allowlist", func(t *testing.T) {
		methods := policy.AllowedMethods()
		methods[0] = "/etcdserverpb.KV/Compact"
		if policy.Allows("/etcdserverpb.KV/Compact") || !slices.Equal(policy.AllowedMethods(), allowed) {
			t.Errorf("the allowlist changed with the slice AllowedMethods returned")
		}
	})
}

func TestDenied(t *testing.T) {
	for _, tc := range []struct {
		name, method, names string
	}{
		{"Compact is denied by name", "/etcdserverpb.KV/Compact", "etcdserverpb.KV/Compact"},
		{"Snapshot is denied by name", "/etcdserverpb.Maintenance/Snapshot", "etcdserverpb.Maintenance/Snapshot"},
		{"an election RPC is denied by name", "/v3electionpb.Election/Campaign", "v3electionpb.Election/Campaign"},
		{"a method without a leading slash is named as it came", "odd/Method", "odd/Method"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			refusal := policy.Denied(tc.method)
			if refusal.Reason != policy.RPCNotAllowed {
				t.Errorf("Reason = %q, want %q", refusal.Reason, policy.RPCNotAllowed)
			}
			// A Refusal is what grpc-go sends: its status, found through the error interface.
			var err error = refusal
			st, ok := status.FromError(err)
			if !ok || st.Code() != codes.PermissionDenied {
				t.Fatalf("status = %v (ok %v), want PermissionDenied", st, ok)
			}
			want := "etcdstorage tenant proxy: etcd RPC " + tc.names + " is not allowed for tenants; allowed: " +
				"KV/DeleteRange, KV/Put, KV/Range, KV/Txn, Lease/LeaseGrant, Maintenance/Status, Watch/Watch"
			if st.Message() != want || err.Error() != want {
				t.Errorf("message = %q\nwant      %q", st.Message(), want)
			}
			var found *policy.Refusal
			if !errors.As(err, &found) || found != refusal {
				t.Errorf("errors.As does not find the Refusal")
			}
		})
	}
}

func TestReasonsAreDistinctAndComplete(t *testing.T) {
	seen := map[policy.Reason]bool{}
	for _, reason := range policy.Reasons {
		if seen[reason] || reason == "" {
			t.Errorf("reason %q is empty or listed twice", reason)
		}
		seen[reason] = true
	}
	// Every reason a refusal can carry must be in Reasons, which the metrics export at 0 from the start.
	for _, reason := range []policy.Reason{
		policy.RPCNotAllowed, policy.RequestTooLarge, policy.TooManyOps, policy.TooManyReads, policy.NestedTxn, policy.RangeInTxn,
		policy.EmptyOp, policy.InvalidCompare, policy.UnknownValue, policy.ChosenLeaseID, policy.EmptyWatchRequest,
		policy.TooManyWatches,
	} {
		if !seen[reason] {
			t.Errorf("Reasons lacks %q", reason)
		}
	}
}
