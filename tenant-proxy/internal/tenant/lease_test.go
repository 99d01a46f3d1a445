package tenant

import (
	"context"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakeLeaseClient is the core's Lease service: LeaseGrant records its request; any other method panics (the
// embedded interface is nil), which is what the proxy must never call.
type fakeLeaseClient struct {
	pb.LeaseClient
	got  []*pb.LeaseGrantRequest
	resp *pb.LeaseGrantResponse
	err  error
}

func (f *fakeLeaseClient) LeaseGrant(_ context.Context, in *pb.LeaseGrantRequest, _ ...grpc.CallOption) (*pb.LeaseGrantResponse, error) {
	f.got = append(f.got, in)
	return f.resp, f.err
}

func TestLeaseGrant(t *testing.T) {
	answer := &pb.LeaseGrantResponse{Header: header, ID: 0x7f01, TTL: 60}
	for _, tc := range []struct {
		name    string
		request *pb.LeaseGrantRequest
		core    error
		want    *pb.LeaseGrantRequest
		code    codes.Code
	}{
		{"a grant reaches the core with its TTL", &pb.LeaseGrantRequest{TTL: 60}, nil, &pb.LeaseGrantRequest{TTL: 60}, codes.OK},
		{"a chosen ID, should policy ever let one through, never reaches the core",
			&pb.LeaseGrantRequest{TTL: 60, ID: 0x7f01}, nil, &pb.LeaseGrantRequest{TTL: 60}, codes.OK},
		{"an unknown field never reaches the core",
			&pb.LeaseGrantRequest{TTL: 5, XXX_unrecognized: unknownField}, nil, &pb.LeaseGrantRequest{TTL: 5}, codes.OK},
		{"an etcd error comes back as etcd sends it", &pb.LeaseGrantRequest{TTL: 60}, rpctypes.ErrGRPCLeaseTTLTooLarge,
			&pb.LeaseGrantRequest{TTL: 60}, codes.OutOfRange},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := &fakeLeaseClient{resp: answer, err: tc.core}
			resp, err := NewLease(fake).LeaseGrant(t.Context(), tc.request)
			if len(fake.got) != 1 {
				t.Fatalf("the core got %d grants, want 1", len(fake.got))
			}
			sameMessage(t, fake.got[0], tc.want)
			if status.Code(err) != tc.code {
				t.Fatalf("error = %v, want %v", err, tc.code)
			}
			if err == nil {
				sameMessage(t, resp, answer)
			} else if status.Convert(err).Message() != status.Convert(tc.core).Message() {
				t.Errorf("message = %q, want etcd's %q", status.Convert(err).Message(), status.Convert(tc.core).Message())
			}
		})
	}
}

type fakeMaintenanceClient struct {
	pb.MaintenanceClient
	got  []*pb.StatusRequest
	resp *pb.StatusResponse
	err  error
}

func (f *fakeMaintenanceClient) Status(_ context.Context, in *pb.StatusRequest, _ ...grpc.CallOption) (*pb.StatusResponse, error) {
	f.got = append(f.got, in)
	return f.resp, f.err
}

func TestStatus(t *testing.T) {
	core := &pb.StatusResponse{
		Header: header, Version: "3.6.16", DbSize: 1 << 20, Leader: 0xabc, RaftIndex: 100, RaftTerm: 5,
		RaftAppliedIndex: 99, Errors: []string{"NOSPACE"}, DbSizeInUse: 1 << 19, IsLearner: true,
		StorageVersion: "3.6.0", DbSizeQuota: 8 << 30, DowngradeInfo: &pb.DowngradeInfo{Enabled: true, TargetVersion: "3.5.0"},
	}
	t.Run("the core's version, size and header reach the tenant, nothing else of the core", func(t *testing.T) {
		fake := &fakeMaintenanceClient{resp: core}
		resp, err := NewMaintenance(fake).Status(t.Context(), &pb.StatusRequest{XXX_unrecognized: unknownField})
		if err != nil {
			t.Fatal(err)
		}
		sameMessage(t, resp, &pb.StatusResponse{Header: header, Version: "3.6.16", DbSize: 1 << 20})
		if len(fake.got) != 1 {
			t.Fatalf("the core got %d requests", len(fake.got))
		}
		sameMessage(t, fake.got[0], &pb.StatusRequest{})
	})
	t.Run("an error of the core comes back as a status", func(t *testing.T) {
		fake := &fakeMaintenanceClient{err: rpctypes.ErrGRPCNoLeader}
		if _, err := NewMaintenance(fake).Status(t.Context(), &pb.StatusRequest{}); status.Code(err) != codes.Unavailable {
			t.Errorf("error = %v, want Unavailable", err)
		}
	})
}
