package tenant

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"etcdstorage.local/tenant-proxy/internal/policy"
)

// wait is how long a test waits for something that happens at once in a working proxy.
const wait = 10 * time.Second

// receive is the next value of ch, or the test fails after wait.
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

// closed fails the test unless ch is closed within wait.
func closed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(wait):
		t.Fatalf("%s did not happen within %v", what, wait)
	}
}

// --- the core etcd: a scripted Watch service ---

type fakeCore struct {
	pb.UnimplementedWatchServer
	streams chan *coreStream
}

// coreStream is one Watch stream the proxy opened to the core.
type coreStream struct {
	md        metadata.MD
	requests  chan *pb.WatchRequest // every request the proxy sent, in order
	eof       chan struct{}         // closed when the proxy closed its sending side
	responses chan *pb.WatchResponse
	end       chan error    // the core ends the stream with this
	done      chan struct{} // closed when the stream ended, whoever ended it
}

func (c *fakeCore) Watch(stream pb.Watch_WatchServer) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	s := &coreStream{
		md: md, requests: make(chan *pb.WatchRequest, 100), eof: make(chan struct{}),
		responses: make(chan *pb.WatchResponse), end: make(chan error, 1), done: make(chan struct{}),
	}
	defer close(s.done)
	c.streams <- s
	go func() {
		for {
			request, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				close(s.eof)
				return
			}
			if err != nil {
				return
			}
			s.requests <- request
		}
	}()
	for {
		select {
		case response := <-s.responses:
			if err := stream.Send(response); err != nil {
				return err
			}
		case err := <-s.end:
			return err
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
	}
}

func (s *coreStream) next(t *testing.T) *pb.WatchRequest {
	t.Helper()
	return receive(t, s.requests, "request at the core")
}

func (s *coreStream) send(t *testing.T, response *pb.WatchResponse) {
	t.Helper()
	select {
	case s.responses <- response:
	case <-s.done:
		t.Fatalf("the core's stream ended before it could answer")
	case <-time.After(wait):
		t.Fatalf("the core could not answer within %v", wait)
	}
}

// --- the rig: tenant client → tenant.Watch → core ---

type watchRig struct {
	core     *fakeCore
	client   pb.WatchClient
	stopping chan struct{}
	ended    chan error // what the tenant Watch handler returned, per stream
}

// serve starts a gRPC server on an in-memory listener and returns a connection to it.
func serve(t *testing.T, register func(*grpc.Server), opts ...grpc.ServerOption) *grpc.ClientConn {
	t.Helper()
	listener := bufconn.Listen(1 << 20)
	server := grpc.NewServer(opts...)
	register(server)
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
	return conn
}

func newWatchRig(t *testing.T, limits policy.Limits) *watchRig {
	t.Helper()
	rig := &watchRig{
		core:     &fakeCore{streams: make(chan *coreStream, 10)},
		stopping: make(chan struct{}),
		ended:    make(chan error, 10),
	}
	coreConn := serve(t, func(s *grpc.Server) { pb.RegisterWatchServer(s, rig.core) })
	watch := NewWatch(pb.NewWatchClient(coreConn), testPrefix, limits, rig.stopping)
	record := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		err := handler(srv, ss)
		rig.ended <- err
		return err
	}
	tenantConn := serve(t, func(s *grpc.Server) { pb.RegisterWatchServer(s, watch) }, grpc.StreamInterceptor(record))
	rig.client = pb.NewWatchClient(tenantConn)
	return rig
}

// open opens a tenant stream and returns it with the core's side of it (the proxy opens one per tenant stream).
func (rig *watchRig) open(t *testing.T, ctx context.Context) (pb.Watch_WatchClient, *coreStream) {
	t.Helper()
	stream, err := rig.client.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A first request makes sure the stream, and so the proxy's own stream to the core, exists.
	if err := stream.Send(progress()); err != nil {
		t.Fatal(err)
	}
	core := receive(t, rig.core.streams, "stream at the core")
	if got := core.next(t); got.GetProgressRequest() == nil {
		t.Fatalf("the core got %v, want the progress request", got)
	}
	return stream, core
}

func create(r *pb.WatchCreateRequest) *pb.WatchRequest {
	return &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: r}}
}

func cancelWatch(id int64) *pb.WatchRequest {
	return &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: id}}}
}

func progress() *pb.WatchRequest {
	return &pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}}
}

// recvResult is one Recv of a tenant's stream, in a goroutine of its own so that a test can wait with a deadline.
type recvResult struct {
	response *pb.WatchResponse
	err      error
}

func recv(stream pb.Watch_WatchClient) <-chan recvResult {
	ch := make(chan recvResult, 1)
	go func() {
		response, err := stream.Recv()
		ch <- recvResult{response, err}
	}()
	return ch
}

// recvResponse is the tenant's next response; recvError the error that ends its stream.
func recvResponse(t *testing.T, stream pb.Watch_WatchClient) *pb.WatchResponse {
	t.Helper()
	r := receive(t, recv(stream), "response at the tenant")
	if r.err != nil {
		t.Fatalf("the tenant's stream ended: %v", r.err)
	}
	return r.response
}

func recvError(t *testing.T, stream pb.Watch_WatchClient) error {
	t.Helper()
	for {
		r := receive(t, recv(stream), "end of the tenant's stream")
		if r.err != nil {
			return r.err
		}
	}
}

func wantStatus(t *testing.T, err error, code codes.Code, message string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != code || message != "" && st.Message() != message {
		t.Errorf("status = %v %q, want %v %q", st.Code(), st.Message(), code, message)
	}
}

func TestWatchCreateRequestsAreMovedUnderThePrefix(t *testing.T) {
	const p = string(testPrefix)
	rig := newWatchRig(t, policy.DefaultLimits)
	// The test fails when etcd adds a field to WatchCreateRequest that the proxy does not carry.
	everyField := &pb.WatchCreateRequest{
		Key: []byte("k"), RangeEnd: []byte("l"), StartRevision: 1234, ProgressNotify: true,
		Filters: []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NOPUT, pb.WatchCreateRequest_NODELETE},
		PrevKv:  true, WatchId: 42, Fragment: true,
	}
	allFieldsSet(t, everyField)
	for _, tc := range []struct {
		name      string
		request   *pb.WatchCreateRequest
		forwarded *pb.WatchCreateRequest
	}{
		{"a watch of one key watches the key under the prefix",
			&pb.WatchCreateRequest{Key: []byte("/registry/a")},
			&pb.WatchCreateRequest{Key: []byte(p + "/registry/a")}},
		{"a watch of a range has both ends under the prefix",
			&pb.WatchCreateRequest{Key: []byte("/registry/pods/"), RangeEnd: []byte("/registry/pods0")},
			&pb.WatchCreateRequest{Key: []byte(p + "/registry/pods/"), RangeEnd: []byte(p + "/registry/pods0")}},
		{"a watch from a key on (range_end \\x00) stops at the end of the prefix",
			&pb.WatchCreateRequest{Key: []byte("/registry/"), RangeEnd: []byte{0}},
			&pb.WatchCreateRequest{Key: []byte(p + "/registry/"), RangeEnd: []byte("/t/alpha0")}},
		{"a watch of everything (\\x00 to \\x00) is a watch of the tenant's keys",
			&pb.WatchCreateRequest{Key: []byte{0}, RangeEnd: []byte{0}},
			&pb.WatchCreateRequest{Key: []byte(p + "\x00"), RangeEnd: []byte("/t/alpha0")}},
		{"every other field of a create passes unchanged",
			everyField,
			&pb.WatchCreateRequest{
				Key: []byte(p + "k"), RangeEnd: []byte(p + "l"), StartRevision: 1234, ProgressNotify: true,
				Filters: []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NOPUT, pb.WatchCreateRequest_NODELETE},
				PrevKv:  true, WatchId: 42, Fragment: true,
			}},
		{"an unknown field of a create does not travel",
			&pb.WatchCreateRequest{Key: []byte("k"), XXX_unrecognized: unknownField},
			&pb.WatchCreateRequest{Key: []byte(p + "k")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stream, core := rig.open(t, t.Context())
			if err := stream.Send(create(tc.request)); err != nil {
				t.Fatal(err)
			}
			sameMessage(t, core.next(t), create(tc.forwarded))
		})
	}
}

func TestWatchCancelAndProgressRequestsPass(t *testing.T) {
	rig := newWatchRig(t, policy.DefaultLimits)
	for _, tc := range []struct {
		name      string
		request   *pb.WatchRequest
		forwarded *pb.WatchRequest
	}{
		{"a cancel passes with its watch ID", cancelWatch(7), cancelWatch(7)},
		{"a cancel of watch 0 passes", cancelWatch(0), cancelWatch(0)},
		{"a progress request passes", progress(), progress()},
		{"an unknown field of a cancel does not travel",
			&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: 3, XXX_unrecognized: unknownField}}},
			cancelWatch(3)},
		{"an unknown field of a watch request does not travel",
			&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{XXX_unrecognized: unknownField}}, XXX_unrecognized: unknownField},
			progress()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stream, core := rig.open(t, t.Context())
			if err := stream.Send(tc.request); err != nil {
				t.Fatal(err)
			}
			sameMessage(t, core.next(t), tc.forwarded)
		})
	}
}

func event(kind mvccpb.Event_EventType, key, prev string) *mvccpb.Event {
	e := &mvccpb.Event{Type: kind, Kv: &mvccpb.KeyValue{Key: []byte(key), Value: []byte("v"), CreateRevision: 2, ModRevision: 5, Version: 3, Lease: 9}}
	if prev != "" {
		e.PrevKv = &mvccpb.KeyValue{Key: []byte(prev), Value: []byte("old"), CreateRevision: 2, ModRevision: 4, Version: 2}
	}
	return e
}

func TestWatchResponsesLoseThePrefix(t *testing.T) {
	const p = string(testPrefix)
	rig := newWatchRig(t, policy.DefaultLimits)
	for _, tc := range []struct {
		name           string
		core, expected *pb.WatchResponse
	}{
		{"a put event's key loses the prefix",
			&pb.WatchResponse{Header: header, WatchId: 1, Events: []*mvccpb.Event{event(mvccpb.PUT, p+"a", "")}},
			&pb.WatchResponse{Header: header, WatchId: 1, Events: []*mvccpb.Event{event(mvccpb.PUT, "a", "")}}},
		{"a delete event's key and prev_kv key lose the prefix",
			&pb.WatchResponse{Header: header, WatchId: 1, Events: []*mvccpb.Event{event(mvccpb.DELETE, p+"a", p+"a")}},
			&pb.WatchResponse{Header: header, WatchId: 1, Events: []*mvccpb.Event{event(mvccpb.DELETE, "a", "a")}}},
		{"every event of a response loses the prefix",
			&pb.WatchResponse{Header: header, WatchId: 2, Fragment: true, Events: []*mvccpb.Event{
				event(mvccpb.PUT, p+"a", p+"a"), event(mvccpb.PUT, p+"b/c", ""), event(mvccpb.DELETE, p+"d", p+"d")}},
			&pb.WatchResponse{Header: header, WatchId: 2, Fragment: true, Events: []*mvccpb.Event{
				event(mvccpb.PUT, "a", "a"), event(mvccpb.PUT, "b/c", ""), event(mvccpb.DELETE, "d", "d")}}},
		{"a created response passes unchanged",
			&pb.WatchResponse{Header: header, WatchId: 3, Created: true},
			&pb.WatchResponse{Header: header, WatchId: 3, Created: true}},
		{"a progress notification passes unchanged",
			&pb.WatchResponse{Header: header, WatchId: -1},
			&pb.WatchResponse{Header: header, WatchId: -1}},
		{"a compaction, with its revision and reason, passes unchanged",
			&pb.WatchResponse{Header: header, WatchId: 4, Canceled: true, CompactRevision: 77, CancelReason: "mvcc: required revision has been compacted"},
			&pb.WatchResponse{Header: header, WatchId: 4, Canceled: true, CompactRevision: 77, CancelReason: "mvcc: required revision has been compacted"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stream, core := rig.open(t, t.Context())
			core.send(t, tc.core)
			sameMessage(t, recvResponse(t, stream), tc.expected)
		})
	}
}

func TestWatchEndsTheStreamOnAKeyOutsideThePrefix(t *testing.T) {
	const p = string(testPrefix)
	rig := newWatchRig(t, policy.DefaultLimits)
	for _, tc := range []struct {
		name   string
		events []*mvccpb.Event
	}{
		{"an event key of another tenant ends the stream", []*mvccpb.Event{event(mvccpb.PUT, "/t/beta/secret", "")}},
		{"an event key shorter than the prefix ends the stream", []*mvccpb.Event{event(mvccpb.PUT, "/t", "")}},
		{"a prev_kv key outside ends the stream", []*mvccpb.Event{event(mvccpb.DELETE, p+"a", "/core/secret")}},
		{"a key outside after good events ends the stream, and none of it reaches the tenant",
			[]*mvccpb.Event{event(mvccpb.PUT, p+"a", ""), event(mvccpb.PUT, "/t/alphabet", "")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stream, core := rig.open(t, t.Context())
			core.send(t, &pb.WatchResponse{Header: header, WatchId: 1, Events: tc.events})
			// The first thing the tenant gets is the end of its stream: no response, so no foreign key.
			r := receive(t, recv(stream), "end of the tenant's stream")
			if r.err == nil {
				t.Fatalf("the tenant got %v", r.response)
			}
			wantStatus(t, r.err, codes.Internal, status.Convert(errOutside).Message())
			closed(t, core.done, "the end of the core's stream")
		})
	}
}

func TestWatchLimitsTheWatchesOfAStream(t *testing.T) {
	const limit = 2
	limits := policy.Limits{MaxRequestBytes: 1 << 20, MaxTxnOps: 128, MaxWatchesPerStream: limit}
	watchOf := func(key string) *pb.WatchRequest { return create(&pb.WatchCreateRequest{Key: []byte(key)}) }
	const refused = "refused"

	for _, tc := range []struct {
		name string
		// before opens watches (and cancels some) on the stream; the create of "refused" follows.
		before func(t *testing.T, stream pb.Watch_WatchClient, core *coreStream)
		passes bool // whether the create of "refused" reaches the core after all
	}{
		{"the watch over the limit is refused alone, as etcd refuses a create", func(t *testing.T, stream pb.Watch_WatchClient, core *coreStream) {
			forward(t, stream, core, watchOf("a"))
			forward(t, stream, core, watchOf("b"))
		}, false},
		{"a watch the core canceled makes room for another", func(t *testing.T, stream pb.Watch_WatchClient, core *coreStream) {
			forward(t, stream, core, watchOf("a"))
			forward(t, stream, core, watchOf("b"))
			core.send(t, &pb.WatchResponse{Header: header, WatchId: 0, Canceled: true})
			recvResponse(t, stream) // once the tenant has the cancel, the proxy counted it
		}, true},
		{"a create the core refused (created and canceled at once) makes room for another", func(t *testing.T, stream pb.Watch_WatchClient, core *coreStream) {
			forward(t, stream, core, watchOf("a"))
			core.send(t, &pb.WatchResponse{Header: header, WatchId: -1, Created: true, Canceled: true, CancelReason: "mvcc: required revision is a future revision"})
			recvResponse(t, stream)
			forward(t, stream, core, watchOf("b"))
		}, true},
		{"a canceled watch counts once only", func(t *testing.T, stream pb.Watch_WatchClient, core *coreStream) {
			forward(t, stream, core, watchOf("a"))
			forward(t, stream, core, watchOf("b"))
			core.send(t, &pb.WatchResponse{Header: header, WatchId: 0, Canceled: true})
			recvResponse(t, stream)
			forward(t, stream, core, watchOf("c"))
		}, false},
		{"cancel and progress requests do not count", func(t *testing.T, stream pb.Watch_WatchClient, core *coreStream) {
			forward(t, stream, core, progress())
			forward(t, stream, core, cancelWatch(5))
			forward(t, stream, core, watchOf("a"))
			forward(t, stream, core, progress())
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rig := newWatchRig(t, limits)
			stream, core := rig.open(t, t.Context())
			tc.before(t, stream, core)
			if err := stream.Send(watchOf(refused)); err != nil {
				t.Fatal(err)
			}
			if tc.passes {
				sameMessage(t, core.next(t), watchOf(string(testPrefix)+refused))
				return
			}
			refused := recvResponse(t, stream)
			want := limits.WatchesExhausted().Error()
			if !refused.Created || !refused.Canceled || refused.WatchId != -1 || refused.CancelReason != want || refused.Header == nil {
				t.Errorf("the refused create was answered %v, want created and canceled, watch ID -1, reason %q", refused, want)
			}
			// The stream goes on: its other watches stay, and the next request reaches the core.
			forward(t, stream, core, progress())
			for len(core.requests) > 0 {
				if request := <-core.requests; request.GetCreateRequest() != nil {
					t.Errorf("the refused create reached the core: %v", request)
				}
			}
		})
	}

	t.Run("each stream has a limit of its own", func(t *testing.T) {
		rig := newWatchRig(t, limits)
		for range 2 {
			stream, core := rig.open(t, t.Context())
			forward(t, stream, core, watchOf("a"))
			forward(t, stream, core, watchOf("b"))
		}
	})
}

// forward sends a request on the tenant's stream and waits until the core has it.
func forward(t *testing.T, stream pb.Watch_WatchClient, core *coreStream, request *pb.WatchRequest) {
	t.Helper()
	if err := stream.Send(request); err != nil {
		t.Fatal(err)
	}
	core.next(t)
}

func TestWatchEndsOpenStreamsWhenTheProxyStops(t *testing.T) {
	t.Run("closing stopping ends an open stream with UNAVAILABLE", func(t *testing.T) {
		rig := newWatchRig(t, policy.DefaultLimits)
		stream, core := rig.open(t, t.Context())
		forward(t, stream, core, create(&pb.WatchCreateRequest{Key: []byte("a")}))
		close(rig.stopping)
		wantStatus(t, recvError(t, stream), codes.Unavailable, status.Convert(ErrStopping).Message())
		closed(t, core.done, "the end of the core's stream")
	})
	t.Run("a stream opened after stopping ends at once with UNAVAILABLE", func(t *testing.T) {
		rig := newWatchRig(t, policy.DefaultLimits)
		close(rig.stopping)
		stream, err := rig.client.Watch(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		wantStatus(t, recvError(t, stream), codes.Unavailable, status.Convert(ErrStopping).Message())
	})
}

func TestWatchKeepsTheStreamWhenTheTenantClosesItsSide(t *testing.T) {
	const p = string(testPrefix)
	rig := newWatchRig(t, policy.DefaultLimits)
	stream, core := rig.open(t, t.Context())
	forward(t, stream, core, create(&pb.WatchCreateRequest{Key: []byte("a")}))
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	closed(t, core.eof, "the proxy's CloseSend to the core")
	core.send(t, &pb.WatchResponse{Header: header, Events: []*mvccpb.Event{event(mvccpb.PUT, p+"a", "")}})
	sameMessage(t, recvResponse(t, stream), &pb.WatchResponse{Header: header, Events: []*mvccpb.Event{event(mvccpb.PUT, "a", "")}})
	// The core ending the stream cleanly is still an end the tenant must retry.
	core.end <- nil
	wantStatus(t, recvError(t, stream), codes.Unavailable, "etcdstorage tenant proxy: the core etcd closed the watch stream")
}

func TestWatchPassesTheCoresErrors(t *testing.T) {
	rig := newWatchRig(t, policy.DefaultLimits)
	for _, tc := range []struct {
		name string
		core error
	}{
		{"no leader at the core ends the stream as etcd ends it", rpctypes.ErrGRPCNoLeader},
		{"a permission error of the core ends the stream as etcd ends it", rpctypes.ErrGRPCPermissionDenied},
		{"any status of the core ends the stream with that status", status.Error(codes.ResourceExhausted, "too many requests")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stream, core := rig.open(t, t.Context())
			core.end <- tc.core
			want := status.Convert(tc.core)
			wantStatus(t, recvError(t, stream), want.Code(), want.Message())
		})
	}
}

func TestWatchSendsNoTenantMetadataUpstream(t *testing.T) {
	rig := newWatchRig(t, policy.DefaultLimits)
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer tenant-token", "x-tenant", "beta")
	_, core := rig.open(t, ctx)
	if got := core.md.Get("hasleader"); len(got) != 1 || got[0] != "true" {
		t.Errorf("hasleader = %q, want the leader required (%q)", got, rpctypes.MetadataHasLeader)
	}
	for _, key := range []string{"authorization", "x-tenant"} {
		if got := core.md.Get(key); len(got) != 0 {
			t.Errorf("the core got the tenant's %s: %q", key, got)
		}
	}
}

func TestWatchRefusesARequestThatWasNotChecked(t *testing.T) {
	rig := newWatchRig(t, policy.DefaultLimits)
	stream, _ := rig.open(t, t.Context())
	if err := stream.Send(&pb.WatchRequest{}); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, recvError(t, stream), codes.Internal, status.Convert(errUnchecked).Message())
}

func TestWatchEndsTheCoresStreamWithTheTenants(t *testing.T) {
	rig := newWatchRig(t, policy.DefaultLimits)
	ctx, cancel := context.WithCancel(t.Context())
	_, core := rig.open(t, ctx)
	cancel()
	closed(t, core.done, "the end of the core's stream")
	wantStatus(t, receive(t, rig.ended, "end of the handler"), codes.Canceled, "")
}
