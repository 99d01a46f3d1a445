package policy_test

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/codes"

	"etcdstorage.local/tenant-proxy/internal/policy"
)

// --- request builders ---

func rangeOp(key, end string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte(key), RangeEnd: bytesOrNil(end)}}}
}

func putOp(key string, lease int64) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(key), Value: []byte("v"), Lease: lease}}}
}

func deleteOp(key string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(key)}}}
}

func txnOp(txn *pb.TxnRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: txn}}
}

func modRevision(key string, revision int64) *pb.Compare {
	return &pb.Compare{Result: pb.Compare_EQUAL, Target: pb.Compare_MOD, Key: []byte(key),
		TargetUnion: &pb.Compare_ModRevision{ModRevision: revision}}
}

func createRevision(key string, revision int64) *pb.Compare {
	return &pb.Compare{Result: pb.Compare_EQUAL, Target: pb.Compare_CREATE, Key: []byte(key),
		TargetUnion: &pb.Compare_CreateRevision{CreateRevision: revision}}
}

func puts(n int) []*pb.RequestOp {
	ops := make([]*pb.RequestOp, n)
	for i := range ops {
		ops[i] = putOp(fmt.Sprintf("k%d", i), 0)
	}
	return ops
}

// reads is n single-key Range operations: each reads a stored value back.
func reads(n int) []*pb.RequestOp {
	ops := make([]*pb.RequestOp, n)
	for i := range ops {
		ops[i] = rangeOp(fmt.Sprintf("k%d", i), "")
	}
	return ops
}

func prevPut(key string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(key), Value: []byte("v"), PrevKv: true}}}
}

func prevDelete(key string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(key), PrevKv: true}}}
}

func compares(n int) []*pb.Compare {
	cmps := make([]*pb.Compare, n)
	for i := range cmps {
		cmps[i] = modRevision(fmt.Sprintf("k%d", i), int64(i))
	}
	return cmps
}

func bytesOrNil(s string) []byte {
	if s == "" {
		return nil
	}
	return []byte(s)
}

func watchCreate(create *pb.WatchCreateRequest) *pb.WatchRequest {
	return &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: create}}
}

// kubeAPIServerRequests are the shapes kube-apiserver (k8s.io/apiserver storage/etcd3) and its etcd client send:
// every one must pass the default limits.
func kubeAPIServerRequests() []struct {
	name    string
	request any
} {
	const key = "/registry/configmaps/default/one"
	return []struct {
		name    string
		request any
	}{
		{"a create Txn (no such key yet, then Put under a lease) passes", &pb.TxnRequest{
			Compare: []*pb.Compare{createRevision(key, 0)},
			Success: []*pb.RequestOp{putOp(key, 0x7a3b)},
		}},
		{"a create Txn comparing ModRevision==0, as kube-apiserver 1.30+ does, passes", &pb.TxnRequest{
			Compare: []*pb.Compare{modRevision(key, 0)},
			Success: []*pb.RequestOp{putOp(key, 0)},
		}},
		{"an update Txn (ModRevision==N, then Put, else Range of the key) passes", &pb.TxnRequest{
			Compare: []*pb.Compare{modRevision(key, 41)},
			Success: []*pb.RequestOp{putOp(key, 0)},
			Failure: []*pb.RequestOp{rangeOp(key, "")},
		}},
		{"a delete Txn (ModRevision==N, then DeleteRange, else Range of the key) passes", &pb.TxnRequest{
			Compare: []*pb.Compare{modRevision(key, 41)},
			Success: []*pb.RequestOp{deleteOp(key)},
			Failure: []*pb.RequestOp{rangeOp(key, "")},
		}},
		{"a get Range of one key passes", &pb.RangeRequest{Key: []byte(key)}},
		{"a paginated list Range with range_end, limit and revision passes", &pb.RangeRequest{
			Key: []byte("/registry/configmaps/default/one\x00"), RangeEnd: []byte("/registry/configmaps0"),
			Limit: 500, Revision: 1234,
		}},
		{"a count-only Range passes", &pb.RangeRequest{
			Key: []byte("/registry/configmaps/"), RangeEnd: []byte("/registry/configmaps0"), CountOnly: true,
		}},
		{"a keys-only Range sorted by modification revision, descending, passes", &pb.RangeRequest{
			Key: []byte("/registry/"), RangeEnd: []byte("/registry0"), KeysOnly: true,
			SortOrder: pb.RangeRequest_DESCEND, SortTarget: pb.RangeRequest_MOD,
		}},
		{"a watch create of a prefix with prev_kv and progress_notify passes", watchCreate(&pb.WatchCreateRequest{
			Key: []byte("/registry/configmaps/"), RangeEnd: []byte("/registry/configmaps0"),
			StartRevision: 1235, PrevKv: true, ProgressNotify: true,
		})},
		{"a watch create with both filters passes", watchCreate(&pb.WatchCreateRequest{
			Key: []byte("/registry/pods/"), Filters: []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NOPUT, pb.WatchCreateRequest_NODELETE},
		})},
		{"a watch progress request passes", &pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{
			ProgressRequest: &pb.WatchProgressRequest{},
		}}},
		{"a watch cancel passes", &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{
			CancelRequest: &pb.WatchCancelRequest{WatchId: 7},
		}}},
		{"a LeaseGrant with ID 0 passes", &pb.LeaseGrantRequest{TTL: 3600}},
		{"a Put with a lease and prev_kv passes", &pb.PutRequest{Key: []byte(key), Value: []byte("v"), Lease: 12, PrevKv: true}},
		{"a DeleteRange of a range passes", &pb.DeleteRangeRequest{Key: []byte("/registry/a"), RangeEnd: []byte("/registry/b")}},
		{"a Status request passes", &pb.StatusRequest{}},
	}
}

func TestCheckPassesWhatKubeAPIServerSends(t *testing.T) {
	for _, tc := range kubeAPIServerRequests() {
		t.Run(tc.name, func(t *testing.T) {
			if refusal := policy.DefaultLimits.Check(tc.request); refusal != nil {
				t.Errorf("Check refused it: %s (%s)", refusal.Reason, refusal.Error())
			}
		})
	}
}

func TestCheck(t *testing.T) {
	big := &pb.PutRequest{Key: []byte("/a"), Value: bytes.Repeat([]byte("x"), 1000)}
	bigWatch := watchCreate(&pb.WatchCreateRequest{Key: bytes.Repeat([]byte("k"), 300)})
	bigTxn := &pb.TxnRequest{Success: []*pb.RequestOp{putOp(strings.Repeat("k", 500), 0)}}
	nested := &pb.TxnRequest{Success: []*pb.RequestOp{putOp("a", 0)}}
	limits := policy.DefaultLimits

	for _, tc := range []struct {
		name    string
		limits  policy.Limits
		request any
		reason  policy.Reason // "" when the request passes
		code    codes.Code
		says    string // part of the message
	}{
		// Size.
		{"a Put one byte over the size limit is refused", policy.Limits{MaxRequestBytes: big.Size() - 1}, big,
			policy.RequestTooLarge, codes.ResourceExhausted, fmt.Sprintf("request of %d bytes is over the limit of %d bytes", big.Size(), big.Size()-1)},
		{"a Put exactly at the size limit passes", policy.Limits{MaxRequestBytes: big.Size()}, big, "", 0, ""},
		{"a watch create one byte over the size limit is refused", policy.Limits{MaxRequestBytes: bigWatch.Size() - 1}, bigWatch,
			policy.RequestTooLarge, codes.ResourceExhausted, "over the limit"},
		{"a watch create exactly at the size limit passes", policy.Limits{MaxRequestBytes: bigWatch.Size()}, bigWatch, "", 0, ""},
		{"a Txn one byte over the size limit is refused", policy.Limits{MaxRequestBytes: bigTxn.Size() - 1, MaxTxnOps: 128}, bigTxn,
			policy.RequestTooLarge, codes.ResourceExhausted, "over the limit"},
		{"a Txn exactly at the size limit passes", policy.Limits{MaxRequestBytes: bigTxn.Size(), MaxTxnOps: 128}, bigTxn, "", 0, ""},
		{"the size limit is checked before anything else", policy.Limits{MaxRequestBytes: 1}, &pb.LeaseGrantRequest{ID: 5},
			policy.RequestTooLarge, codes.ResourceExhausted, "over the limit"},
		{"a request of 1.5 MiB passes the default limit", limits, &pb.PutRequest{Key: []byte("k"), Value: make([]byte, 1536*1024-10)}, "", 0, ""},

		// Operation and compare counts.
		{"a Txn with 129 operations is refused", limits, &pb.TxnRequest{Success: puts(100), Failure: puts(29)},
			policy.TooManyOps, codes.ResourceExhausted, "Txn with 129 operations is over the limit of 128 (success and failure together)"},
		{"a Txn with 128 operations passes", limits, &pb.TxnRequest{Success: puts(64), Failure: puts(64)}, "", 0, ""},
		{"a Txn with 129 operations in success alone is refused", limits, &pb.TxnRequest{Success: puts(129)},
			policy.TooManyOps, codes.ResourceExhausted, "129 operations"},
		{"a Txn with 129 compares is refused", limits, &pb.TxnRequest{Compare: compares(129), Success: puts(1)},
			policy.TooManyOps, codes.ResourceExhausted, "Txn with 129 compares is over the limit of 128"},
		{"a Txn with 128 compares passes", limits, &pb.TxnRequest{Compare: compares(128), Success: puts(1)}, "", 0, ""},
		{"a Txn with 128 compares and 128 operations passes", limits, &pb.TxnRequest{Compare: compares(128), Success: puts(128)}, "", 0, ""},
		{"with no Txn limit set, a Txn of 1000 operations passes", policy.Limits{}, &pb.TxnRequest{Compare: compares(1000), Success: puts(1000)}, "", 0, ""},
		{"an empty Txn passes", limits, &pb.TxnRequest{}, "", 0, ""},

		// What a Txn reads back.
		{"a Txn that reads 5 keys back is refused", limits, &pb.TxnRequest{Success: reads(5)},
			policy.TooManyReads, codes.ResourceExhausted, "Txn reads 5 keys (Range operations and prev_kv), over the limit of 4"},
		{"a Txn that reads 4 keys back passes", limits, &pb.TxnRequest{Success: reads(2), Failure: reads(2)}, "", 0, ""},
		{"reads of the success and failure branches count together", limits, &pb.TxnRequest{Success: reads(3), Failure: reads(2)},
			policy.TooManyReads, codes.ResourceExhausted, "reads 5 keys"},
		{"the same key read 5 times is 5 reads", limits, &pb.TxnRequest{Success: []*pb.RequestOp{rangeOp("a", ""), rangeOp("a", ""), rangeOp("a", ""), rangeOp("a", ""), rangeOp("a", "")}},
			policy.TooManyReads, codes.ResourceExhausted, "reads 5 keys"},
		{"puts and deletes with prev_kv are reads", limits,
			&pb.TxnRequest{Success: []*pb.RequestOp{prevPut("a"), prevPut("b"), prevPut("c")}, Failure: []*pb.RequestOp{prevDelete("a"), rangeOp("a", "")}},
			policy.TooManyReads, codes.ResourceExhausted, "reads 5 keys"},
		{"puts and deletes without prev_kv are not reads", limits,
			&pb.TxnRequest{Success: slices.Concat(puts(60), []*pb.RequestOp{deleteOp("a")}), Failure: reads(4)}, "", 0, ""},
		{"with no read limit set, a Txn of 100 reads passes", policy.Limits{MaxTxnOps: 128}, &pb.TxnRequest{Success: reads(100)}, "", 0, ""},

		// Nesting.
		{"a Txn nested in a Txn is refused", limits, &pb.TxnRequest{Success: []*pb.RequestOp{txnOp(nested)}},
			policy.NestedTxn, codes.InvalidArgument, "Txn nests another Txn at success[0]"},
		{"a Txn nested at failure[2] is refused, naming the place", limits,
			&pb.TxnRequest{Success: puts(1), Failure: []*pb.RequestOp{rangeOp("a", ""), deleteOp("b"), txnOp(nested)}},
			policy.NestedTxn, codes.InvalidArgument, "at failure[2]"},
		{"an empty Txn nested in a Txn is refused", limits, &pb.TxnRequest{Success: []*pb.RequestOp{txnOp(&pb.TxnRequest{})}},
			policy.NestedTxn, codes.InvalidArgument, "success[0]"},
		{"a nil Txn nested in a Txn is refused", limits, &pb.TxnRequest{Success: []*pb.RequestOp{txnOp(nil)}},
			policy.NestedTxn, codes.InvalidArgument, "success[0]"},

		// Ranges in a Txn.
		{"a Txn Range op with a range_end is refused", limits, &pb.TxnRequest{Failure: []*pb.RequestOp{rangeOp("a", "b")}},
			policy.RangeInTxn, codes.InvalidArgument, "Txn reads a range at failure[0]"},
		{"a Txn Range op reading from a key on (range_end \\x00) is refused", limits, &pb.TxnRequest{Success: []*pb.RequestOp{rangeOp("a", "\x00")}},
			policy.RangeInTxn, codes.InvalidArgument, "success[0]"},
		{"a Txn Range op of a single key passes", limits, &pb.TxnRequest{Failure: []*pb.RequestOp{rangeOp("a", "")}}, "", 0, ""},
		{"a compare with a range_end is refused", limits,
			&pb.TxnRequest{Compare: []*pb.Compare{modRevision("a", 1), {Target: pb.Compare_MOD, Key: []byte("a"), RangeEnd: []byte("b"), TargetUnion: &pb.Compare_ModRevision{}}}},
			policy.RangeInTxn, codes.InvalidArgument, "Txn compare[1] compares a range"},

		// Empty operations and compares.
		{"an empty RequestOp is refused", limits, &pb.TxnRequest{Success: []*pb.RequestOp{{}}},
			policy.EmptyOp, codes.InvalidArgument, "Txn operation success[0] is empty or of an unknown kind"},
		{"a nil RequestOp is refused", limits, &pb.TxnRequest{Success: puts(2), Failure: []*pb.RequestOp{nil}},
			policy.EmptyOp, codes.InvalidArgument, "failure[0]"},
		{"a RequestOp with a nil Range is refused", limits, &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{}}}},
			policy.EmptyOp, codes.InvalidArgument, "success[0]"},
		{"a RequestOp with a nil Put is refused", limits, &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{}}}},
			policy.EmptyOp, codes.InvalidArgument, "success[0]"},
		{"a RequestOp with a nil DeleteRange is refused", limits, &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestDeleteRange{}}}},
			policy.EmptyOp, codes.InvalidArgument, "success[0]"},
		{"a nil compare is refused", limits, &pb.TxnRequest{Compare: []*pb.Compare{modRevision("a", 1), nil}},
			policy.InvalidCompare, codes.InvalidArgument, "Txn compare[1] is empty"},
		{"a compare of a ModRevision with a Version value is refused", limits,
			&pb.TxnRequest{Compare: []*pb.Compare{{Target: pb.Compare_MOD, Key: []byte("a"), TargetUnion: &pb.Compare_Version{Version: 1}}}},
			policy.InvalidCompare, codes.InvalidArgument, "Txn compare[0] compares MOD without a MOD to compare with"},
		{"a compare of a Value with no value is refused", limits,
			&pb.TxnRequest{Compare: []*pb.Compare{{Target: pb.Compare_VALUE, Key: []byte("a")}}},
			policy.InvalidCompare, codes.InvalidArgument, "compares VALUE without a VALUE"},
		{"compares are checked before operations", limits,
			&pb.TxnRequest{Compare: []*pb.Compare{nil}, Success: []*pb.RequestOp{txnOp(nested)}},
			policy.InvalidCompare, codes.InvalidArgument, "compare[0]"},

		// Unknown enum values.
		{"a compare with an unknown result is refused", limits,
			&pb.TxnRequest{Compare: []*pb.Compare{{Result: 4, Target: pb.Compare_MOD, TargetUnion: &pb.Compare_ModRevision{}}}},
			policy.UnknownValue, codes.InvalidArgument, "compare[0].result has the unknown value 4"},
		{"a compare with a negative result is refused", limits,
			&pb.TxnRequest{Compare: []*pb.Compare{{Result: -1, Target: pb.Compare_MOD, TargetUnion: &pb.Compare_ModRevision{}}}},
			policy.UnknownValue, codes.InvalidArgument, "compare[0].result has the unknown value -1"},
		{"a compare with NOT_EQUAL passes", limits,
			&pb.TxnRequest{Compare: []*pb.Compare{{Result: pb.Compare_NOT_EQUAL, Target: pb.Compare_MOD, TargetUnion: &pb.Compare_ModRevision{}}}}, "", 0, ""},
		{"a compare with an unknown target is refused", limits,
			&pb.TxnRequest{Compare: []*pb.Compare{{Target: 5, TargetUnion: &pb.Compare_ModRevision{}}}},
			policy.UnknownValue, codes.InvalidArgument, "compare[0].target has the unknown value 5"},
		{"a Range with an unknown sort order is refused", limits, &pb.RangeRequest{Key: []byte("a"), SortOrder: 3},
			policy.UnknownValue, codes.InvalidArgument, "request.sort_order has the unknown value 3"},
		{"a Range sorted descending passes", limits, &pb.RangeRequest{Key: []byte("a"), SortOrder: pb.RangeRequest_DESCEND}, "", 0, ""},
		{"a Range with an unknown sort target is refused", limits, &pb.RangeRequest{Key: []byte("a"), SortTarget: 5},
			policy.UnknownValue, codes.InvalidArgument, "request.sort_target has the unknown value 5"},
		{"a Range sorted by value passes", limits, &pb.RangeRequest{Key: []byte("a"), SortTarget: pb.RangeRequest_VALUE}, "", 0, ""},
		{"a Txn Range op with an unknown sort order is refused, naming the place", limits,
			&pb.TxnRequest{Success: puts(1), Failure: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("a"), SortOrder: 9}}}}},
			policy.UnknownValue, codes.InvalidArgument, "failure[0].sort_order has the unknown value 9"},
		{"a Txn Range op with an unknown sort target is refused", limits,
			&pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("a"), SortTarget: -2}}}}},
			policy.UnknownValue, codes.InvalidArgument, "success[0].sort_target has the unknown value -2"},
		{"a watch with an unknown filter is refused", limits,
			watchCreate(&pb.WatchCreateRequest{Key: []byte("a"), Filters: []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NOPUT, 2}}),
			policy.UnknownValue, codes.InvalidArgument, "create_request.filters[1] has the unknown value 2"},

		// Leases.
		{"a LeaseGrant with a chosen ID is refused", limits, &pb.LeaseGrantRequest{TTL: 60, ID: 0x694d7},
			policy.ChosenLeaseID, codes.InvalidArgument, "LeaseGrant with a chosen ID (431319) is not allowed"},
		{"a LeaseGrant with a negative ID is refused", limits, &pb.LeaseGrantRequest{TTL: 60, ID: -1},
			policy.ChosenLeaseID, codes.InvalidArgument, "chosen ID (-1)"},
		{"a LeaseGrant with ID 0 passes", limits, &pb.LeaseGrantRequest{TTL: 60}, "", 0, ""},

		// Watch requests.
		{"an empty WatchRequest is refused", limits, &pb.WatchRequest{},
			policy.EmptyWatchRequest, codes.InvalidArgument, "watch request is empty or of an unknown kind"},
		{"a watch create with a nil request is refused", limits, watchCreate(nil),
			policy.EmptyWatchRequest, codes.InvalidArgument, "empty"},
		{"a watch cancel with a nil request is refused", limits, &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{}},
			policy.EmptyWatchRequest, codes.InvalidArgument, "empty"},
		{"a watch progress with a nil request is refused", limits, &pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{}},
			policy.EmptyWatchRequest, codes.InvalidArgument, "empty"},
		{"a watch create of a key with no range passes", limits, watchCreate(&pb.WatchCreateRequest{Key: []byte("a")}), "", 0, ""},

		// Everything else.
		{"a request of a type Check does not know passes", limits, "not a request", "", 0, ""},
		{"a nil request passes", limits, nil, "", 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			refusal := tc.limits.Check(tc.request)
			if tc.reason == "" {
				if refusal != nil {
					t.Fatalf("Check refused it: %s (%s)", refusal.Reason, refusal.Error())
				}
				return
			}
			if refusal == nil {
				t.Fatalf("Check passed it, want a refusal for %s", tc.reason)
			}
			if refusal.Reason != tc.reason {
				t.Errorf("Reason = %q, want %q (%s)", refusal.Reason, tc.reason, refusal.Error())
			}
			if code := refusal.GRPCStatus().Code(); code != tc.code {
				t.Errorf("code = %v, want %v", code, tc.code)
			}
			if !strings.HasPrefix(refusal.Error(), "etcdstorage tenant proxy: ") || !strings.Contains(refusal.Error(), tc.says) {
				t.Errorf("message = %q, want it to say %q", refusal.Error(), tc.says)
			}
		})
	}
}

// Every compare target passes with its own value and is refused with any other, or none.
func TestCheckComparePairsEachTargetWithItsValue(t *testing.T) {
	values := map[string]func() *pb.Compare{
		"VERSION": func() *pb.Compare { return &pb.Compare{TargetUnion: &pb.Compare_Version{Version: 1}} },
		"CREATE":  func() *pb.Compare { return &pb.Compare{TargetUnion: &pb.Compare_CreateRevision{CreateRevision: 1}} },
		"MOD":     func() *pb.Compare { return &pb.Compare{TargetUnion: &pb.Compare_ModRevision{ModRevision: 1}} },
		"VALUE":   func() *pb.Compare { return &pb.Compare{TargetUnion: &pb.Compare_Value{Value: []byte("v")}} },
		"LEASE":   func() *pb.Compare { return &pb.Compare{TargetUnion: &pb.Compare_Lease{Lease: 1}} },
		"nothing": func() *pb.Compare { return &pb.Compare{} },
	}
	names := make([]string, 0, len(values))
	for name := range values {
		names = append(names, name)
	}
	slices.Sort(names)
	for target, targetName := range pb.Compare_CompareTarget_name {
		for _, value := range names {
			passes := value == targetName
			name := fmt.Sprintf("a compare of %s with %s is refused", targetName, value)
			if passes {
				name = fmt.Sprintf("a compare of %s with a %s value passes", targetName, value)
			}
			t.Run(name, func(t *testing.T) {
				compare := values[value]()
				compare.Target = pb.Compare_CompareTarget(target)
				compare.Key = []byte("k")
				refusal := policy.DefaultLimits.Check(&pb.TxnRequest{Compare: []*pb.Compare{compare}})
				switch {
				case passes && refusal != nil:
					t.Errorf("refused: %s", refusal.Error())
				case !passes && refusal == nil:
					t.Errorf("passed")
				case !passes && refusal.Reason != policy.InvalidCompare:
					t.Errorf("Reason = %q, want %q", refusal.Reason, policy.InvalidCompare)
				}
			})
		}
	}
}

func TestWatchesExhausted(t *testing.T) {
	refusal := policy.Limits{MaxWatchesPerStream: 3}.WatchesExhausted()
	if refusal.Reason != policy.TooManyWatches || refusal.GRPCStatus().Code() != codes.ResourceExhausted {
		t.Errorf("refusal = %s %v, want %s ResourceExhausted", refusal.Reason, refusal.GRPCStatus().Code(), policy.TooManyWatches)
	}
	if !strings.Contains(refusal.Error(), "3 watches are open on this stream") {
		t.Errorf("message = %q, want the limit named", refusal.Error())
	}
}

// unmarshaler is every etcd request: gogo-generated, they decode themselves.
type unmarshaler interface {
	Unmarshal([]byte) error
	Size() int
}

var fuzzedTypes = []func() unmarshaler{
	func() unmarshaler { return &pb.TxnRequest{} },
	func() unmarshaler { return &pb.RangeRequest{} },
	func() unmarshaler { return &pb.WatchRequest{} },
	func() unmarshaler { return &pb.LeaseGrantRequest{} },
	func() unmarshaler { return &pb.PutRequest{} },
	func() unmarshaler { return &pb.DeleteRangeRequest{} },
}

// FuzzCheck decodes arbitrary bytes as each request type and checks it: Check must never panic, a refusal must
// be well-formed, and a Txn that passes must hold none of what the limits forbid.
func FuzzCheck(f *testing.F) {
	for _, tc := range kubeAPIServerRequests() {
		if message, ok := tc.request.(interface{ Marshal() ([]byte, error) }); ok {
			data, err := message.Marshal()
			if err != nil {
				f.Fatalf("%s: %v", tc.name, err)
			}
			f.Add(data)
		}
	}
	nested, _ := (&pb.TxnRequest{Success: []*pb.RequestOp{txnOp(&pb.TxnRequest{Success: puts(1)})}}).Marshal()
	f.Add(nested)
	f.Add([]byte{})

	tight := policy.Limits{MaxRequestBytes: 64, MaxTxnOps: 2, MaxTxnReads: 1, MaxWatchesPerStream: 1}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, newRequest := range fuzzedTypes {
			request := newRequest()
			if request.Unmarshal(data) != nil {
				continue
			}
			for _, limits := range []policy.Limits{policy.DefaultLimits, tight, {}} {
				refusal := limits.Check(request)
				if refusal == nil {
					if txn, ok := request.(*pb.TxnRequest); ok {
						checkPassedTxn(t, limits, txn)
					}
					continue
				}
				if !slices.Contains(policy.Reasons, refusal.Reason) {
					t.Errorf("%T: unknown reason %q", request, refusal.Reason)
				}
				if code := refusal.GRPCStatus().Code(); code != codes.InvalidArgument && code != codes.ResourceExhausted {
					t.Errorf("%T: code %v", request, code)
				}
				if !strings.HasPrefix(refusal.Error(), "etcdstorage tenant proxy: ") {
					t.Errorf("%T: message %q", request, refusal.Error())
				}
			}
		}
	})
}

func checkPassedTxn(t *testing.T, limits policy.Limits, txn *pb.TxnRequest) {
	t.Helper()
	ops := slices.Concat(txn.Success, txn.Failure)
	if limits.MaxTxnOps > 0 && (len(ops) > limits.MaxTxnOps || len(txn.Compare) > limits.MaxTxnOps) {
		t.Errorf("a Txn of %d operations and %d compares passed the limit %d", len(ops), len(txn.Compare), limits.MaxTxnOps)
	}
	read := 0
	for _, op := range ops {
		switch r := op.GetRequest().(type) {
		case *pb.RequestOp_RequestRange:
			read++
		case *pb.RequestOp_RequestPut:
			if r.RequestPut.GetPrevKv() {
				read++
			}
		case *pb.RequestOp_RequestDeleteRange:
			if r.RequestDeleteRange.GetPrevKv() {
				read++
			}
		}
	}
	if limits.MaxTxnReads > 0 && read > limits.MaxTxnReads {
		t.Errorf("a Txn that reads %d keys back passed the limit %d", read, limits.MaxTxnReads)
	}
	for _, compare := range txn.Compare {
		if compare == nil || len(compare.RangeEnd) != 0 || compare.TargetUnion == nil {
			t.Errorf("a Txn with the compare %v passed", compare)
		}
	}
	for _, op := range ops {
		switch r := op.GetRequest().(type) {
		case *pb.RequestOp_RequestRange:
			if r.RequestRange == nil || len(r.RequestRange.RangeEnd) != 0 {
				t.Errorf("a Txn with the range %v passed", r.RequestRange)
			}
		case *pb.RequestOp_RequestPut, *pb.RequestOp_RequestDeleteRange:
		default:
			t.Errorf("a Txn with the operation %v passed", op)
		}
	}
}
