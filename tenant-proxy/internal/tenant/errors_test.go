package tenant

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestUpstreamError(t *testing.T) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name    string
		ctx     context.Context
		err     error
		code    codes.Code
		message string // exact, or a part of it when partial
		partial bool
	}{
		// etcd's errors, as clientv3 turns them into rpctypes values: the status etcd itself sends.
		{"a compacted revision is the status etcd sends", context.Background(), rpctypes.ErrCompacted,
			status.Code(rpctypes.ErrGRPCCompacted), status.Convert(rpctypes.ErrGRPCCompacted).Message(), false},
		{"a future revision is the status etcd sends", context.Background(), rpctypes.ErrFutureRev,
			status.Code(rpctypes.ErrGRPCFutureRev), status.Convert(rpctypes.ErrGRPCFutureRev).Message(), false},
		{"no leader is the status etcd sends", context.Background(), rpctypes.ErrNoLeader,
			codes.Unavailable, status.Convert(rpctypes.ErrGRPCNoLeader).Message(), false},
		{"an empty key is the status etcd sends", context.Background(), rpctypes.ErrEmptyKey,
			codes.InvalidArgument, status.Convert(rpctypes.ErrGRPCEmptyKey).Message(), false},
		{"a lease not found is the status etcd sends", context.Background(), rpctypes.ErrLeaseNotFound,
			codes.NotFound, status.Convert(rpctypes.ErrGRPCLeaseNotFound).Message(), false},
		{"a wrapped etcd error is the status etcd sends", context.Background(), fmt.Errorf("get: %w", rpctypes.ErrCompacted),
			codes.OutOfRange, status.Convert(rpctypes.ErrGRPCCompacted).Message(), false},
		// Statuses pass as they are.
		{"a status passes as it is", context.Background(), status.Error(codes.Aborted, "aborted upstream"),
			codes.Aborted, "aborted upstream", false},
		{"a status of a canceled call passes as it is", canceled, status.Error(codes.Canceled, "context canceled"),
			codes.Canceled, "context canceled", false},
		// The caller's cancellation.
		{"context cancellation is CANCELED", context.Background(), context.Canceled, codes.Canceled, "context canceled", false},
		{"a passed deadline is DEADLINE_EXCEEDED", context.Background(), context.DeadlineExceeded,
			codes.DeadlineExceeded, "context deadline exceeded", false},
		{"a wrapped cancellation is CANCELED", context.Background(), fmt.Errorf("dial: %w", context.Canceled), codes.Canceled, "", true},
		{"any error of a canceled call is CANCELED", canceled, errors.New("connection closed"), codes.Canceled, "", true},
		// Everything else: the way to the core.
		{"any other error is UNAVAILABLE, naming it", context.Background(), errors.New("no available endpoints"),
			codes.Unavailable, "etcdstorage tenant proxy: the core etcd cannot be reached: no available endpoints", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := upstreamError(tc.ctx, tc.err)
			st, ok := status.FromError(err)
			if !ok {
				t.Fatalf("upstreamError = %v, not a status", err)
			}
			if st.Code() != tc.code {
				t.Errorf("code = %v, want %v (%q)", st.Code(), tc.code, st.Message())
			}
			if tc.partial && !strings.Contains(st.Message(), tc.message) || !tc.partial && st.Message() != tc.message {
				t.Errorf("message = %q, want %q", st.Message(), tc.message)
			}
		})
	}
}

func TestIsUpstreamFailure(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"UNAVAILABLE is the core's failure", status.Error(codes.Unavailable, ""), true},
		{"DEADLINE_EXCEEDED is the core's failure", status.Error(codes.DeadlineExceeded, ""), true},
		{"INTERNAL is the core's failure", errOutside, true},
		{"UNKNOWN is the core's failure", errors.New("plain"), true},
		{"no error is no failure", nil, false},
		{"OUT_OF_RANGE (compacted) is the request's", rpctypes.ErrGRPCCompacted, false},
		{"INVALID_ARGUMENT is the request's", rpctypes.ErrGRPCEmptyKey, false},
		{"CANCELED is the caller's", status.Error(codes.Canceled, ""), false},
		{"NOT_FOUND is the request's", rpctypes.ErrGRPCLeaseNotFound, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := IsUpstreamFailure(tc.err); got != tc.want {
				t.Errorf("IsUpstreamFailure(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}
