package tenant

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// Lease serves LeaseGrant, the one Lease RPC a tenant may call; the ID is always etcd's choice (policy.Check
// refuses a chosen one).
type Lease struct {
	pb.UnimplementedLeaseServer // the other Lease RPCs: never reached, the allowlist refuses them first
	upstream                    pb.LeaseClient
}

func NewLease(upstream pb.LeaseClient) *Lease { return &Lease{upstream: upstream} }

func (l *Lease) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	resp, err := l.upstream.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: r.TTL})
	if err != nil {
		return nil, upstreamError(ctx, err)
	}
	return resp, nil
}

// Maintenance serves Status, with the fields kube-apiserver reads (the version, for feature detection; the
// database size, for its storage metric) and the header every etcd answer carries; the core's leader, raft
// indexes, alarms and quota stay with the core.
type Maintenance struct {
	pb.UnimplementedMaintenanceServer // Snapshot, Defragment, Alarm...: never reached, the allowlist refuses them
	upstream                          pb.MaintenanceClient
}

func NewMaintenance(upstream pb.MaintenanceClient) *Maintenance {
	return &Maintenance{upstream: upstream}
}

func (m *Maintenance) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	resp, err := m.upstream.Status(ctx, &pb.StatusRequest{})
	if err != nil {
		return nil, upstreamError(ctx, err)
	}
	return &pb.StatusResponse{Header: resp.Header, Version: resp.Version, DbSize: resp.DbSize}, nil
}
