package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"etcdstorage.local/tenant-proxy/internal/policy"
)

// get runs one GET of path against handler, in process.
func get(t *testing.T, handler http.Handler, path string) *httptest.ResponseRecorder {
	t.Helper()
	return getWithContext(t, context.Background(), handler, path)
}

func getWithContext(t *testing.T, ctx context.Context, handler http.Handler, path string) *httptest.ResponseRecorder {
	t.Helper()
	recorder := httptest.NewRecorder()
	handler.ServeHTTP(recorder, httptest.NewRequestWithContext(ctx, http.MethodGet, path, nil))
	return recorder
}

func TestReadyz(t *testing.T) {
	failing := func(context.Context) error { return errors.New("connection refused") }
	answering := func(context.Context) error { return nil }
	for _, tc := range []struct {
		name     string
		stopping bool
		loaded   bool
		probe    func(context.Context) error
		last     time.Duration // how long ago the core last answered; 0 for never
		code     int
		says     string
		probed   bool
	}{
		{"a proxy whose core answers the probe is ready", false, true, answering, 0, 200, "ok", true},
		{"a stopping proxy is unready, whatever its core", true, true, answering, 0, 503, "stopping", false},
		{"a stopping proxy is unready even right after an answer", true, true, answering, time.Millisecond, 503, "stopping", false},
		{"a proxy without certificates is unready", false, false, answering, 0, 503, "no valid certificates", false},
		{"a proxy whose probe fails and whose core never answered is unready", false, true, failing, 0, 503, "the core etcd does not answer: connection refused", true},
		{"a proxy whose probe fails and whose core answered long ago is unready", false, true, failing, recentSuccess + time.Second, 503, "does not answer", true},
		{"a proxy whose core answered a moment ago is ready without a probe", false, true, failing, time.Second, 200, "ok", false},
		{"a proxy whose core answered long ago is ready once the probe succeeds", false, true, answering, time.Hour, 200, "ok", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			probed := false
			h := &Health{
				Loaded:  func() bool { return tc.loaded },
				Probe:   func(ctx context.Context) error { probed = true; return tc.probe(ctx) },
				Metrics: NewMetrics(),
			}
			if tc.stopping {
				h.Stopping()
			}
			if tc.last != 0 {
				h.lastSuccess.Store(time.Now().Add(-tc.last).UnixNano())
			}
			response := get(t, h.Handler(), "/readyz")
			if response.Code != tc.code || !strings.Contains(response.Body.String(), tc.says) {
				t.Errorf("/readyz = %d %q, want %d %q", response.Code, response.Body.String(), tc.code, tc.says)
			}
			if probed != tc.probed {
				t.Errorf("probed = %v, want %v", probed, tc.probed)
			}
		})
	}
	t.Run("a successful probe is remembered: the next readyz does not probe", func(t *testing.T) {
		probes := 0
		h := &Health{Loaded: func() bool { return true }, Probe: func(context.Context) error { probes++; return nil }, Metrics: NewMetrics()}
		for range 3 {
			if code := get(t, h.Handler(), "/readyz").Code; code != 200 {
				t.Fatalf("/readyz = %d", code)
			}
		}
		if probes != 1 {
			t.Errorf("probed %d times, want 1", probes)
		}
	})
	t.Run("the probe runs under a deadline", func(t *testing.T) {
		var deadline atomic.Bool
		h := &Health{Loaded: func() bool { return true }, Metrics: NewMetrics(), Probe: func(ctx context.Context) error {
			_, ok := ctx.Deadline()
			deadline.Store(ok)
			return nil
		}}
		get(t, h.Handler(), "/readyz")
		if !deadline.Load() {
			t.Errorf("the probe's context has no deadline")
		}
	})
	t.Run("readyz answers GET only", func(t *testing.T) {
		h := &Health{Loaded: func() bool { return true }, Probe: answering, Metrics: NewMetrics()}
		recorder := httptest.NewRecorder()
		h.Handler().ServeHTTP(recorder, httptest.NewRequest(http.MethodPost, "/readyz", nil))
		if recorder.Code != http.StatusMethodNotAllowed {
			t.Errorf("POST /readyz = %d, want 405", recorder.Code)
		}
	})
}

// selfSigned is a throwaway serving certificate.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "proxy"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// listen serves TLS handshakes on loopback with config, until the test ends; accept=false only accepts
// connections and never answers them.
func listen(t *testing.T, config *tls.Config, answer bool) string {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var held []net.Conn
		defer func() {
			for _, conn := range held {
				_ = conn.Close()
			}
		}()
		for {
			conn, err := listener.Accept()
			if err != nil {
				return
			}
			if !answer {
				held = append(held, conn)
				continue
			}
			go func() {
				defer conn.Close()
				server := tls.Server(conn, config)
				_ = server.SetDeadline(time.Now().Add(wait))
				_ = server.Handshake()
			}()
		}
	}()
	t.Cleanup(func() {
		_ = listener.Close()
		<-done
	})
	return listener.Addr().String()
}

// nothingListens is a loopback address where no one listens (a port that was just closed).
func nothingListens(t *testing.T) string {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := listener.Addr().String()
	if err := listener.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func TestLivez(t *testing.T) {
	serving := &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}, NextProtos: []string{"h2"}}
	requireClient := &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}, ClientAuth: tls.RequireAnyClientCert, MaxVersion: tls.VersionTLS12}
	notLoaded := &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return nil, errors.New("no valid certificates loaded yet")
	}}
	for _, tc := range []struct {
		name    string
		address func(t *testing.T) string
		timeout time.Duration // of the probe's request; 0 for none
		code    int
	}{
		{"a listener that completes a TLS handshake is alive", func(t *testing.T) string { return listen(t, serving, true) }, 0, 200},
		{"a listener that refuses the probe's lack of a client certificate is alive", func(t *testing.T) string { return listen(t, requireClient, true) }, 0, 200},
		{"a listener without certificates, answering with an alert, is alive", func(t *testing.T) string { return listen(t, notLoaded, true) }, 0, 200},
		{"an address where nothing listens is not alive", nothingListens, 0, 503},
		{"a listener that accepts and never answers is not alive", func(t *testing.T) string { return listen(t, serving, false) }, 200 * time.Millisecond, 503},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &Health{GRPCAddress: tc.address(t), Metrics: NewMetrics()}
			ctx := t.Context()
			if tc.timeout != 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			response := getWithContext(t, ctx, h.Handler(), "/livez")
			if response.Code != tc.code {
				t.Errorf("/livez = %d %q, want %d", response.Code, response.Body.String(), tc.code)
			}
		})
	}
}

func TestMetricsEndpointServesTheRegistry(t *testing.T) {
	metrics := NewMetrics()
	h := &Health{Metrics: metrics}
	server := httptest.NewServer(h.Handler())
	defer server.Close()

	expected := func(rpcNotAllowed int) string {
		var b strings.Builder
		b.WriteString("# HELP etcdstorage_proxy_refusals_total Requests refused before the core etcd, by reason.\n")
		b.WriteString("# TYPE etcdstorage_proxy_refusals_total counter\n")
		for _, reason := range policy.Reasons {
			value := "0"
			if reason == policy.RPCNotAllowed && rpcNotAllowed != 0 {
				value = "1"
			}
			b.WriteString(`etcdstorage_proxy_refusals_total{reason="` + string(reason) + `"} ` + value + "\n")
		}
		return b.String()
	}
	t.Run("every refusal reason is exported at 0 from the start", func(t *testing.T) {
		if err := testutil.ScrapeAndCompare(server.URL+"/metrics", strings.NewReader(expected(0)), "etcdstorage_proxy_refusals_total"); err != nil {
			t.Error(err)
		}
	})
	t.Run("a counted refusal is served", func(t *testing.T) {
		metrics.refusals.WithLabelValues(string(policy.RPCNotAllowed)).Inc()
		if err := testutil.ScrapeAndCompare(server.URL+"/metrics", strings.NewReader(expected(1)), "etcdstorage_proxy_refusals_total"); err != nil {
			t.Error(err)
		}
	})
	t.Run("the metrics of Go and of the process are served", func(t *testing.T) {
		body := get(t, h.Handler(), "/metrics").Body.String()
		for _, name := range []string{"go_goroutines", "etcdstorage_proxy_watch_streams", "etcdstorage_proxy_panics_total"} {
			if !strings.Contains(body, name) {
				t.Errorf("/metrics lacks %s", name)
			}
		}
	})
	t.Run("the metrics pass Prometheus's lint", func(t *testing.T) {
		problems, err := testutil.GatherAndLint(metrics.Registry)
		if err != nil {
			t.Fatal(err)
		}
		for _, problem := range problems {
			if strings.HasPrefix(problem.Metric, "etcdstorage_") {
				t.Errorf("%s: %s", problem.Metric, problem.Text)
			}
		}
	})
}
