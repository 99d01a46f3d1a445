// Command tenant-proxy serves one tenant's view of the core etcd: the etcd v3 gRPC API over mutual TLS, the RPCs a
// kube-apiserver-based server needs and nothing else, every request checked and moved under the tenant's key
// prefix, certificates re-read while it runs. One process per pod; see README.md beside this file and
// docs/security.md at the repository's root.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"etcdstorage.local/tenant-proxy/internal/certs"
	"etcdstorage.local/tenant-proxy/internal/policy"
	"etcdstorage.local/tenant-proxy/internal/server"
	"etcdstorage.local/tenant-proxy/internal/tenant"
)

type config struct {
	printAllowlist       bool
	listen, healthListen string
	prefix               string
	endpoints            string
	files                certs.Files
	limits               policy.Limits
	reloadInterval       time.Duration
	shutdownDelay        time.Duration
	shutdownTimeout      time.Duration
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "purge-prefix" {
		os.Exit(purgeCommand(os.Args[2:]))
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "tenant-proxy:", err)
		os.Exit(2)
	}
}

func parse(args []string) (config, error) {
	var c config
	flags := flag.NewFlagSet("tenant-proxy", flag.ContinueOnError)
	flags.BoolVar(&c.printAllowlist, "print-allowlist", false, "print the etcd RPCs tenants may call, and why, then exit")
	flags.StringVar(&c.listen, "listen", ":2379", "address of the tenant's etcd API (TLS)")
	flags.StringVar(&c.healthListen, "health-listen", ":8080", "address of /livez, /readyz and /metrics (plain HTTP)")
	flags.StringVar(&c.prefix, "prefix", "", "the tenant's key prefix in the core etcd, /<root>/<name>/ (required)")
	flags.StringVar(&c.endpoints, "endpoints", "", "the core etcd's client URLs, comma-separated (required)")
	flags.StringVar(&c.files.ServingCert, "cert-file", "/etc/etcdproxy-certs/server/tls.crt", "serving certificate")
	flags.StringVar(&c.files.ServingKey, "key-file", "/etc/etcdproxy-certs/server/tls.key", "serving key")
	flags.StringVar(&c.files.ClientCA, "client-ca-file", "/etc/etcdproxy-certs/ca/client-ca.crt", "CA bundle that tenant client certificates must chain to")
	flags.StringVar(&c.files.CoreCA, "core-ca-file", "/etc/coreetcd-certs/ca/ca.crt", "CA bundle of the core etcd")
	flags.StringVar(&c.files.CoreCert, "core-cert-file", "/etc/coreetcd-certs/client/tls.crt", "client certificate for the core etcd")
	flags.StringVar(&c.files.CoreKey, "core-key-file", "/etc/coreetcd-certs/client/tls.key", "client key for the core etcd")
	flags.IntVar(&c.limits.MaxRequestBytes, "max-request-bytes", policy.DefaultLimits.MaxRequestBytes, "largest request a tenant may send")
	flags.IntVar(&c.limits.MaxTxnOps, "max-txn-ops", policy.DefaultLimits.MaxTxnOps, "most operations (and, separately, compares) in one Txn")
	flags.IntVar(&c.limits.MaxTxnReads, "max-txn-reads", policy.DefaultLimits.MaxTxnReads, "most keys one Txn reads back (Range operations, prev_kv)")
	flags.IntVar(&c.limits.MaxWatchesPerStream, "max-watches-per-stream", policy.DefaultLimits.MaxWatchesPerStream, "most watches open at once on one Watch stream")
	flags.DurationVar(&c.reloadInterval, "reload-interval", 10*time.Second, "how often the certificate files are read again")
	flags.DurationVar(&c.shutdownDelay, "shutdown-delay", 5*time.Second, "on SIGTERM, how long to go on serving, unready, while Service endpoints drop the pod")
	flags.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 15*time.Second, "then, how long in-flight requests may take before they are cut")
	if err := flags.Parse(args); err != nil {
		return c, err
	}
	switch {
	case c.printAllowlist:
		return c, nil
	case flags.NArg() != 0:
		return c, fmt.Errorf("unexpected arguments %q", flags.Args())
	case !strings.HasPrefix(c.prefix, "/") || !strings.HasSuffix(c.prefix, "/") || len(c.prefix) < 3:
		return c, fmt.Errorf("--prefix=%q: expected /<root>/<name>/ with leading and trailing slashes", c.prefix)
	case c.endpoints == "":
		return c, errors.New("--endpoints is required: the core etcd's client URLs")
	case c.limits.MaxRequestBytes < 1 || c.limits.MaxTxnOps < 1 || c.limits.MaxTxnReads < 1 || c.limits.MaxWatchesPerStream < 1:
		return c, errors.New("--max-request-bytes, --max-txn-ops, --max-txn-reads and --max-watches-per-stream must be positive")
	case c.reloadInterval <= 0 || c.shutdownDelay < 0 || c.shutdownTimeout <= 0:
		return c, errors.New("--reload-interval and --shutdown-timeout must be positive, --shutdown-delay not negative")
	}
	return c, nil
}

func run(args []string) error {
	c, err := parse(args)
	if err != nil {
		return err
	}
	if c.printAllowlist {
		for _, method := range policy.AllowedMethods() {
			fmt.Printf("%s\t%s\n", method, policy.Allowed[method])
		}
		return nil
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	metrics := server.NewMetrics()

	source := certs.NewSource(c.files, log)
	source.OnChange = metrics.Certificates
	source.OnFailure = metrics.ReloadFailed
	if err := source.Reload(); err != nil {
		// Not fatal: kubelet may not have written the job's certificates yet. Handshakes fail, /readyz says why.
		log.Error("certificates not loaded: waiting for valid ones", "error", err)
	}

	upstream, err := clientv3.New(clientv3.Config{
		Endpoints: strings.Split(c.endpoints, ","),
		// Not clientv3's TLS option, which fixes the CA bundle at start: these credentials, given last, replace
		// the ones clientv3 sets up for https:// endpoints.
		DialOptions: []grpc.DialOption{
			grpc.WithTransportCredentials(source.ClientCredentials()),
			// The raw Watch, Lease and Maintenance clients on this connection get clientv3's receive limit too,
			// not gRPC's default of 4 MiB: one watch response carries every event of a revision.
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(math.MaxInt32)),
		},
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    30 * time.Second,
		DialKeepAliveTimeout: 10 * time.Second,
		MaxCallSendMsgSize:   c.limits.MaxMessageBytes(),
		PermitWithoutStream:  true,
		Logger:               upstreamLogger(),
	})
	if err != nil {
		return fmt.Errorf("core etcd client: %w", err)
	}
	defer upstream.Close()

	prefix := tenant.Prefix(c.prefix)
	stopping := make(chan struct{})
	conn := upstream.ActiveConnection()
	kv := tenant.NewKV(upstream.KV, prefix)
	watch := tenant.NewWatch(pb.NewWatchClient(conn), prefix, c.limits, stopping)
	watch.Refused = server.RecordRefusal(metrics, log)
	health := &server.Health{
		Loaded: func() bool { return source.Current() != nil },
		Probe: func(ctx context.Context) error {
			_, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte("health"), CountOnly: true})
			return err
		},
		GRPCAddress: dialable(c.listen),
		Metrics:     metrics,
	}
	grpcServer := server.New(server.Options{
		Creds: credentials.NewTLS(source.ServerConfig()),
		Services: server.Services{
			KV:          kv,
			Watch:       watch,
			Lease:       tenant.NewLease(pb.NewLeaseClient(conn)),
			Maintenance: tenant.NewMaintenance(pb.NewMaintenanceClient(conn)),
		},
		Limits:  c.limits,
		Metrics: metrics,
		Health:  health,
		Log:     log,
	})

	listener, err := net.Listen("tcp", c.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", c.listen, err)
	}
	healthListener, err := net.Listen("tcp", c.healthListen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", c.healthListen, err)
	}
	healthServer := &http.Server{Handler: health.Handler(), ReadHeaderTimeout: 5 * time.Second}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go source.Watch(ctx, c.reloadInterval)
	served := make(chan error, 2)
	go func() { served <- grpcServer.Serve(listener) }()
	go func() { served <- healthServer.Serve(healthListener) }()
	log.Info("serving", "listen", listener.Addr().String(), "health", healthListener.Addr().String(),
		"prefix", c.prefix, "endpoints", c.endpoints)

	select {
	case err := <-served:
		return fmt.Errorf("server stopped: %w", err)
	case <-ctx.Done():
	}

	// Stop gracefully: unready at once; serve on while the endpoints drop the pod; then end watch streams with a
	// status clients retry elsewhere, refuse new streams, let unary requests finish, and cut what is left.
	health.Stopping()
	log.Info("stopping: unready", "serving_for", c.shutdownDelay.String())
	time.Sleep(c.shutdownDelay)
	close(stopping)
	stopped := make(chan struct{})
	go func() { grpcServer.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
		log.Info("stopped: every request finished")
	case <-time.After(c.shutdownTimeout):
		grpcServer.Stop()
		log.Warn("stopped: requests still running were cut", "after", c.shutdownTimeout.String())
	}
	shutdown, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = healthServer.Shutdown(shutdown)
	return nil
}

// dialable turns a listen address into one the process can dial itself (":2379" → "localhost:2379").
func dialable(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil || host == "" || host == "0.0.0.0" || host == "::" {
		return net.JoinHostPort("localhost", port)
	}
	return listen
}

// upstreamLogger is clientv3's own log (reconnects, retries), as JSON at warning level.
func upstreamLogger() *zap.Logger {
	config := zap.NewProductionConfig()
	config.Level = zap.NewAtomicLevelAt(zap.WarnLevel)
	logger, err := config.Build()
	if err != nil {
		return zap.NewNop()
	}
	return logger
}
