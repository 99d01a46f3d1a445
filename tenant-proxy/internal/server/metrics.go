package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"etcdstorage.local/tenant-proxy/internal/certs"
	"etcdstorage.local/tenant-proxy/internal/policy"
)

// Metrics are the proxy's Prometheus collectors, on a registry of their own (the one global state of the process).
type Metrics struct {
	Registry       *prometheus.Registry
	requests       *prometheus.CounterVec
	latency        *prometheus.HistogramVec
	refusals       *prometheus.CounterVec
	received       *prometheus.CounterVec
	sent           *prometheus.CounterVec
	watchStreams   prometheus.Gauge
	upstreamErrors *prometheus.CounterVec
	panics         prometheus.Counter
	notAfter       *prometheus.GaugeVec
	reloadFailures prometheus.Counter
}

// NewMetrics registers every collector, and Go's and the process's own.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "etcdstorage_proxy_requests_total", Help: "Tenant RPCs by method and gRPC code.",
		}, []string{"rpc", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "etcdstorage_proxy_request_duration_seconds",
			Help:    "Time to answer a tenant's unary RPC, or the life of a stream.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"rpc"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "etcdstorage_proxy_refusals_total", Help: "Requests refused before the core etcd, by reason.",
		}, []string{"reason"}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "etcdstorage_proxy_received_bytes_total", Help: "Bytes of messages received from tenants.",
		}, []string{"rpc"}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "etcdstorage_proxy_sent_bytes_total", Help: "Bytes of messages sent to tenants.",
		}, []string{"rpc"}),
		watchStreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "etcdstorage_proxy_watch_streams", Help: "Watch streams open now.",
		}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "etcdstorage_proxy_upstream_errors_total",
			Help: "Tenant RPCs that failed because of the core etcd or the way to it, by method and gRPC code.",
		}, []string{"rpc", "code"}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "etcdstorage_proxy_panics_total", Help: "RPCs that ended in a recovered panic (a bug: report it).",
		}),
		notAfter: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "etcdstorage_proxy_certificate_not_after_timestamp_seconds",
			Help: "Expiry of each certificate in use (the earliest of a CA bundle), as a Unix time.",
		}, []string{"certificate"}),
		reloadFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "etcdstorage_proxy_certificate_reload_failures_total",
			Help: "Reloads that found the certificate files broken; the last good ones stay in use.",
		}),
	}
	m.Registry.MustRegister(m.requests, m.latency, m.refusals, m.received, m.sent, m.watchStreams,
		m.upstreamErrors, m.panics, m.notAfter, m.reloadFailures,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, reason := range policy.Reasons {
		m.refusals.WithLabelValues(string(reason)) // every reason exported from the start, at 0
	}
	return m
}

// Certificates records the expiry of a certificate set put in use.
func (m *Metrics) Certificates(material *certs.Material) {
	for name, notAfter := range material.NotAfter {
		m.notAfter.WithLabelValues(name).Set(float64(notAfter.Unix()))
	}
}

// ReloadFailed counts a reload that found broken files.
func (m *Metrics) ReloadFailed(error) { m.reloadFailures.Inc() }

func (m *Metrics) observe(rpc string, code string, started time.Time) {
	m.requests.WithLabelValues(rpc, code).Inc()
	m.latency.WithLabelValues(rpc).Observe(time.Since(started).Seconds())
}
