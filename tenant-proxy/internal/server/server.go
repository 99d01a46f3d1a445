// Package server is the proxy's gRPC front: TLS from package certs, the allowlist and request checks of package
// policy applied to every RPC and every message of a stream, the tenant's services, metrics and refusal logs.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"etcdstorage.local/tenant-proxy/internal/policy"
	"etcdstorage.local/tenant-proxy/internal/tenant"
)

const (
	// maxStreams per connection: kube-apiserver multiplexes every request and watch of a connection.
	maxStreams = 1000
	// otherRPC labels the metrics of methods off the allowlist: a tenant chooses method names, labels stay few.
	otherRPC        = "other"
	maxLoggedMethod = 200
)

// Services are the tenant's etcd services.
type Services struct {
	KV          pb.KVServer
	Watch       pb.WatchServer
	Lease       pb.LeaseServer
	Maintenance pb.MaintenanceServer
}

// Options are what New wires together.
type Options struct {
	Creds    credentials.TransportCredentials
	Services Services
	Limits   policy.Limits
	Metrics  *Metrics
	Health   *Health // told of every RPC the core etcd answered
	Log      *slog.Logger
}

// New builds the gRPC server: TLS, the services, and policy in front of each.
func New(o Options) *grpc.Server {
	limits, metrics, services := o.Limits, o.Metrics, o.Services
	g := &guard{limits: limits, metrics: metrics, health: o.Health, log: o.Log}
	server := grpc.NewServer(
		grpc.Creds(o.Creds),
		grpc.MaxRecvMsgSize(limits.MaxMessageBytes()),
		grpc.MaxSendMsgSize(math.MaxInt32),
		grpc.MaxConcurrentStreams(maxStreams),
		// etcd clients ping every 30 s or so (kube-apiserver: 30 s); grpc-go's default minimum of 5 minutes would
		// end their connections with too_many_pings. Dead clients are found by the server's own pings.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second}),
		grpc.ChainUnaryInterceptor(g.unary),
		grpc.ChainStreamInterceptor(g.stream),
		grpc.UnknownServiceHandler(g.unknown),
		grpc.StatsHandler(&byteCounter{metrics: metrics}),
	)
	pb.RegisterKVServer(server, services.KV)
	pb.RegisterWatchServer(server, services.Watch)
	pb.RegisterLeaseServer(server, services.Lease)
	pb.RegisterMaintenanceServer(server, services.Maintenance)
	return server
}

// guard applies policy to every RPC and records what happened to it.
type guard struct {
	limits  policy.Limits
	metrics *Metrics
	health  *Health
	log     *slog.Logger
}

func (g *guard) unary(ctx context.Context, request any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (response any, err error) {
	started := time.Now()
	defer func() {
		if r := recover(); r != nil {
			err = g.panicked(ctx, info.FullMethod, r)
		}
		g.done(ctx, info.FullMethod, started, err)
	}()
	if !policy.Allows(info.FullMethod) {
		return nil, policy.Denied(info.FullMethod)
	}
	if refusal := g.limits.Check(request); refusal != nil {
		return nil, refusal
	}
	return handler(ctx, request)
}

func (g *guard) stream(srv any, stream grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	started := time.Now()
	defer func() {
		if r := recover(); r != nil {
			err = g.panicked(stream.Context(), info.FullMethod, r)
		}
		g.done(stream.Context(), info.FullMethod, started, err)
	}()
	if !policy.Allows(info.FullMethod) {
		return policy.Denied(info.FullMethod)
	}
	if info.FullMethod == tenant.WatchMethod {
		g.metrics.watchStreams.Inc()
		defer g.metrics.watchStreams.Dec()
	}
	return handler(srv, &checkedStream{ServerStream: stream, limits: g.limits})
}

// unknown answers every method of every service that is not registered (Cluster, Auth, Election, Lock, ...).
func (g *guard) unknown(_ any, stream grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(stream)
	return policy.Denied(method)
}

// checkedStream checks every message a tenant sends on a stream, as the unary interceptor checks a request.
type checkedStream struct {
	grpc.ServerStream
	limits policy.Limits
}

func (s *checkedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if refusal := s.limits.Check(m); refusal != nil {
		return refusal
	}
	return nil
}

func (g *guard) panicked(ctx context.Context, method string, r any) error {
	g.metrics.panics.Inc()
	g.log.Error("RPC failed: internal error", "rpc", truncate(method), "client", client(ctx), "panic", fmt.Sprint(r))
	return status.Error(codes.Internal, "etcdstorage tenant proxy: internal error (logged)")
}

func (g *guard) done(ctx context.Context, method string, started time.Time, err error) {
	rpc := method
	if !policy.Allows(method) {
		rpc = otherRPC
	}
	code := status.Code(err)
	g.metrics.observe(rpc, code.String(), started)
	var refusal *policy.Refusal
	switch {
	case err == nil && method != tenant.WatchMethod:
		g.health.Succeeded()
	case errors.As(err, &refusal):
		RecordRefusal(g.metrics, g.log)(ctx, method, refusal)
	case err != nil && tenant.IsUpstreamFailure(err) && !errors.Is(err, tenant.ErrStopping):
		g.metrics.upstreamErrors.WithLabelValues(rpc, code.String()).Inc()
	}
}

// RecordRefusal counts and logs a refusal: of a whole RPC (by the interceptors), or of one request inside a stream
// that goes on (a watch create over the limit, answered by the Watch service itself).
func RecordRefusal(metrics *Metrics, log *slog.Logger) func(context.Context, string, *policy.Refusal) {
	return func(ctx context.Context, method string, refusal *policy.Refusal) {
		metrics.refusals.WithLabelValues(string(refusal.Reason)).Inc()
		log.Warn("request refused", "rpc", truncate(method), "reason", refusal.Reason,
			"code", refusal.GRPCStatus().Code().String(), "message", refusal.Error(), "client", client(ctx))
	}
}

// client names the caller for a log line: its address and the subject of its certificate.
func client(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	name := p.Addr.String()
	if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 {
		name += " " + info.State.PeerCertificates[0].Subject.String()
	}
	return name
}

func truncate(method string) string {
	if len(method) > maxLoggedMethod {
		return method[:maxLoggedMethod] + "..."
	}
	return method
}

// byteCounter counts the payload bytes of every message, by method.
type byteCounter struct{ metrics *Metrics }

type rpcKey struct{}

func (b *byteCounter) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	rpc := info.FullMethodName
	if !policy.Allows(rpc) {
		rpc = otherRPC
	}
	return context.WithValue(ctx, rpcKey{}, rpc)
}

func (b *byteCounter) HandleRPC(ctx context.Context, s stats.RPCStats) {
	rpc, _ := ctx.Value(rpcKey{}).(string)
	switch payload := s.(type) {
	case *stats.InPayload:
		b.metrics.received.WithLabelValues(rpc).Add(float64(payload.WireLength))
	case *stats.OutPayload:
		b.metrics.sent.WithLabelValues(rpc).Add(float64(payload.WireLength))
	}
}

func (b *byteCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (b *byteCounter) HandleConn(context.Context, stats.ConnStats)                       {}
