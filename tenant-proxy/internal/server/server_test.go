package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"etcdstorage.local/tenant-proxy/internal/policy"
	"etcdstorage.local/tenant-proxy/internal/tenant"
)

// wait bounds every wait for what happens at once in working code.
const wait = 10 * time.Second

// --- fake services: they record what reaches them ---

type recorder struct {
	mu    sync.Mutex
	calls []string
}

func (r *recorder) record(method string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, method)
}

func (r *recorder) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.calls...)
}

// Keys that make the fake services misbehave.
const (
	keyPanic       = "panic"
	keyUnavailable = "unavailable"
	keyCompacted   = "compacted"
	keyStop        = "stop"
)

type fakeKV struct {
	pb.UnimplementedKVServer
	*recorder
}

func (f *fakeKV) Range(_ context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	f.record("Range")
	switch string(r.Key) {
	case keyPanic:
		panic("a bug in Range")
	case keyUnavailable:
		return nil, status.Error(codes.Unavailable, "the core etcd cannot be reached")
	case keyCompacted:
		return nil, status.Error(codes.OutOfRange, "etcdserver: mvcc: required revision has been compacted")
	}
	return &pb.RangeResponse{Count: 1}, nil
}

func (f *fakeKV) Put(context.Context, *pb.PutRequest) (*pb.PutResponse, error) {
	f.record("Put")
	panic("a bug in Put")
}

func (f *fakeKV) DeleteRange(context.Context, *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	f.record("DeleteRange")
	return &pb.DeleteRangeResponse{}, nil
}

func (f *fakeKV) Txn(context.Context, *pb.TxnRequest) (*pb.TxnResponse, error) {
	f.record("Txn")
	return &pb.TxnResponse{Succeeded: true}, nil
}

func (f *fakeKV) Compact(context.Context, *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	f.record("Compact")
	return &pb.CompactionResponse{}, nil
}

type fakeWatch struct {
	*recorder
	received chan *pb.WatchRequest
}

// Watch forwards every request to received and answers each create; a create of keyPanic panics, of keyStop
// ends the stream as the proxy does when it stops. A client's CloseSend ends the stream without an error.
func (f *fakeWatch) Watch(stream pb.Watch_WatchServer) error {
	f.record("Watch")
	for {
		request, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		f.received <- request
		switch string(request.GetCreateRequest().GetKey()) {
		case keyPanic:
			panic("a bug in Watch")
		case keyStop:
			return tenant.ErrStopping
		}
		if err := stream.Send(&pb.WatchResponse{Created: request.GetCreateRequest() != nil}); err != nil {
			return err
		}
	}
}

type fakeLease struct {
	pb.UnimplementedLeaseServer
	*recorder
}

func (f *fakeLease) LeaseGrant(context.Context, *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	f.record("LeaseGrant")
	return &pb.LeaseGrantResponse{ID: 1, TTL: 60}, nil
}

func (f *fakeLease) LeaseRevoke(context.Context, *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	f.record("LeaseRevoke")
	return &pb.LeaseRevokeResponse{}, nil
}

func (f *fakeLease) LeaseKeepAlive(pb.Lease_LeaseKeepAliveServer) error {
	f.record("LeaseKeepAlive")
	return nil
}

type fakeMaintenance struct {
	pb.UnimplementedMaintenanceServer
	*recorder
}

func (f *fakeMaintenance) Status(context.Context, *pb.StatusRequest) (*pb.StatusResponse, error) {
	f.record("Status")
	return &pb.StatusResponse{Version: "3.6.16"}, nil
}

func (f *fakeMaintenance) Snapshot(*pb.SnapshotRequest, pb.Maintenance_SnapshotServer) error {
	f.record("Snapshot")
	return nil
}

func (f *fakeMaintenance) Defragment(context.Context, *pb.DefragmentRequest) (*pb.DefragmentResponse, error) {
	f.record("Defragment")
	return &pb.DefragmentResponse{}, nil
}

// --- the rig ---

// lockedBuffer is a log destination the test reads while the server writes.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type rig struct {
	conn     *grpc.ClientConn
	metrics  *Metrics
	health   *Health
	services *recorder
	watched  chan *pb.WatchRequest
	log      *lockedBuffer
}

var testLimits = policy.Limits{MaxRequestBytes: 4096, MaxTxnOps: 8, MaxTxnReads: 2, MaxWatchesPerStream: 10}

func newRig(t *testing.T) *rig {
	t.Helper()
	r := &rig{
		metrics: NewMetrics(), services: &recorder{}, watched: make(chan *pb.WatchRequest, 100), log: &lockedBuffer{},
	}
	r.health = &Health{
		Loaded:  func() bool { return true },
		Probe:   func(context.Context) error { return errors.New("the probe is not expected in this test") },
		Metrics: r.metrics,
	}
	server := New(Options{
		Creds: insecure.NewCredentials(),
		Services: Services{
			KV:          &fakeKV{recorder: r.services},
			Watch:       &fakeWatch{recorder: r.services, received: r.watched},
			Lease:       &fakeLease{recorder: r.services},
			Maintenance: &fakeMaintenance{recorder: r.services},
		},
		Limits:  testLimits,
		Metrics: r.metrics,
		Health:  r.health,
		Log:     slog.New(slog.NewJSONHandler(r.log, nil)),
	})
	listener := bufconn.Listen(1 << 20)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = server.Serve(listener)
	}()
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return listener.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		server.Stop()
		<-served
	})
	r.conn = conn
	return r
}

func (r *rig) refusals(reason policy.Reason) float64 {
	return testutil.ToFloat64(r.metrics.refusals.WithLabelValues(string(reason)))
}

func (r *rig) requests(rpc string, code codes.Code) float64 {
	return testutil.ToFloat64(r.metrics.requests.WithLabelValues(rpc, code.String()))
}

func wantStatus(t *testing.T, err error, code codes.Code, message string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != code || message != "" && st.Message() != message {
		t.Errorf("status = %v %q, want %v %q", st.Code(), st.Message(), code, message)
	}
}

func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(wait):
		t.Fatalf("no %s within %v", what, wait)
		panic("unreachable")
	}
}

// eventually polls condition until it holds, or fails the test after wait.
func eventually(t *testing.T, what string, condition func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	ticker := time.NewTicker(5 * time.Millisecond)
	defer ticker.Stop()
	for !condition() {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within %v", what, wait)
		}
		<-ticker.C
	}
}

// streamCall opens a stream of method, sends request, and returns what the first Recv answers.
func streamCall(ctx context.Context, conn *grpc.ClientConn, method string, request any) error {
	stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, method)
	if err != nil {
		return err
	}
	if err := stream.SendMsg(request); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	_ = stream.CloseSend()
	return stream.RecvMsg(&pb.RangeResponse{})
}

func unaryCall(ctx context.Context, conn *grpc.ClientConn, method string, request any) error {
	return conn.Invoke(ctx, method, request, &pb.RangeResponse{})
}

// --- tests ---

func TestAllowedRPCsReachTheirService(t *testing.T) {
	r := newRig(t)
	kv, lease, maintenance := pb.NewKVClient(r.conn), pb.NewLeaseClient(r.conn), pb.NewMaintenanceClient(r.conn)
	for _, tc := range []struct {
		name, service, rpc string
		call               func(ctx context.Context) error
	}{
		{"a Range reaches KV", "Range", "/etcdserverpb.KV/Range", func(ctx context.Context) error {
			_, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte("a")})
			return err
		}},
		{"a DeleteRange reaches KV", "DeleteRange", "/etcdserverpb.KV/DeleteRange", func(ctx context.Context) error {
			_, err := kv.DeleteRange(ctx, &pb.DeleteRangeRequest{Key: []byte("a")})
			return err
		}},
		{"a Txn reaches KV", "Txn", "/etcdserverpb.KV/Txn", func(ctx context.Context) error {
			_, err := kv.Txn(ctx, &pb.TxnRequest{Compare: []*pb.Compare{{Target: pb.Compare_MOD, Key: []byte("a"), TargetUnion: &pb.Compare_ModRevision{}}}})
			return err
		}},
		{"a LeaseGrant reaches Lease", "LeaseGrant", "/etcdserverpb.Lease/LeaseGrant", func(ctx context.Context) error {
			_, err := lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 60})
			return err
		}},
		{"a Status reaches Maintenance", "Status", "/etcdserverpb.Maintenance/Status", func(ctx context.Context) error {
			_, err := maintenance.Status(ctx, &pb.StatusRequest{})
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(r.services.got())
			ok := r.requests(tc.rpc, codes.OK)
			if err := tc.call(t.Context()); err != nil {
				t.Fatalf("call: %v", err)
			}
			if got := r.services.got()[before:]; len(got) != 1 || got[0] != tc.service {
				t.Errorf("the services got %v, want [%s]", got, tc.service)
			}
			if got := r.requests(tc.rpc, codes.OK) - ok; got != 1 {
				t.Errorf("requests_total{rpc=%q,code=OK} grew by %v, want 1", tc.rpc, got)
			}
			if got := testutil.ToFloat64(r.metrics.received.WithLabelValues(tc.rpc)); got <= 0 {
				t.Errorf("received_bytes_total{rpc=%q} = %v", tc.rpc, got)
			}
		})
	}
	t.Run("a Watch reaches Watch and its messages flow both ways", func(t *testing.T) {
		stream, err := pb.NewWatchClient(r.conn).Watch(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte("a")}}}); err != nil {
			t.Fatal(err)
		}
		if got := receive(t, r.watched, "watch request"); string(got.GetCreateRequest().GetKey()) != "a" {
			t.Errorf("Watch got %v", got)
		}
		if resp, err := stream.Recv(); err != nil || !resp.Created {
			t.Errorf("Recv = %v, %v", resp, err)
		}
	})
}

func TestRPCsOffTheAllowlistAreDenied(t *testing.T) {
	kv := func(r *rig) pb.KVClient { return pb.NewKVClient(r.conn) }
	lease := func(r *rig) pb.LeaseClient { return pb.NewLeaseClient(r.conn) }
	maintenance := func(r *rig) pb.MaintenanceClient { return pb.NewMaintenanceClient(r.conn) }
	for _, tc := range []struct {
		name, method string
		call         func(ctx context.Context, r *rig) error
	}{
		{"Compact, of the registered KV service, is denied", "/etcdserverpb.KV/Compact", func(ctx context.Context, r *rig) error {
			_, err := kv(r).Compact(ctx, &pb.CompactionRequest{Revision: 1})
			return err
		}},
		{"LeaseRevoke, of the registered Lease service, is denied", "/etcdserverpb.Lease/LeaseRevoke", func(ctx context.Context, r *rig) error {
			_, err := lease(r).LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: 1})
			return err
		}},
		{"LeaseKeepAlive, a stream of the registered Lease service, is denied", "/etcdserverpb.Lease/LeaseKeepAlive", func(ctx context.Context, r *rig) error {
			stream, err := lease(r).LeaseKeepAlive(ctx)
			if err != nil {
				return err
			}
			_ = stream.Send(&pb.LeaseKeepAliveRequest{ID: 1})
			_, err = stream.Recv()
			return err
		}},
		{"Snapshot, a server stream of the registered Maintenance service, is denied", "/etcdserverpb.Maintenance/Snapshot", func(ctx context.Context, r *rig) error {
			stream, err := maintenance(r).Snapshot(ctx, &pb.SnapshotRequest{})
			if err != nil {
				return err
			}
			_, err = stream.Recv()
			return err
		}},
		{"Defragment, of the registered Maintenance service, is denied", "/etcdserverpb.Maintenance/Defragment", func(ctx context.Context, r *rig) error {
			_, err := maintenance(r).Defragment(ctx, &pb.DefragmentRequest{})
			return err
		}},
		{"Cluster/MemberList, of an unregistered service, is denied", "/etcdserverpb.Cluster/MemberList", func(ctx context.Context, r *rig) error {
			_, err := pb.NewClusterClient(r.conn).MemberList(ctx, &pb.MemberListRequest{})
			return err
		}},
		{"Auth/UserList, of an unregistered service, is denied", "/etcdserverpb.Auth/UserList", func(ctx context.Context, r *rig) error {
			_, err := pb.NewAuthClient(r.conn).UserList(ctx, &pb.AuthUserListRequest{})
			return err
		}},
		{"Auth/Authenticate is denied", "/etcdserverpb.Auth/Authenticate", func(ctx context.Context, r *rig) error {
			_, err := pb.NewAuthClient(r.conn).Authenticate(ctx, &pb.AuthenticateRequest{Name: "root", Password: "x"})
			return err
		}},
		{"v3electionpb.Election/Campaign is denied", "/v3electionpb.Election/Campaign", func(ctx context.Context, r *rig) error {
			return unaryCall(ctx, r.conn, "/v3electionpb.Election/Campaign", &pb.RangeRequest{Key: []byte("/registry/x")})
		}},
		{"v3electionpb.Election/Observe, a stream, is denied", "/v3electionpb.Election/Observe", func(ctx context.Context, r *rig) error {
			return streamCall(ctx, r.conn, "/v3electionpb.Election/Observe", &pb.RangeRequest{Key: []byte("x")})
		}},
		{"v3lockpb.Lock/Lock is denied", "/v3lockpb.Lock/Lock", func(ctx context.Context, r *rig) error {
			return unaryCall(ctx, r.conn, "/v3lockpb.Lock/Lock", &pb.RangeRequest{Key: []byte("x")})
		}},
		{"a method of an unknown service is denied", "/etcdstorage.Nothing/Here", func(ctx context.Context, r *rig) error {
			return unaryCall(ctx, r.conn, "/etcdstorage.Nothing/Here", &pb.RangeRequest{})
		}},
		{"an unknown method of the KV service is denied", "/etcdserverpb.KV/Nothing", func(ctx context.Context, r *rig) error {
			return unaryCall(ctx, r.conn, "/etcdserverpb.KV/Nothing", &pb.RangeRequest{})
		}},
		{"a path that climbs from Range to Snapshot is denied", "/etcdserverpb.KV/Range/../../etcdserverpb.Maintenance/Snapshot", func(ctx context.Context, r *rig) error {
			return unaryCall(ctx, r.conn, "/etcdserverpb.KV/Range/../../etcdserverpb.Maintenance/Snapshot", &pb.SnapshotRequest{})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			err := tc.call(t.Context(), r)
			wantStatus(t, err, codes.PermissionDenied, policy.Denied(tc.method).Error())
			if got := r.services.got(); len(got) != 0 {
				t.Errorf("the services got %v", got)
			}
			if got := r.refusals(policy.RPCNotAllowed); got != 1 {
				t.Errorf("refusals_total{reason=%q} = %v, want 1", policy.RPCNotAllowed, got)
			}
			// A tenant names the methods: they are all one label value, not one each.
			if got := r.requests(otherRPC, codes.PermissionDenied); got != 1 {
				t.Errorf("requests_total{rpc=%q,code=PermissionDenied} = %v, want 1", otherRPC, got)
			}
			if got := testutil.CollectAndCount(r.metrics.requests); got != 1 {
				t.Errorf("requests_total has %d series, want 1", got)
			}
			logged := r.log.String()
			if !strings.Contains(logged, `"msg":"request refused"`) || !strings.Contains(logged, string(policy.RPCNotAllowed)) {
				t.Errorf("the refusal was not logged: %s", logged)
			}
		})
	}
}

func TestRequestsThatFailTheirCheckAreRefused(t *testing.T) {
	nested := &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestTxn{RequestTxn: &pb.TxnRequest{}}}}}
	for _, tc := range []struct {
		name   string
		call   func(ctx context.Context, r *rig) error
		reason policy.Reason
		code   codes.Code
	}{
		{"a nested Txn is refused with INVALID_ARGUMENT", func(ctx context.Context, r *rig) error {
			_, err := pb.NewKVClient(r.conn).Txn(ctx, nested)
			return err
		}, policy.NestedTxn, codes.InvalidArgument},
		{"a Txn over the operation limit is refused with RESOURCE_EXHAUSTED", func(ctx context.Context, r *rig) error {
			ops := make([]*pb.RequestOp, testLimits.MaxTxnOps+1)
			for i := range ops {
				ops[i] = &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte("a")}}}
			}
			_, err := pb.NewKVClient(r.conn).Txn(ctx, &pb.TxnRequest{Success: ops})
			return err
		}, policy.TooManyOps, codes.ResourceExhausted},
		{"a Txn that reads back more keys than the limit is refused with RESOURCE_EXHAUSTED", func(ctx context.Context, r *rig) error {
			get := &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("a")}}}
			_, err := pb.NewKVClient(r.conn).Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{get, get}, Failure: []*pb.RequestOp{get}})
			return err
		}, policy.TooManyReads, codes.ResourceExhausted},
		{"a Put over the size limit is refused with RESOURCE_EXHAUSTED", func(ctx context.Context, r *rig) error {
			_, err := pb.NewKVClient(r.conn).Put(ctx, &pb.PutRequest{Key: []byte("a"), Value: make([]byte, testLimits.MaxRequestBytes)})
			return err
		}, policy.RequestTooLarge, codes.ResourceExhausted},
		{"a LeaseGrant with a chosen ID is refused", func(ctx context.Context, r *rig) error {
			_, err := pb.NewLeaseClient(r.conn).LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: 42, TTL: 60})
			return err
		}, policy.ChosenLeaseID, codes.InvalidArgument},
		{"a Range with an unknown sort order is refused", func(ctx context.Context, r *rig) error {
			_, err := pb.NewKVClient(r.conn).Range(ctx, &pb.RangeRequest{Key: []byte("a"), SortOrder: 7})
			return err
		}, policy.UnknownValue, codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			err := tc.call(t.Context(), r)
			if st := status.Convert(err); st.Code() != tc.code || !strings.HasPrefix(st.Message(), "etcdstorage tenant proxy: ") {
				t.Errorf("status = %v %q, want %v from the proxy", st.Code(), st.Message(), tc.code)
			}
			if got := r.services.got(); len(got) != 0 {
				t.Errorf("the services got %v", got)
			}
			if got := r.refusals(tc.reason); got != 1 {
				t.Errorf("refusals_total{reason=%q} = %v, want 1", tc.reason, got)
			}
		})
	}
}

func TestAWatchMessageThatFailsItsCheckEndsTheStream(t *testing.T) {
	for _, tc := range []struct {
		name    string
		message *pb.WatchRequest
		reason  policy.Reason
	}{
		{"a watch request with no request ends the stream with INVALID_ARGUMENT", &pb.WatchRequest{}, policy.EmptyWatchRequest},
		{"a watch with an unknown filter ends the stream with INVALID_ARGUMENT", &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{
			CreateRequest: &pb.WatchCreateRequest{Key: []byte("a"), Filters: []pb.WatchCreateRequest_FilterType{9}},
		}}, policy.UnknownValue},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			stream, err := pb.NewWatchClient(r.conn).Watch(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			good := &pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}}
			if err := stream.Send(good); err != nil {
				t.Fatal(err)
			}
			receive(t, r.watched, "the first request at the service")
			if _, err := stream.Recv(); err != nil {
				t.Fatal(err)
			}
			if err := stream.Send(tc.message); err != nil {
				t.Fatal(err)
			}
			_, err = stream.Recv()
			if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), "etcdstorage tenant proxy: ") {
				t.Errorf("status = %v %q, want InvalidArgument from the proxy", st.Code(), st.Message())
			}
			select {
			case got := <-r.watched:
				t.Errorf("the service got the refused message %v", got)
			default:
			}
			if got := r.refusals(tc.reason); got != 1 {
				t.Errorf("refusals_total{reason=%q} = %v, want 1", tc.reason, got)
			}
		})
	}
}

func TestAPanicIsAnInternalErrorOfThatCallAlone(t *testing.T) {
	r := newRig(t)
	kv := pb.NewKVClient(r.conn)
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"a panicking unary service answers INTERNAL and is counted", func(t *testing.T) {
			_, err := kv.Put(t.Context(), &pb.PutRequest{Key: []byte("a")})
			wantStatus(t, err, codes.Internal, "etcdstorage tenant proxy: internal error (logged)")
			if got := testutil.ToFloat64(r.metrics.panics); got != 1 {
				t.Errorf("panics_total = %v, want 1", got)
			}
			if !strings.Contains(r.log.String(), "a bug in Put") {
				t.Errorf("the panic was not logged: %s", r.log.String())
			}
		}},
		{"the server keeps serving the next call", func(t *testing.T) {
			if _, err := kv.Range(t.Context(), &pb.RangeRequest{Key: []byte("a")}); err != nil {
				t.Errorf("Range after the panic: %v", err)
			}
		}},
		{"a panic in Range is counted too", func(t *testing.T) {
			_, err := kv.Range(t.Context(), &pb.RangeRequest{Key: []byte(keyPanic)})
			wantStatus(t, err, codes.Internal, "")
			if got := testutil.ToFloat64(r.metrics.panics); got != 2 {
				t.Errorf("panics_total = %v, want 2", got)
			}
		}},
		{"a panicking stream answers INTERNAL and is counted", func(t *testing.T) {
			stream, err := pb.NewWatchClient(r.conn).Watch(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte(keyPanic)}}}); err != nil {
				t.Fatal(err)
			}
			_, err = stream.Recv()
			wantStatus(t, err, codes.Internal, "etcdstorage tenant proxy: internal error (logged)")
			if got := testutil.ToFloat64(r.metrics.panics); got != 3 {
				t.Errorf("panics_total = %v, want 3", got)
			}
			receive(t, r.watched, "the request at the service")
		}},
		{"the server keeps serving streams", func(t *testing.T) {
			stream, err := pb.NewWatchClient(r.conn).Watch(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte("a")}}}); err != nil {
				t.Fatal(err)
			}
			if _, err := stream.Recv(); err != nil {
				t.Errorf("Recv after the panic: %v", err)
			}
		}},
	}
	for _, step := range steps {
		if !t.Run(step.name, step.run) {
			break
		}
	}
}

func TestMetricsOfTheCoresFailures(t *testing.T) {
	const rangeRPC = "/etcdserverpb.KV/Range"
	for _, tc := range []struct {
		name     string
		call     func(ctx context.Context, r *rig) error
		code     codes.Code
		upstream float64 // the growth of upstream_errors_total{rpc, code}
	}{
		{"an unreachable core is counted as an upstream error", func(ctx context.Context, r *rig) error {
			_, err := pb.NewKVClient(r.conn).Range(ctx, &pb.RangeRequest{Key: []byte(keyUnavailable)})
			return err
		}, codes.Unavailable, 1},
		{"an error of the request (compacted) is not an upstream error", func(ctx context.Context, r *rig) error {
			_, err := pb.NewKVClient(r.conn).Range(ctx, &pb.RangeRequest{Key: []byte(keyCompacted)})
			return err
		}, codes.OutOfRange, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			wantStatus(t, tc.call(t.Context(), r), tc.code, "")
			if got := testutil.ToFloat64(r.metrics.upstreamErrors.WithLabelValues(rangeRPC, tc.code.String())); got != tc.upstream {
				t.Errorf("upstream_errors_total = %v, want %v", got, tc.upstream)
			}
			if got := r.requests(rangeRPC, tc.code); got != 1 {
				t.Errorf("requests_total{code=%v} = %v, want 1", tc.code, got)
			}
		})
	}
	t.Run("a watch ended because the proxy stops is not an upstream error", func(t *testing.T) {
		r := newRig(t)
		stream, err := pb.NewWatchClient(r.conn).Watch(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte(keyStop)}}}); err != nil {
			t.Fatal(err)
		}
		_, err = stream.Recv()
		wantStatus(t, err, codes.Unavailable, status.Convert(tenant.ErrStopping).Message())
		if got := testutil.CollectAndCount(r.metrics.upstreamErrors); got != 0 {
			t.Errorf("upstream_errors_total has %d series, want none", got)
		}
	})
}

func TestWatchStreamsAreCounted(t *testing.T) {
	r := newRig(t)
	open := func() float64 { return testutil.ToFloat64(r.metrics.watchStreams) }
	stream, err := pb.NewWatchClient(r.conn).Watch(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}}); err != nil {
		t.Fatal(err)
	}
	receive(t, r.watched, "the request at the service")
	if got := open(); got != 1 {
		t.Errorf("watch_streams = %v while one is open, want 1", got)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := stream.Recv(); err != nil {
			break
		}
	}
	eventually(t, "watch_streams back to 0", func() bool { return open() == 0 })
}

func TestAnsweredRPCsMakeTheProxyReady(t *testing.T) {
	r := newRig(t)
	probes := 0
	r.health.Probe = func(context.Context) error { probes++; return errors.New("the core does not answer") }
	readyz := func() int { return get(t, r.health.Handler(), "/readyz").Code }
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"before any answer, a failing probe makes the proxy unready", func(t *testing.T) {
			if code := readyz(); code != 503 || probes != 1 {
				t.Errorf("/readyz = %d after %d probes, want 503 after 1", code, probes)
			}
		}},
		{"a refused request is no answer of the core", func(t *testing.T) {
			_, err := pb.NewKVClient(r.conn).Compact(t.Context(), &pb.CompactionRequest{})
			wantStatus(t, err, codes.PermissionDenied, "")
			if code := readyz(); code != 503 {
				t.Errorf("/readyz = %d, want 503", code)
			}
		}},
		{"a watch stream that ends well is no answer of the core", func(t *testing.T) {
			stream, err := pb.NewWatchClient(r.conn).Watch(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			_ = stream.CloseSend()
			if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
				t.Fatalf("Recv = %v, want the stream's clean end", err)
			}
			if r.health.lastSuccess.Load() != 0 {
				t.Errorf("the watch counted as an answer of the core")
			}
		}},
		{"after an answered RPC the proxy is ready without probing", func(t *testing.T) {
			if _, err := pb.NewKVClient(r.conn).Range(t.Context(), &pb.RangeRequest{Key: []byte("a")}); err != nil {
				t.Fatal(err)
			}
			before := probes
			if code := readyz(); code != 200 || probes != before {
				t.Errorf("/readyz = %d after %d more probes, want 200 after none", code, probes-before)
			}
		}},
	}
	for _, step := range steps {
		if !t.Run(step.name, step.run) {
			break
		}
	}
}
