package server

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// How recent a success must be for /readyz to answer without asking the core etcd again.
const recentSuccess = 10 * time.Second

// Health answers the kubelet's probes and Prometheus, on a plain-HTTP port of its own.
type Health struct {
	// Loaded tells whether a valid certificate set is in use.
	Loaded func() bool
	// Probe asks the core etcd something through the proxy's own client: a read of the tenant's own key.
	Probe func(context.Context) error
	// GRPCAddress is the tenant listener, which /livez handshakes with.
	GRPCAddress string
	Metrics     *Metrics

	stopping    atomic.Bool
	lastSuccess atomic.Int64 // Unix nanoseconds of the last answer from the core etcd
}

// Stopping makes /readyz fail from now on.
func (h *Health) Stopping() { h.stopping.Store(true) }

// Handler serves /livez, /readyz and /metrics.
func (h *Health) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /livez", h.livez)
	mux.HandleFunc("GET /readyz", h.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(h.Metrics.Registry, promhttp.HandlerOpts{}))
	return mux
}

// livez: the tenant listener accepts a connection and answers a TLS handshake within the probe's time. It does not
// ask the core etcd: an outage there must not restart every proxy, it makes them unready.
func (h *Health) livez(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := h.handshake(ctx); err != nil {
		http.Error(w, "tenant listener does not answer: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}

func (h *Health) handshake(ctx context.Context) error {
	dialer := &tls.Dialer{Config: &tls.Config{
		// Only whether the listener answers is checked: no data is exchanged, nothing is trusted.
		InsecureSkipVerify: true, //nolint:gosec
		NextProtos:         []string{"h2"},
	}}
	conn, err := dialer.DialContext(ctx, "tcp", h.GRPCAddress)
	if err == nil {
		return conn.Close()
	}
	// The server answering with an alert (no certificate loaded yet, no client certificate) is alive;
	// a refused connection or a timeout is not.
	var opError *net.OpError
	if errors.As(err, &opError) && opError.Op == "dial" || ctx.Err() != nil {
		return err
	}
	return nil
}

// readyz: not stopping, certificates loaded, and the core etcd answered recently or answers now.
func (h *Health) readyz(w http.ResponseWriter, r *http.Request) {
	switch {
	case h.stopping.Load():
		http.Error(w, "stopping", http.StatusServiceUnavailable)
		return
	case !h.Loaded():
		http.Error(w, "no valid certificates loaded yet (see the log)", http.StatusServiceUnavailable)
		return
	}
	if time.Since(time.Unix(0, h.lastSuccess.Load())) > recentSuccess {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if err := h.Probe(ctx); err != nil {
			http.Error(w, "the core etcd does not answer: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		h.Succeeded()
	}
	_, _ = w.Write([]byte("ok\n"))
}

// Succeeded records an answer of the core etcd.
func (h *Health) Succeeded() { h.lastSuccess.Store(time.Now().UnixNano()) }
