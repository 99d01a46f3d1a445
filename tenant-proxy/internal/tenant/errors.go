package tenant

import (
	"context"
	"errors"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var (
	// errUnchecked: a request reached a service without passing policy.Check (a bug of the proxy, not the tenant).
	errUnchecked = status.Error(codes.Internal, "etcdstorage tenant proxy: request was not checked")
	// errOutside: the core answered a key outside the prefix; the answer is dropped whole.
	errOutside = status.Error(codes.Internal, "etcdstorage tenant proxy: the core etcd answered a key outside this tenant's prefix")
)

// upstreamError is the status a tenant gets for a failed call to the core etcd: etcd's own errors as etcd sends them
// (clientv3 turns them into rpctypes values, which grpc-go cannot send), the caller's cancellation as such.
func upstreamError(ctx context.Context, err error) error {
	var etcdErr rpctypes.EtcdError
	if errors.As(err, &etcdErr) {
		return status.Error(etcdErr.Code(), etcdErr.Error())
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	if ctx.Err() != nil {
		return status.FromContextError(ctx.Err()).Err()
	}
	return status.Error(codes.Unavailable, "etcdstorage tenant proxy: the core etcd cannot be reached: "+err.Error())
}

// IsUpstreamFailure tells whether a call failed because of the core etcd or the way to it (for the metric of
// upstream errors), not because of the request.
func IsUpstreamFailure(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Internal, codes.Unknown:
		return true
	}
	return false
}
