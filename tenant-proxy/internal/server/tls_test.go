package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	"etcdstorage.local/tenant-proxy/internal/certs"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

var nextSerial int64

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	ca := &testCA{}
	ca.cert, ca.key = sign(t, nil, &x509.Certificate{
		Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign,
	})
	return ca
}

// sign issues template, by ca (self-signed when ca is nil).
func sign(t *testing.T, ca *testCA, template *x509.Certificate) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	nextSerial++
	template.SerialNumber = big.NewInt(nextSerial)
	template.NotBefore, template.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	parent, parentKey := template, key
	if ca != nil {
		parent, parentKey = ca.cert, ca.key
	}
	der, err := x509.CreateCertificate(rand.Reader, template, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func (ca *testCA) issue(t *testing.T, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
	t.Helper()
	cert, key := sign(t, ca, &x509.Certificate{
		Subject: pkix.Name{CommonName: "leaf"}, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
	})
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func (ca *testCA) pem() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
}

func write(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestOverTLS runs the proxy's gRPC front as main wires it: TLS from a certs.Source, on a loopback listener.
func TestOverTLS(t *testing.T) {
	servingCA, clientCA, coreCA := newTestCA(t, "serving CA"), newTestCA(t, "client CA"), newTestCA(t, "core CA")
	servingCert, servingKey := servingCA.issue(t, x509.ExtKeyUsageServerAuth)
	tenantCert, tenantKey := clientCA.issue(t, x509.ExtKeyUsageClientAuth)
	coreCert, coreKey := coreCA.issue(t, x509.ExtKeyUsageClientAuth)
	dir := t.TempDir()
	files := certs.Files{
		ServingCert: write(t, dir, "tls.crt", servingCert), ServingKey: write(t, dir, "tls.key", servingKey),
		ClientCA: write(t, dir, "client-ca.crt", clientCA.pem()), CoreCA: write(t, dir, "core-ca.crt", coreCA.pem()),
		CoreCert: write(t, dir, "core.crt", coreCert), CoreKey: write(t, dir, "core.key", coreKey),
	}
	source := certs.NewSource(files, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := source.Reload(); err != nil {
		t.Fatal(err)
	}

	metrics := NewMetrics()
	services := &recorder{}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	health := &Health{Loaded: func() bool { return source.Current() != nil }, GRPCAddress: listener.Addr().String(), Metrics: metrics}
	server := New(Options{
		Creds: credentials.NewTLS(source.ServerConfig()),
		Services: Services{
			KV: &fakeKV{recorder: services}, Watch: &fakeWatch{recorder: services, received: make(chan *pb.WatchRequest, 10)},
			Lease: &fakeLease{recorder: services}, Maintenance: &fakeMaintenance{recorder: services},
		},
		Limits: testLimits, Metrics: metrics, Health: health, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = server.Serve(listener)
	}()
	t.Cleanup(func() {
		server.Stop()
		<-served
	})

	roots := x509.NewCertPool()
	roots.AddCert(servingCA.cert)
	tenant, err := tls.X509KeyPair(tenantCert, tenantKey)
	if err != nil {
		t.Fatal(err)
	}
	dial := func(t *testing.T, config *tls.Config) pb.KVClient {
		t.Helper()
		conn, err := grpc.NewClient(listener.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(config)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return pb.NewKVClient(conn)
	}
	call := func(t *testing.T, kv pb.KVClient) error {
		ctx, cancel := context.WithTimeout(t.Context(), wait)
		defer cancel()
		_, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte("a")})
		return err
	}

	t.Run("a tenant with a client certificate of its CA reaches Range", func(t *testing.T) {
		before := len(services.got())
		if err := call(t, dial(t, &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{tenant}})); err != nil {
			t.Fatalf("Range: %v", err)
		}
		if got := services.got()[before:]; len(got) != 1 || got[0] != "Range" {
			t.Errorf("the services got %v", got)
		}
	})
	t.Run("a tenant without a client certificate gets no answer", func(t *testing.T) {
		before := len(services.got())
		err := call(t, dial(t, &tls.Config{RootCAs: roots}))
		wantStatus(t, err, codes.Unavailable, "")
		if got := services.got()[before:]; len(got) != 0 {
			t.Errorf("the services got %v", got)
		}
	})
	t.Run("a tenant with the core's client certificate, of another CA, gets no answer", func(t *testing.T) {
		core, err := tls.X509KeyPair(coreCert, coreKey)
		if err != nil {
			t.Fatal(err)
		}
		config := &tls.Config{RootCAs: roots, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &core, nil }}
		wantStatus(t, call(t, dial(t, config)), codes.Unavailable, "")
	})
	t.Run("livez finds the TLS listener alive", func(t *testing.T) {
		if response := get(t, health.Handler(), "/livez"); response.Code != 200 {
			t.Errorf("/livez = %d %q", response.Code, response.Body.String())
		}
	})
}
