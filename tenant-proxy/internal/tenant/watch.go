package tenant

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"etcdstorage.local/tenant-proxy/internal/policy"
)

// ErrStopping ends every open watch stream when the proxy stops: UNAVAILABLE, which etcd clients retry at once
// on another endpoint, resuming from the last revision they saw.
// WatchMethod is the full gRPC method of the Watch service.
const WatchMethod = "/etcdserverpb.Watch/Watch"

var ErrStopping = status.Error(codes.Unavailable, "etcdstorage tenant proxy is shutting down: reconnect to another proxy")

// Watch serves the tenant's Watch service. Each client stream gets a stream of its own to the core etcd, so that
// etcd itself keeps every watch semantic (watch IDs, cancel, progress requests and notifications, fragments,
// filters, prev_kv, compaction errors); only keys change, under the prefix on the way in and out of it on the way
// back. Requests arrive checked (policy.Check); this bounds the watches open on a stream, which needs its state.
type Watch struct {
	upstream pb.WatchClient
	prefix   Prefix
	limits   policy.Limits
	stopping <-chan struct{}
	// Refused, when set, is told of a create refused inside a stream that goes on (for the metric and the log).
	Refused func(ctx context.Context, method string, refusal *policy.Refusal)
}

// NewWatch serves watches under prefix through upstream; a stream ends with ErrStopping once stopping is closed.
func NewWatch(upstream pb.WatchClient, prefix Prefix, limits policy.Limits, stopping <-chan struct{}) *Watch {
	return &Watch{upstream: upstream, prefix: prefix, limits: limits, stopping: stopping}
}

func (w *Watch) Watch(client pb.Watch_WatchServer) error {
	ctx, cancel := context.WithCancel(client.Context())
	defer cancel()
	// With a leader required, a core member cut off from its cluster ends the stream instead of going silent:
	// what kube-apiserver asks for its own watches. No metadata of the tenant's goes upstream.
	upstream, err := w.upstream.Watch(clientv3.WithRequireLeader(ctx))
	if err != nil {
		return upstreamError(ctx, err)
	}
	stream := &watchStream{Watch: w, client: client, upstream: upstream}
	errc := make(chan error, 2)
	go func() {
		defer recoverInto(errc)
		if err := stream.fromClient(); err != nil {
			errc <- err
		}
	}()
	go func() {
		defer recoverInto(errc)
		errc <- stream.toClient(ctx)
	}()
	select {
	case err = <-errc:
	case <-w.stopping:
		err = ErrStopping
	case <-ctx.Done():
		err = status.FromContextError(ctx.Err()).Err()
	}
	return err
}

type watchStream struct {
	*Watch
	client   pb.Watch_WatchServer
	upstream pb.Watch_WatchClient
	open     atomic.Int64                      // watches created and not yet canceled
	sending  sync.Mutex                        // both directions answer the client: one message at a time
	header   atomic.Pointer[pb.ResponseHeader] // the core's latest, for answers the proxy makes itself
}

// fromClient forwards the client's requests, rebuilt field by field (nothing unknown travels) with keys under the
// prefix. A client that closes its side keeps its watches, as with etcd: only the upstream side is closed.
func (s *watchStream) fromClient() error {
	for {
		request, err := s.client.Recv()
		if errors.Is(err, io.EOF) {
			return s.upstream.CloseSend()
		}
		if err != nil {
			return err
		}
		forward, err := s.rewrite(request)
		var refusal *policy.Refusal
		if errors.As(err, &refusal) && refusal.Reason == policy.TooManyWatches {
			if err := s.refuseCreate(refusal); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		if err := s.upstream.Send(forward); err != nil {
			return upstreamError(s.client.Context(), err)
		}
	}
}

func (s *watchStream) rewrite(request *pb.WatchRequest) (*pb.WatchRequest, error) {
	switch r := request.RequestUnion.(type) {
	case *pb.WatchRequest_CreateRequest:
		if r.CreateRequest == nil {
			break
		}
		if s.limits.MaxWatchesPerStream > 0 && s.open.Load() >= int64(s.limits.MaxWatchesPerStream) {
			return nil, s.limits.WatchesExhausted()
		}
		s.open.Add(1)
		create := r.CreateRequest
		key, end := s.prefix.interval(create.Key, create.RangeEnd)
		return &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{
			Key:            key,
			RangeEnd:       end,
			StartRevision:  create.StartRevision,
			ProgressNotify: create.ProgressNotify,
			Filters:        create.Filters,
			PrevKv:         create.PrevKv,
			WatchId:        create.WatchId,
			Fragment:       create.Fragment,
		}}}, nil
	case *pb.WatchRequest_CancelRequest:
		if r.CancelRequest != nil {
			return &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{
				CancelRequest: &pb.WatchCancelRequest{WatchId: r.CancelRequest.WatchId},
			}}, nil
		}
	case *pb.WatchRequest_ProgressRequest:
		if r.ProgressRequest != nil {
			return &pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{
				ProgressRequest: &pb.WatchProgressRequest{},
			}}, nil
		}
	}
	return nil, errUnchecked // policy.Check refuses empty requests before they get here
}

// refuseCreate answers a create over the limit as etcd answers a create it cannot make: created and canceled at
// once, with the reason, watch ID -1. The other watches of the stream go on.
func (s *watchStream) refuseCreate(refusal *policy.Refusal) error {
	if s.Refused != nil {
		s.Refused(s.client.Context(), WatchMethod, refusal)
	}
	header := s.header.Load()
	if header == nil {
		header = &pb.ResponseHeader{} // clients read the header of every response: never leave it out
	}
	return s.send(&pb.WatchResponse{
		Header:       header,
		WatchId:      clientv3.InvalidWatchID,
		Created:      true,
		Canceled:     true,
		CancelReason: refusal.Error(),
	})
}

func (s *watchStream) send(response *pb.WatchResponse) error {
	s.sending.Lock()
	defer s.sending.Unlock()
	return s.client.Send(response)
}

// toClient forwards the core's responses with the prefix taken off every key.
func (s *watchStream) toClient(ctx context.Context) error {
	for {
		response, err := s.upstream.Recv()
		if errors.Is(err, io.EOF) {
			return status.Error(codes.Unavailable, "etcdstorage tenant proxy: the core etcd closed the watch stream")
		}
		if err != nil {
			return upstreamError(ctx, err)
		}
		if response.Header != nil {
			s.header.Store(response.Header)
		}
		if response.Canceled {
			s.open.Add(-1)
		}
		for _, event := range response.Events {
			if err := s.prefix.stripKV(event.Kv); err != nil {
				return errOutside
			}
			if err := s.prefix.stripKV(event.PrevKv); err != nil {
				return errOutside
			}
		}
		if err := s.send(response); err != nil {
			return err
		}
	}
}

// recoverInto turns a panic of a stream's goroutine into an error of that stream alone: grpc-go recovers no panic,
// and one would end the process with every tenant connection.
func recoverInto(errc chan<- error) {
	if r := recover(); r != nil {
		errc <- status.Error(codes.Internal, fmt.Sprintf("etcdstorage tenant proxy: internal error: %v", r))
	}
}
