package tenant

import (
	"bytes"
	"context"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const testPrefix Prefix = "/t/alpha/"

// message is every etcd message (gogo-generated).
type message interface {
	Marshal() ([]byte, error)
	String() string
}

// sameMessage compares two messages by their encoding, unknown fields included.
func sameMessage(t *testing.T, got, want message) {
	t.Helper()
	if reflect.ValueOf(got).IsNil() {
		t.Errorf("got no message, want %v", want)
		return
	}
	g, err := got.Marshal()
	if err != nil {
		t.Fatalf("marshal %T: %v", got, err)
	}
	w, err := want.Marshal()
	if err != nil {
		t.Fatalf("marshal %T: %v", want, err)
	}
	if !bytes.Equal(g, w) {
		t.Errorf("%T differs:\n got %v\nwant %v", got, got, want)
	}
}

// allFieldsSet fails when a field of a request is left at its zero value, so that a test that means to carry every
// field notices a field etcd adds.
func allFieldsSet(t *testing.T, request any) {
	t.Helper()
	v := reflect.ValueOf(request).Elem()
	for i := range v.NumField() {
		if name := v.Type().Field(i).Name; !strings.HasPrefix(name, "XXX_") && v.Field(i).IsZero() {
			t.Errorf("%T.%s is not set in the test", request, name)
		}
	}
}

// fakeKVClient is the core etcd's KV: it records each request exactly as clientv3 sends it and answers with
// respond (an empty answer of the right type when respond is nil).
type fakeKVClient struct {
	mu       sync.Mutex
	requests []message
	respond  func(ctx context.Context, request message) (message, error)
}

func (f *fakeKVClient) answer(ctx context.Context, request message, empty message) (message, error) {
	f.mu.Lock()
	f.requests = append(f.requests, request)
	f.mu.Unlock()
	if f.respond == nil {
		return empty, nil
	}
	return f.respond(ctx, request)
}

func (f *fakeKVClient) Range(ctx context.Context, in *pb.RangeRequest, _ ...grpc.CallOption) (*pb.RangeResponse, error) {
	resp, err := f.answer(ctx, in, &pb.RangeResponse{})
	if err != nil {
		return nil, err
	}
	return resp.(*pb.RangeResponse), nil
}

func (f *fakeKVClient) Put(ctx context.Context, in *pb.PutRequest, _ ...grpc.CallOption) (*pb.PutResponse, error) {
	resp, err := f.answer(ctx, in, &pb.PutResponse{})
	if err != nil {
		return nil, err
	}
	return resp.(*pb.PutResponse), nil
}

func (f *fakeKVClient) DeleteRange(ctx context.Context, in *pb.DeleteRangeRequest, _ ...grpc.CallOption) (*pb.DeleteRangeResponse, error) {
	resp, err := f.answer(ctx, in, &pb.DeleteRangeResponse{})
	if err != nil {
		return nil, err
	}
	return resp.(*pb.DeleteRangeResponse), nil
}

func (f *fakeKVClient) Txn(ctx context.Context, in *pb.TxnRequest, _ ...grpc.CallOption) (*pb.TxnResponse, error) {
	resp, err := f.answer(ctx, in, &pb.TxnResponse{})
	if err != nil {
		return nil, err
	}
	return resp.(*pb.TxnResponse), nil
}

func (f *fakeKVClient) Compact(ctx context.Context, in *pb.CompactionRequest, _ ...grpc.CallOption) (*pb.CompactionResponse, error) {
	resp, err := f.answer(ctx, in, &pb.CompactionResponse{})
	if err != nil {
		return nil, err
	}
	return resp.(*pb.CompactionResponse), nil
}

func (f *fakeKVClient) sent() []message {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]message(nil), f.requests...)
}

// newTestKV is the tenant's KV over clientv3's own KV over the fake core: what reaches the fake is the wire request.
func newTestKV(fake *fakeKVClient) *KV {
	return NewKV(clientv3.NewKVFromKVClient(fake, nil), testPrefix)
}

// call is one tenant request to the KV service.
type call func(ctx context.Context, kv *KV) (message, error)

func rangeCall(r *pb.RangeRequest) call {
	return func(ctx context.Context, kv *KV) (message, error) { return kv.Range(ctx, r) }
}

func putCall(r *pb.PutRequest) call {
	return func(ctx context.Context, kv *KV) (message, error) { return kv.Put(ctx, r) }
}

func deleteCall(r *pb.DeleteRangeRequest) call {
	return func(ctx context.Context, kv *KV) (message, error) { return kv.DeleteRange(ctx, r) }
}

func txnCall(r *pb.TxnRequest) call {
	return func(ctx context.Context, kv *KV) (message, error) { return kv.Txn(ctx, r) }
}

// --- request builders ---

func fullRange(key, end string) *pb.RangeRequest {
	return &pb.RangeRequest{
		Key: []byte(key), RangeEnd: []byte(end), Limit: 10, Revision: 20,
		SortOrder: pb.RangeRequest_DESCEND, SortTarget: pb.RangeRequest_MOD,
		Serializable: true, KeysOnly: true, CountOnly: true,
		MinModRevision: 1, MaxModRevision: 2, MinCreateRevision: 3, MaxCreateRevision: 4,
	}
}

func fullPut(key string) *pb.PutRequest {
	return &pb.PutRequest{Key: []byte(key), Value: []byte("value"), Lease: 0x1234, PrevKv: true, IgnoreValue: true, IgnoreLease: true}
}

func fullDelete(key, end string) *pb.DeleteRangeRequest {
	return &pb.DeleteRangeRequest{Key: []byte(key), RangeEnd: []byte(end), PrevKv: true}
}

func opRange(r *pb.RangeRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: r}}
}

func opPut(r *pb.PutRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: r}}
}

func opDelete(r *pb.DeleteRangeRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: r}}
}

func opTxn(r *pb.TxnRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: r}}
}

// allCompares compares every target with every result, one compare with a range.
func allCompares(p string) []*pb.Compare {
	return []*pb.Compare{
		{Result: pb.Compare_EQUAL, Target: pb.Compare_VERSION, Key: []byte(p + "a"), TargetUnion: &pb.Compare_Version{Version: 1}},
		{Result: pb.Compare_GREATER, Target: pb.Compare_CREATE, Key: []byte(p + "b"), TargetUnion: &pb.Compare_CreateRevision{CreateRevision: 2}},
		{Result: pb.Compare_LESS, Target: pb.Compare_MOD, Key: []byte(p + "c"), TargetUnion: &pb.Compare_ModRevision{ModRevision: 3}},
		{Result: pb.Compare_NOT_EQUAL, Target: pb.Compare_VALUE, Key: []byte(p + "d"), TargetUnion: &pb.Compare_Value{Value: []byte("v")}},
		{Result: pb.Compare_EQUAL, Target: pb.Compare_LEASE, Key: []byte(p + "e"), TargetUnion: &pb.Compare_Lease{Lease: 5}},
		{Result: pb.Compare_LESS, Target: pb.Compare_MOD, Key: []byte(p + "f"), RangeEnd: []byte(p + "g"), TargetUnion: &pb.Compare_ModRevision{ModRevision: 6}},
	}
}

func fullTxn(p string) *pb.TxnRequest {
	return &pb.TxnRequest{
		Compare: allCompares(p),
		Success: []*pb.RequestOp{opRange(fullRange(p+"r", p+"s")), opPut(fullPut(p + "p"))},
		Failure: []*pb.RequestOp{opDelete(fullDelete(p+"x", p+"y")), opRange(&pb.RangeRequest{Key: []byte(p + "z")})},
	}
}

func TestTheTestRequestsSetEveryField(t *testing.T) {
	allFieldsSet(t, fullRange("a", "b"))
	allFieldsSet(t, fullPut("a"))
	allFieldsSet(t, fullDelete("a", "b"))
	allFieldsSet(t, fullTxn(""))
	for _, compare := range allCompares("") {
		if compare.RangeEnd != nil {
			allFieldsSet(t, compare)
		}
	}
}

func TestKVCarriesEveryFieldUnderThePrefix(t *testing.T) {
	const p = string(testPrefix)
	for _, tc := range []struct {
		name string
		call call
		want message
	}{
		{"every field of a Range reaches the core, its key and range_end under the prefix",
			rangeCall(fullRange("a", "b")), fullRange(p+"a", p+"b")},
		{"a Range from a key on (range_end \\x00) stops at the end of the prefix",
			rangeCall(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}}), &pb.RangeRequest{Key: []byte(p + "a"), RangeEnd: []byte("/t/alpha0")}},
		{"a Range of one key has no range_end upstream",
			rangeCall(&pb.RangeRequest{Key: []byte("a")}), &pb.RangeRequest{Key: []byte(p + "a")}},
		{"a paginated list Range keeps its limit and revision",
			rangeCall(&pb.RangeRequest{Key: []byte("/registry/pods/a\x00"), RangeEnd: []byte("/registry/pods0"), Limit: 500, Revision: 77}),
			&pb.RangeRequest{Key: []byte(p + "/registry/pods/a\x00"), RangeEnd: []byte(p + "/registry/pods0"), Limit: 500, Revision: 77}},
		{"a count-only Range stays count-only",
			rangeCall(&pb.RangeRequest{Key: []byte("/registry/pods/"), RangeEnd: []byte("/registry/pods0"), CountOnly: true}),
			&pb.RangeRequest{Key: []byte(p + "/registry/pods/"), RangeEnd: []byte(p + "/registry/pods0"), CountOnly: true}},
		{"a Range with no sort order but a sort target keeps the target",
			rangeCall(&pb.RangeRequest{Key: []byte("a"), SortTarget: pb.RangeRequest_VERSION}),
			&pb.RangeRequest{Key: []byte(p + "a"), SortTarget: pb.RangeRequest_VERSION}},
		// clientv3's WithSort drops ascending by key, the order etcd answers in anyway.
		{"a Range sorted ascending by key reaches the core without the redundant sort",
			rangeCall(&pb.RangeRequest{Key: []byte("a"), SortOrder: pb.RangeRequest_ASCEND}),
			&pb.RangeRequest{Key: []byte(p + "a")}},
		{"every field of a Put reaches the core, its key under the prefix",
			putCall(fullPut("a")), fullPut(p + "a")},
		{"a Put without options stays plain",
			putCall(&pb.PutRequest{Key: []byte("a"), Value: []byte("v")}), &pb.PutRequest{Key: []byte(p + "a"), Value: []byte("v")}},
		{"every field of a DeleteRange reaches the core, its key and range_end under the prefix",
			deleteCall(fullDelete("a", "b")), fullDelete(p+"a", p+"b")},
		{"a DeleteRange to \\x00 stops at the end of the prefix",
			deleteCall(&pb.DeleteRangeRequest{Key: []byte("a"), RangeEnd: []byte{0}}), &pb.DeleteRangeRequest{Key: []byte(p + "a"), RangeEnd: []byte("/t/alpha0")}},
		{"every compare, success and failure operation of a Txn reaches the core under the prefix",
			txnCall(fullTxn("")), fullTxn(p)},
		{"a kube-apiserver create Txn reaches the core under the prefix",
			txnCall(&pb.TxnRequest{
				Compare: []*pb.Compare{{Target: pb.Compare_CREATE, Key: []byte("/registry/a"), TargetUnion: &pb.Compare_CreateRevision{}}},
				Success: []*pb.RequestOp{opPut(&pb.PutRequest{Key: []byte("/registry/a"), Value: []byte("v"), Lease: 9})},
			}),
			&pb.TxnRequest{
				Compare: []*pb.Compare{{Target: pb.Compare_CREATE, Key: []byte(p + "/registry/a"), TargetUnion: &pb.Compare_CreateRevision{}}},
				Success: []*pb.RequestOp{opPut(&pb.PutRequest{Key: []byte(p + "/registry/a"), Value: []byte("v"), Lease: 9})},
			}},
		{"an empty Txn stays empty", txnCall(&pb.TxnRequest{}), &pb.TxnRequest{}},
		{"a nested Txn, should policy ever let one through, is prefixed too",
			txnCall(&pb.TxnRequest{Success: []*pb.RequestOp{opTxn(fullTxn(""))}}),
			&pb.TxnRequest{Success: []*pb.RequestOp{opTxn(fullTxn(p))}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := &fakeKVClient{}
			if _, err := tc.call(t.Context(), newTestKV(fake)); err != nil {
				t.Fatalf("call: %v", err)
			}
			sent := fake.sent()
			if len(sent) != 1 {
				t.Fatalf("the core got %d requests, want 1", len(sent))
			}
			sameMessage(t, sent[0], tc.want)
		})
	}
}

func TestKVDoesNotChangeTheTenantsRequest(t *testing.T) {
	request := fullTxn("")
	before, _ := request.Marshal()
	if _, err := newTestKV(&fakeKVClient{}).Txn(t.Context(), request); err != nil {
		t.Fatal(err)
	}
	sameMessage(t, request, mustUnmarshalTxn(t, before))
}

func mustUnmarshalTxn(t *testing.T, data []byte) *pb.TxnRequest {
	t.Helper()
	txn := &pb.TxnRequest{}
	if err := txn.Unmarshal(data); err != nil {
		t.Fatal(err)
	}
	return txn
}

// unknownField is field 100 (varint 1): a field this proxy's etcd API does not know.
var unknownField = []byte{0xa0, 0x06, 0x01}

func TestKVSendsNoFieldItDoesNotKnow(t *testing.T) {
	const p = string(testPrefix)
	unknownCompare := func() *pb.Compare {
		return &pb.Compare{Target: pb.Compare_MOD, Key: []byte("a"), TargetUnion: &pb.Compare_ModRevision{ModRevision: 1}, XXX_unrecognized: unknownField}
	}
	for _, tc := range []struct {
		name string
		call call
		want message
	}{
		{"an unknown field of a Range stays with the proxy",
			rangeCall(&pb.RangeRequest{Key: []byte("a"), XXX_unrecognized: unknownField}), &pb.RangeRequest{Key: []byte(p + "a")}},
		{"an unknown field of a Put stays with the proxy",
			putCall(&pb.PutRequest{Key: []byte("a"), XXX_unrecognized: unknownField}), &pb.PutRequest{Key: []byte(p + "a")}},
		{"an unknown field of a DeleteRange stays with the proxy",
			deleteCall(&pb.DeleteRangeRequest{Key: []byte("a"), XXX_unrecognized: unknownField}), &pb.DeleteRangeRequest{Key: []byte(p + "a")}},
		{"an unknown field of a Txn or of its operations stays with the proxy",
			txnCall(&pb.TxnRequest{
				Success:          []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("a"), XXX_unrecognized: unknownField}}, XXX_unrecognized: unknownField}},
				XXX_unrecognized: unknownField,
			}),
			&pb.TxnRequest{Success: []*pb.RequestOp{opPut(&pb.PutRequest{Key: []byte(p + "a")})}}},
		{"an unknown field of a compare stays with the proxy",
			txnCall(&pb.TxnRequest{Compare: []*pb.Compare{unknownCompare()}}),
			&pb.TxnRequest{Compare: []*pb.Compare{{Target: pb.Compare_MOD, Key: []byte(p + "a"), TargetUnion: &pb.Compare_ModRevision{ModRevision: 1}}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := &fakeKVClient{}
			if _, err := tc.call(t.Context(), newTestKV(fake)); err != nil {
				t.Fatalf("call: %v", err)
			}
			if sent := fake.sent(); len(sent) != 1 {
				t.Fatalf("the core got %d requests, want 1", len(sent))
			} else {
				sameMessage(t, sent[0], tc.want)
			}
		})
	}
}

func kv(key, value string) *mvccpb.KeyValue {
	return &mvccpb.KeyValue{Key: []byte(key), Value: []byte(value), CreateRevision: 3, ModRevision: 4, Version: 2, Lease: 7}
}

var header = &pb.ResponseHeader{ClusterId: 1, MemberId: 2, Revision: 99, RaftTerm: 4}

func TestKVAnswersWithoutThePrefix(t *testing.T) {
	const p = string(testPrefix)
	for _, tc := range []struct {
		name    string
		call    call
		respond func() message // a new answer for each call: the namespace wrapper changes it in place
		want    message
	}{
		{"a Range answer loses the prefix of every key and keeps the rest",
			rangeCall(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("c")}),
			func() message {
				return &pb.RangeResponse{Header: header, Kvs: []*mvccpb.KeyValue{kv(p+"a", "1"), kv(p+"b/c", "2")}, More: true, Count: 5}
			},
			&pb.RangeResponse{Header: header, Kvs: []*mvccpb.KeyValue{kv("a", "1"), kv("b/c", "2")}, More: true, Count: 5}},
		{"a count-only Range answer keeps its count",
			rangeCall(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}, CountOnly: true}),
			func() message { return &pb.RangeResponse{Header: header, Count: 12} },
			&pb.RangeResponse{Header: header, Count: 12}},
		{"a Put answer loses the prefix of its prev_kv",
			putCall(&pb.PutRequest{Key: []byte("a"), PrevKv: true}),
			func() message { return &pb.PutResponse{Header: header, PrevKv: kv(p+"a", "old")} },
			&pb.PutResponse{Header: header, PrevKv: kv("a", "old")}},
		{"a Put answer without prev_kv stays without",
			putCall(&pb.PutRequest{Key: []byte("a")}),
			func() message { return &pb.PutResponse{Header: header} },
			&pb.PutResponse{Header: header}},
		{"a DeleteRange answer loses the prefix of every prev_kv",
			deleteCall(&pb.DeleteRangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), PrevKv: true}),
			func() message {
				return &pb.DeleteRangeResponse{Header: header, Deleted: 2, PrevKvs: []*mvccpb.KeyValue{kv(p+"a", "1"), kv(p+"b", "2")}}
			},
			&pb.DeleteRangeResponse{Header: header, Deleted: 2, PrevKvs: []*mvccpb.KeyValue{kv("a", "1"), kv("b", "2")}}},
		{"a Txn answer loses the prefix in every response",
			txnCall(&pb.TxnRequest{Success: []*pb.RequestOp{opRange(&pb.RangeRequest{Key: []byte("a")})}}),
			func() message {
				return &pb.TxnResponse{Header: header, Succeeded: true, Responses: []*pb.ResponseOp{
					{Response: &pb.ResponseOp_ResponseRange{ResponseRange: &pb.RangeResponse{Kvs: []*mvccpb.KeyValue{kv(p+"a", "1")}, Count: 1}}},
					{Response: &pb.ResponseOp_ResponsePut{ResponsePut: &pb.PutResponse{PrevKv: kv(p+"b", "2")}}},
					{Response: &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: &pb.DeleteRangeResponse{Deleted: 1, PrevKvs: []*mvccpb.KeyValue{kv(p+"c", "3")}}}},
					{Response: &pb.ResponseOp_ResponseTxn{ResponseTxn: &pb.TxnResponse{Responses: []*pb.ResponseOp{
						{Response: &pb.ResponseOp_ResponseRange{ResponseRange: &pb.RangeResponse{Kvs: []*mvccpb.KeyValue{kv(p+"d", "4")}}}},
					}}}},
				}}
			},
			&pb.TxnResponse{Header: header, Succeeded: true, Responses: []*pb.ResponseOp{
				{Response: &pb.ResponseOp_ResponseRange{ResponseRange: &pb.RangeResponse{Kvs: []*mvccpb.KeyValue{kv("a", "1")}, Count: 1}}},
				{Response: &pb.ResponseOp_ResponsePut{ResponsePut: &pb.PutResponse{PrevKv: kv("b", "2")}}},
				{Response: &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: &pb.DeleteRangeResponse{Deleted: 1, PrevKvs: []*mvccpb.KeyValue{kv("c", "3")}}}},
				{Response: &pb.ResponseOp_ResponseTxn{ResponseTxn: &pb.TxnResponse{Responses: []*pb.ResponseOp{
					{Response: &pb.ResponseOp_ResponseRange{ResponseRange: &pb.RangeResponse{Kvs: []*mvccpb.KeyValue{kv("d", "4")}}}},
				}}}},
			}}},
		{"a failed Txn answer keeps Succeeded false",
			txnCall(&pb.TxnRequest{Failure: []*pb.RequestOp{opRange(&pb.RangeRequest{Key: []byte("a")})}}),
			func() message {
				return &pb.TxnResponse{Header: header, Responses: []*pb.ResponseOp{
					{Response: &pb.ResponseOp_ResponseRange{ResponseRange: &pb.RangeResponse{Kvs: []*mvccpb.KeyValue{kv(p+"a", "1")}, Count: 1}}},
				}}
			},
			&pb.TxnResponse{Header: header, Responses: []*pb.ResponseOp{
				{Response: &pb.ResponseOp_ResponseRange{ResponseRange: &pb.RangeResponse{Kvs: []*mvccpb.KeyValue{kv("a", "1")}, Count: 1}}},
			}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := &fakeKVClient{respond: func(context.Context, message) (message, error) { return tc.respond(), nil }}
			got, err := tc.call(t.Context(), newTestKV(fake))
			if err != nil {
				t.Fatalf("call: %v", err)
			}
			sameMessage(t, got, tc.want)
		})
	}
}

func TestKVRefusesAnAnswerOutsideThePrefix(t *testing.T) {
	const p = string(testPrefix)
	rangeOf := func(kvs ...*mvccpb.KeyValue) *pb.ResponseOp {
		return &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{ResponseRange: &pb.RangeResponse{Kvs: kvs}}}
	}
	get := rangeCall(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}})
	txn := txnCall(&pb.TxnRequest{Success: []*pb.RequestOp{opRange(&pb.RangeRequest{Key: []byte("a")})}})
	for _, tc := range []struct {
		name    string
		call    call
		respond func() message
	}{
		{"a Range answer with another tenant's key is an internal error", get,
			func() message {
				return &pb.RangeResponse{Kvs: []*mvccpb.KeyValue{kv(p+"a", "1"), kv("/t/beta/secret", "2")}}
			}},
		{"a Range answer with a key of a tenant whose name extends this one is an internal error", get,
			func() message { return &pb.RangeResponse{Kvs: []*mvccpb.KeyValue{kv("/t/alphabet/a", "2")}} }},
		{"a Range answer with a key shorter than the prefix is an internal error, not a panic", get,
			func() message { return &pb.RangeResponse{Kvs: []*mvccpb.KeyValue{kv("/t", "2")}} }},
		{"a Range answer with the empty key is an internal error, not a panic", get,
			func() message { return &pb.RangeResponse{Kvs: []*mvccpb.KeyValue{{}}} }},
		{"a Put answer with a prev_kv outside is an internal error", putCall(&pb.PutRequest{Key: []byte("a"), PrevKv: true}),
			func() message { return &pb.PutResponse{PrevKv: kv("/core/secret", "x")} }},
		{"a DeleteRange answer with a prev_kv outside is an internal error", deleteCall(&pb.DeleteRangeRequest{Key: []byte("a"), PrevKv: true}),
			func() message {
				return &pb.DeleteRangeResponse{Deleted: 2, PrevKvs: []*mvccpb.KeyValue{kv(p+"a", "1"), kv("/x", "2")}}
			}},
		{"a Txn answer with a range outside is an internal error", txn,
			func() message { return &pb.TxnResponse{Responses: []*pb.ResponseOp{rangeOf(kv("/t/beta/a", "1"))}} }},
		{"a Txn answer with a put's prev_kv outside is an internal error", txn,
			func() message {
				return &pb.TxnResponse{Responses: []*pb.ResponseOp{{Response: &pb.ResponseOp_ResponsePut{ResponsePut: &pb.PutResponse{PrevKv: kv("/", "")}}}}}
			}},
		{"a Txn answer with a delete's prev_kv outside is an internal error", txn,
			func() message {
				return &pb.TxnResponse{Responses: []*pb.ResponseOp{{Response: &pb.ResponseOp_ResponseDeleteRange{
					ResponseDeleteRange: &pb.DeleteRangeResponse{PrevKvs: []*mvccpb.KeyValue{kv("/t/b", "")}}}}}}
			}},
		{"a Txn answer with a nested answer outside is an internal error", txn,
			func() message {
				return &pb.TxnResponse{Responses: []*pb.ResponseOp{rangeOf(kv(p+"a", "")), {Response: &pb.ResponseOp_ResponseTxn{
					ResponseTxn: &pb.TxnResponse{Responses: []*pb.ResponseOp{rangeOf(kv("/elsewhere", ""))}}}}}}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := &fakeKVClient{respond: func(context.Context, message) (message, error) { return tc.respond(), nil }}
			got, err := tc.call(t.Context(), newTestKV(fake))
			if status.Code(err) != codes.Internal || status.Convert(err).Message() != status.Convert(errOutside).Message() {
				t.Errorf("error = %v, want %v", err, errOutside)
			}
			if !reflect.ValueOf(got).IsNil() {
				t.Errorf("the tenant got an answer: %v", got)
			}
		})
	}
}

func TestKVAnswersEtcdErrorsAsEtcdSendsThem(t *testing.T) {
	get := rangeCall(&pb.RangeRequest{Key: []byte("a"), Revision: 3})
	for _, tc := range []struct {
		name string
		call call
		core error // what the core etcd answers
	}{
		{"a compacted revision is OUT_OF_RANGE with etcd's message", get, rpctypes.ErrGRPCCompacted},
		{"a future revision is OUT_OF_RANGE with etcd's message", get, rpctypes.ErrGRPCFutureRev},
		{"no leader is UNAVAILABLE with etcd's message", putCall(&pb.PutRequest{Key: []byte("a")}), rpctypes.ErrGRPCNoLeader},
		{"too many operations is INVALID_ARGUMENT with etcd's message", txnCall(&pb.TxnRequest{}), rpctypes.ErrGRPCTooManyOps},
		{"a request too large is INVALID_ARGUMENT with etcd's message", putCall(&pb.PutRequest{Key: []byte("a")}), rpctypes.ErrGRPCRequestTooLarge},
		{"a lease not found is NOT_FOUND with etcd's message", putCall(&pb.PutRequest{Key: []byte("a"), Lease: 5}), rpctypes.ErrGRPCLeaseNotFound},
		{"a space quota exceeded is RESOURCE_EXHAUSTED with etcd's message", deleteCall(&pb.DeleteRangeRequest{Key: []byte("a")}), rpctypes.ErrGRPCNoSpace},
		{"a status etcd does not name passes as it is", get, status.Error(codes.Aborted, "something else")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := &fakeKVClient{respond: func(context.Context, message) (message, error) { return nil, tc.core }}
			_, err := tc.call(t.Context(), newTestKV(fake))
			want := status.Convert(tc.core)
			if got := status.Convert(err); got.Code() != want.Code() || got.Message() != want.Message() {
				t.Errorf("error = %v %q, want %v %q", got.Code(), got.Message(), want.Code(), want.Message())
			}
		})
	}
}

func TestKVAnswersTheCallersCancellation(t *testing.T) {
	for _, tc := range []struct {
		name string
		ctx  func(context.Context) (context.Context, context.CancelFunc)
		want codes.Code
	}{
		{"a canceled call is CANCELED", context.WithCancel, codes.Canceled},
		{"a call past its deadline is DEADLINE_EXCEEDED", func(ctx context.Context) (context.Context, context.CancelFunc) {
			return context.WithDeadline(ctx, time.Now().Add(-time.Second))
		}, codes.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := tc.ctx(t.Context())
			cancel()
			// As grpc-go answers a call whose context ended.
			fake := &fakeKVClient{respond: func(ctx context.Context, _ message) (message, error) {
				return nil, status.FromContextError(ctx.Err()).Err()
			}}
			if _, err := newTestKV(fake).Range(ctx, &pb.RangeRequest{Key: []byte("a")}); status.Code(err) != tc.want {
				t.Errorf("error = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestKVRefusesTheEmptyKeyAsEtcdDoes(t *testing.T) {
	for _, tc := range []struct {
		name string
		call call
	}{
		{"a Range of the empty key is refused", rangeCall(&pb.RangeRequest{RangeEnd: []byte{0}})},
		{"a Put of the empty key is refused", putCall(&pb.PutRequest{Value: []byte("v")})},
		{"a DeleteRange of the empty key is refused", deleteCall(&pb.DeleteRangeRequest{})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := &fakeKVClient{}
			_, err := tc.call(t.Context(), newTestKV(fake))
			want := status.Convert(rpctypes.ErrGRPCEmptyKey)
			if got := status.Convert(err); got.Code() != want.Code() || got.Message() != want.Message() {
				t.Errorf("error = %v, want %v", err, want.Err())
			}
			if len(fake.sent()) != 0 {
				t.Errorf("the core got the request")
			}
		})
	}
}

func TestKVRefusesUncheckedTxnsWithoutCallingTheCore(t *testing.T) {
	for _, tc := range []struct {
		name string
		txn  *pb.TxnRequest
	}{
		{"a nil compare is an internal error", &pb.TxnRequest{Compare: []*pb.Compare{nil}}},
		{"a nil success operation is an internal error", &pb.TxnRequest{Success: []*pb.RequestOp{nil}}},
		{"an empty failure operation is an internal error", &pb.TxnRequest{Failure: []*pb.RequestOp{opPut(fullPut("a")), {}}}},
		{"an operation with a nil Range is an internal error", &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{}}}}},
		{"an operation with a nil Put is an internal error", &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{}}}}},
		{"an operation with a nil DeleteRange is an internal error", &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestDeleteRange{}}}}},
		{"an operation with a nil Txn is an internal error", &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestTxn{}}}}},
		{"an empty operation in a nested Txn is an internal error", &pb.TxnRequest{Success: []*pb.RequestOp{opTxn(&pb.TxnRequest{Failure: []*pb.RequestOp{{}}})}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := &fakeKVClient{}
			_, err := newTestKV(fake).Txn(t.Context(), tc.txn)
			if status.Code(err) != codes.Internal || !strings.Contains(status.Convert(err).Message(), "request was not checked") {
				t.Errorf("error = %v, want Internal: request was not checked", err)
			}
			if len(fake.sent()) != 0 {
				t.Errorf("the core got the request")
			}
		})
	}
}
