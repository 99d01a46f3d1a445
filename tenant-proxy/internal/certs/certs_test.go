package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"
)

// wait bounds every wait of these tests for what happens at once in working code.
const wait = 10 * time.Second

// --- certificates ---

type authority struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

type leaf struct {
	cert    *x509.Certificate
	certPEM []byte
	keyPEM  []byte
}

// profile is what a leaf certificate is for.
type profile struct {
	usages   []x509.ExtKeyUsage
	dns      []string
	ips      []net.IP
	notAfter time.Time
}

var (
	serverAuth = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	clientAuth = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	localhost  = []net.IP{net.IPv4(127, 0, 0, 1)}
)

func serial(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func certPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func keyPEM(t *testing.T, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// newCA is a self-signed CA valid until notAfter (whole seconds, as X.509 keeps them).
func newCA(t *testing.T, name string, notAfter time.Time) *authority {
	t.Helper()
	key := newKey(t)
	template := &x509.Certificate{
		SerialNumber: serial(t), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter.UTC().Truncate(time.Second),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &authority{cert: cert, key: key, pem: certPEM(der)}
}

func (a *authority) issue(t *testing.T, name string, p profile) *leaf {
	t.Helper()
	if p.notAfter.IsZero() {
		p.notAfter = time.Now().Add(24 * time.Hour)
	}
	key := newKey(t)
	template := &x509.Certificate{
		SerialNumber: serial(t), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: p.notAfter.UTC().Truncate(time.Second),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: p.usages, DNSNames: p.dns, IPAddresses: p.ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, a.cert, &key.PublicKey, a.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &leaf{cert: cert, certPEM: certPEM(der), keyPEM: keyPEM(t, key)}
}

func (l *leaf) tls(t *testing.T) tls.Certificate {
	t.Helper()
	pair, err := tls.X509KeyPair(l.certPEM, l.keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

func pool(cas ...*authority) *x509.CertPool {
	p := x509.NewCertPool()
	for _, ca := range cas {
		p.AddCert(ca.cert)
	}
	return p
}

func bundlePEM(cas ...*authority) []byte {
	var b []byte
	for _, ca := range cas {
		b = append(b, ca.pem...)
	}
	return b
}

// --- kubelet's mounts ---

// volume is a directory laid out as kubelet mounts a Secret or ConfigMap: each file a symlink into `..data`, a
// symlink to a versioned directory; an update writes a new version and renames a new `..data_tmp` over `..data`.
type volume struct {
	dir     string
	version int
}

func newVolume(t *testing.T, dir string, files map[string][]byte) *volume {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	v := &volume{dir: dir}
	v.swap(t, files)
	for name := range files {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return v
}

func (v *volume) swap(t *testing.T, files map[string][]byte) {
	t.Helper()
	v.version++
	version := fmt.Sprintf("..2026_01_01_00_00_%02d.%d", v.version, v.version)
	if err := os.Mkdir(filepath.Join(v.dir, version), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(v.dir, version, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old, _ := os.Readlink(filepath.Join(v.dir, "..data"))
	if err := os.Symlink(version, filepath.Join(v.dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(v.dir, "..data_tmp"), filepath.Join(v.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(v.dir, old)); err != nil {
			t.Fatal(err)
		}
	}
}

// pki is everything the proxy's pod mounts, and the authorities behind it.
type pki struct {
	servingCA, clientCA, coreCA, coreClientCA *authority
	serving, tenant, coreServer, coreClient   *leaf

	files                         Files
	server, ca, coreCAs, coreCert *volume
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	p := &pki{
		servingCA:    newCA(t, "tenant serving CA", time.Now().Add(72*time.Hour)),
		clientCA:     newCA(t, "tenant client CA", time.Now().Add(72*time.Hour)),
		coreCA:       newCA(t, "core etcd CA", time.Now().Add(96*time.Hour)),
		coreClientCA: newCA(t, "core etcd client CA", time.Now().Add(96*time.Hour)),
	}
	p.serving = p.servingCA.issue(t, "etcd-1", profile{usages: serverAuth, dns: []string{"etcd-1.tenants.svc"}, ips: localhost, notAfter: time.Now().Add(10 * time.Hour)})
	p.tenant = p.clientCA.issue(t, "kube-apiserver", profile{usages: clientAuth})
	p.coreServer = p.coreCA.issue(t, "core etcd", profile{usages: serverAuth, ips: localhost})
	p.coreClient = p.coreClientCA.issue(t, "", profile{usages: clientAuth, notAfter: time.Now().Add(5 * time.Hour)})

	root := t.TempDir()
	p.server = newVolume(t, filepath.Join(root, "server"), map[string][]byte{"tls.crt": p.serving.certPEM, "tls.key": p.serving.keyPEM})
	p.ca = newVolume(t, filepath.Join(root, "ca"), map[string][]byte{"client-ca.crt": p.clientCA.pem})
	p.coreCAs = newVolume(t, filepath.Join(root, "core-ca"), map[string][]byte{"ca.crt": p.coreCA.pem})
	p.coreCert = newVolume(t, filepath.Join(root, "core-client"), map[string][]byte{"tls.crt": p.coreClient.certPEM, "tls.key": p.coreClient.keyPEM})
	p.files = Files{
		ServingCert: filepath.Join(root, "server", "tls.crt"), ServingKey: filepath.Join(root, "server", "tls.key"),
		ClientCA: filepath.Join(root, "ca", "client-ca.crt"),
		CoreCA:   filepath.Join(root, "core-ca", "ca.crt"),
		CoreCert: filepath.Join(root, "core-client", "tls.crt"), CoreKey: filepath.Join(root, "core-client", "tls.key"),
	}
	return p
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// --- handshakes over loopback TCP ---

type handshakeResult struct {
	server    tls.ConnectionState
	serverErr error
	clientErr error
}

// handshake runs one TLS handshake between server and client configurations. After its handshake the client
// reads a byte the server writes once its own handshake succeeded: in TLS 1.3 the server's verdict on the client
// certificate arrives only then.
func handshake(t *testing.T, server, client *tls.Config) handshakeResult {
	t.Helper()
	var result handshakeResult
	accepted := serveOnce(t, server, func(state tls.ConnectionState, err error) {
		result.server, result.serverErr = state, err
	})
	raw, err := net.DialTimeout("tcp", accepted.addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	conn := tls.Client(raw, client)
	_ = conn.SetDeadline(time.Now().Add(wait))
	result.clientErr = conn.Handshake()
	if result.clientErr == nil {
		result.clientErr = readByte(conn)
	}
	_ = conn.Close()
	within(t, accepted.done)
	return result
}

// readByte reads the byte the server writes after a successful handshake (with its close_notify, perhaps).
func readByte(conn net.Conn) error {
	n, err := conn.Read(make([]byte, 1))
	if n == 1 {
		return nil
	}
	return err
}

type once struct {
	addr string
	done chan struct{}
}

// serveOnce accepts one connection on loopback, handshakes it as TLS server and writes a byte on success.
func serveOnce(t *testing.T, config *tls.Config, report func(tls.ConnectionState, error)) once {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer listener.Close()
		raw, err := listener.Accept()
		if err != nil {
			report(tls.ConnectionState{}, err)
			return
		}
		conn := tls.Server(raw, config)
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(wait))
		err = conn.Handshake()
		report(conn.ConnectionState(), err)
		if err == nil {
			_, _ = conn.Write([]byte("x"))
		}
	}()
	t.Cleanup(func() { _ = listener.Close() })
	return once{addr: listener.Addr().String(), done: done}
}

// within fails the test unless ch is closed, or gives a value, within wait.
func within(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(wait):
		t.Fatalf("nothing happened within %v", wait)
	}
}

// tenantClient is the TLS configuration of a tenant's API server towards the proxy.
func (p *pki) tenantClient(t *testing.T, cert *leaf) *tls.Config {
	t.Helper()
	config := &tls.Config{RootCAs: pool(p.servingCA), ServerName: "etcd-1.tenants.svc", NextProtos: []string{"h2"}}
	if cert != nil {
		// Sent whatever CAs the server names as acceptable (Go's client would otherwise send none), as an
		// attacker's client would.
		pair := cert.tls(t)
		config.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
	}
	return config
}

func loaded(t *testing.T, p *pki) *Source {
	t.Helper()
	source := NewSource(p.files, quietLog())
	if err := source.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	return source
}

// --- Load ---

func TestLoadReadsAValidSet(t *testing.T) {
	p := newPKI(t)
	second := newCA(t, "next tenant client CA", time.Now().Add(30*time.Hour)) // rotation: two CAs in the bundle
	p.ca.swap(t, map[string][]byte{"client-ca.crt": bundlePEM(p.clientCA, second)})

	material, err := Load(p.files)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := map[string]time.Time{
		ServingCertificate: p.serving.cert.NotAfter,
		ClientCA:           second.cert.NotAfter, // the earliest of the bundle
		CoreCA:             p.coreCA.cert.NotAfter,
		CoreCertificate:    p.coreClient.cert.NotAfter,
	}
	for name, notAfter := range want {
		t.Run(fmt.Sprintf("the %s certificate's end is reported", name), func(t *testing.T) {
			if got := material.NotAfter[name]; !got.Equal(notAfter) {
				t.Errorf("NotAfter[%s] = %v, want %v", name, got, notAfter)
			}
		})
	}
	t.Run("no other certificate is reported", func(t *testing.T) {
		if len(material.NotAfter) != len(want) {
			t.Errorf("NotAfter = %v, want the %d of %v", material.NotAfter, len(want), want)
		}
	})
	t.Run("the serving certificate is the one of the files", func(t *testing.T) {
		if material.serving.Leaf == nil || material.serving.Leaf.SerialNumber.Cmp(p.serving.cert.SerialNumber) != 0 {
			t.Errorf("serving certificate is not the one written")
		}
	})
}

func TestLoadSkipsWhatIsNotACertificateInABundle(t *testing.T) {
	p := newPKI(t)
	junk := append([]byte("comment line\n"), keyPEM(t, newKey(t))...)
	junk = append(junk, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")})...)
	junk = append(junk, p.clientCA.pem...)
	p.ca.swap(t, map[string][]byte{"client-ca.crt": junk})
	material, err := Load(p.files)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got := material.NotAfter[ClientCA]; !got.Equal(p.clientCA.cert.NotAfter) {
		t.Errorf("NotAfter[client-ca] = %v, want %v", got, p.clientCA.cert.NotAfter)
	}
}

func TestLoadFailsClearly(t *testing.T) {
	for _, tc := range []struct {
		name     string
		breakSet func(t *testing.T, p *pki) string // breaks the set, returns the file the error must name
		is       error
		says     string
	}{
		{"a missing serving certificate fails, naming the file", func(t *testing.T, p *pki) string {
			p.server.swap(t, map[string][]byte{"tls.key": p.serving.keyPEM})
			return p.files.ServingCert
		}, fs.ErrNotExist, "read "},
		{"a missing core client key fails, naming the file", func(t *testing.T, p *pki) string {
			p.coreCert.swap(t, map[string][]byte{"tls.crt": p.coreClient.certPEM})
			return p.files.CoreKey
		}, fs.ErrNotExist, "read "},
		{"a missing client-CA bundle fails, naming the file", func(t *testing.T, p *pki) string {
			if err := os.Remove(p.files.ClientCA); err != nil {
				t.Fatal(err)
			}
			return p.files.ClientCA
		}, fs.ErrNotExist, "read "},
		{"a serving key that does not match its certificate fails", func(t *testing.T, p *pki) string {
			p.server.swap(t, map[string][]byte{"tls.crt": p.serving.certPEM, "tls.key": keyPEM(t, newKey(t))})
			return p.files.ServingCert
		}, nil, "and its key: tls: private key does not match public key"},
		{"a core client key that does not match its certificate fails", func(t *testing.T, p *pki) string {
			p.coreCert.swap(t, map[string][]byte{"tls.crt": p.coreClient.certPEM, "tls.key": p.serving.keyPEM})
			return p.files.CoreCert
		}, nil, "does not match"},
		{"a serving certificate file that holds a key fails", func(t *testing.T, p *pki) string {
			p.server.swap(t, map[string][]byte{"tls.crt": p.serving.keyPEM, "tls.key": p.serving.keyPEM})
			return p.files.ServingCert
		}, nil, "and its key"},
		{"a client-CA bundle without certificates fails", func(t *testing.T, p *pki) string {
			p.ca.swap(t, map[string][]byte{"client-ca.crt": keyPEM(t, newKey(t))})
			return p.files.ClientCA
		}, nil, "holds no PEM certificate"},
		{"an empty core CA bundle fails", func(t *testing.T, p *pki) string {
			p.coreCAs.swap(t, map[string][]byte{"ca.crt": nil})
			return p.files.CoreCA
		}, nil, "holds no PEM certificate"},
		{"a core CA bundle whose certificate does not parse fails", func(t *testing.T, p *pki) string {
			p.coreCAs.swap(t, map[string][]byte{"ca.crt": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}})})
			return p.files.CoreCA
		}, nil, "holds no PEM certificate"},
		{"a CA bundle of certificates with PEM headers fails, as Go's pool would skip them", func(t *testing.T, p *pki) string {
			block, _ := pem.Decode(p.clientCA.pem)
			block.Headers = map[string]string{"Proc-Type": "4,ENCRYPTED"}
			p.ca.swap(t, map[string][]byte{"client-ca.crt": pem.EncodeToMemory(block)})
			return p.files.ClientCA
		}, nil, "holds no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPKI(t)
			file := tc.breakSet(t, p)
			material, err := Load(p.files)
			if err == nil {
				t.Fatalf("Load succeeded: %v", material.NotAfter)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), tc.says) {
				t.Errorf("error %q does not name %s and say %q", err, file, tc.says)
			}
		})
	}
}

// --- ServerConfig ---

func TestServerConfigRequiresATenantClientCertificate(t *testing.T) {
	p := newPKI(t)
	next := newCA(t, "next tenant client CA", time.Now().Add(72*time.Hour))
	p.ca.swap(t, map[string][]byte{"client-ca.crt": bundlePEM(p.clientCA, next)})
	source := loaded(t, p)
	other := newCA(t, "another tenant's client CA", time.Now().Add(72*time.Hour))

	for _, tc := range []struct {
		name   string
		client func(t *testing.T) *tls.Config
		says   string // in the server's error; "" when the handshake succeeds
	}{
		{"a client certificate of the client CA with clientAuth is accepted", func(t *testing.T) *tls.Config {
			return p.tenantClient(t, p.tenant)
		}, ""},
		{"a client certificate of the bundle's second CA is accepted", func(t *testing.T) *tls.Config {
			return p.tenantClient(t, next.issue(t, "kube-apiserver", profile{usages: clientAuth}))
		}, ""},
		{"TLS 1.2 is accepted", func(t *testing.T) *tls.Config {
			c := p.tenantClient(t, p.tenant)
			c.MaxVersion = tls.VersionTLS12
			return c
		}, ""},
		{"a client certificate with only the serverAuth usage is refused", func(t *testing.T) *tls.Config {
			return p.tenantClient(t, p.clientCA.issue(t, "kube-apiserver", profile{usages: serverAuth}))
		}, "incompatible key usage"},
		{"a client certificate of another CA is refused", func(t *testing.T) *tls.Config {
			return p.tenantClient(t, other.issue(t, "kube-apiserver", profile{usages: clientAuth}))
		}, "unknown authority"},
		{"the serving certificate as a client certificate is refused", func(t *testing.T) *tls.Config {
			return p.tenantClient(t, p.serving)
		}, "unknown authority"},
		{"no client certificate is refused", func(t *testing.T) *tls.Config {
			return p.tenantClient(t, nil)
		}, "certificate"},
		{"TLS 1.1 is refused", func(t *testing.T) *tls.Config {
			c := p.tenantClient(t, p.tenant)
			c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
			return c
		}, "unsupported versions"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := handshake(t, source.ServerConfig(), tc.client(t))
			if tc.says == "" {
				if r.serverErr != nil || r.clientErr != nil {
					t.Fatalf("handshake failed: server %v, client %v", r.serverErr, r.clientErr)
				}
				if r.server.NegotiatedProtocol != "h2" {
					t.Errorf("ALPN = %q, want h2 (grpc-go requires it)", r.server.NegotiatedProtocol)
				}
				if r.server.Version < tls.VersionTLS12 {
					t.Errorf("TLS version %x", r.server.Version)
				}
				return
			}
			if r.serverErr == nil || !strings.Contains(r.serverErr.Error(), tc.says) {
				t.Errorf("server error = %v, want one that says %q", r.serverErr, tc.says)
			}
			if r.clientErr == nil {
				t.Errorf("the client did not see the refusal")
			}
		})
	}
}

func TestServerConfigWithoutCertificatesRefusesEveryHandshake(t *testing.T) {
	p := newPKI(t)
	source := NewSource(p.files, quietLog()) // never loaded
	r := handshake(t, source.ServerConfig(), p.tenantClient(t, p.tenant))
	if !errors.Is(r.serverErr, errNotLoaded) {
		t.Errorf("server error = %v, want %v", r.serverErr, errNotLoaded)
	}
	if r.clientErr == nil {
		t.Errorf("the client's handshake succeeded")
	}
}

// --- Reload ---

// servedSerial is the serial of the serving certificate a tenant gets now.
func servedSerial(t *testing.T, p *pki, source *Source) *big.Int {
	t.Helper()
	var got *big.Int
	client := p.tenantClient(t, p.tenant)
	client.VerifyConnection = func(state tls.ConnectionState) error {
		got = state.PeerCertificates[0].SerialNumber
		return nil
	}
	if r := handshake(t, source.ServerConfig(), client); r.serverErr != nil || r.clientErr != nil {
		t.Fatalf("handshake failed: server %v, client %v", r.serverErr, r.clientErr)
	}
	return got
}

// callbacks records what a Source tells of its reloads; they may come from Watch's goroutine.
type callbacks struct {
	mu       sync.Mutex
	changes  []*Material
	failures []error
	changed  chan struct{}
	failed   chan struct{}
}

func watchCallbacks(source *Source) *callbacks {
	c := &callbacks{changed: make(chan struct{}, 1), failed: make(chan struct{}, 1)}
	source.OnChange = func(m *Material) {
		c.mu.Lock()
		c.changes = append(c.changes, m)
		c.mu.Unlock()
		select { // a signal, never a wait: Watch calls on every tick
		case c.changed <- struct{}{}:
		default:
		}
	}
	source.OnFailure = func(err error) {
		c.mu.Lock()
		c.failures = append(c.failures, err)
		c.mu.Unlock()
		select {
		case c.failed <- struct{}{}:
		default:
		}
	}
	return c
}

func (c *callbacks) counts() (changes, failures int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.changes), len(c.failures)
}

func TestReload(t *testing.T) {
	p := newPKI(t)
	source := NewSource(p.files, quietLog())
	calls := watchCallbacks(source)
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"the first load puts the set in use and tells OnChange", func(t *testing.T) {
			if err := source.Reload(); err != nil {
				t.Fatal(err)
			}
			if changes, failures := calls.counts(); changes != 1 || failures != 0 {
				t.Errorf("OnChange %d times, OnFailure %d times; want 1, 0", changes, failures)
			}
			if got := servedSerial(t, p, source); got.Cmp(p.serving.cert.SerialNumber) != 0 {
				t.Errorf("served %v, want %v", got, p.serving.cert.SerialNumber)
			}
		}},
		{"a reload of unchanged files keeps the set and tells no one", func(t *testing.T) {
			before := source.Current()
			if err := source.Reload(); err != nil {
				t.Fatal(err)
			}
			if source.Current() != before {
				t.Errorf("the set was replaced")
			}
			if changes, _ := calls.counts(); changes != 1 {
				t.Errorf("OnChange %d times, want 1", changes)
			}
		}},
		{"after a swap, the next handshake gets the new serving certificate", func(t *testing.T) {
			renewed := p.servingCA.issue(t, "etcd-1", profile{usages: serverAuth, dns: []string{"etcd-1.tenants.svc"}, notAfter: time.Now().Add(20 * time.Hour)})
			p.server.swap(t, map[string][]byte{"tls.crt": renewed.certPEM, "tls.key": renewed.keyPEM})
			if err := source.Reload(); err != nil {
				t.Fatal(err)
			}
			if got := servedSerial(t, p, source); got.Cmp(renewed.cert.SerialNumber) != 0 {
				t.Errorf("served %v, want the new %v", got, renewed.cert.SerialNumber)
			}
			if got := source.Current().NotAfter[ServingCertificate]; !got.Equal(renewed.cert.NotAfter) {
				t.Errorf("NotAfter = %v, want %v", got, renewed.cert.NotAfter)
			}
			if changes, _ := calls.counts(); changes != 2 {
				t.Errorf("OnChange %d times, want 2", changes)
			}
			p.serving = renewed
		}},
		{"a broken swap keeps the old set and tells OnFailure", func(t *testing.T) {
			before := source.Current()
			broken := p.servingCA.issue(t, "etcd-1", profile{usages: serverAuth, dns: []string{"etcd-1.tenants.svc"}})
			p.server.swap(t, map[string][]byte{"tls.crt": broken.certPEM, "tls.key": p.serving.keyPEM})
			err := source.Reload()
			if err == nil {
				t.Fatal("Reload succeeded")
			}
			if source.Current() != before {
				t.Errorf("the set was replaced")
			}
			calls.mu.Lock()
			failures := append([]error(nil), calls.failures...)
			calls.mu.Unlock()
			if len(failures) != 1 || failures[0] != err {
				t.Errorf("OnFailure got %v, want [%v]", failures, err)
			}
			if got := servedSerial(t, p, source); got.Cmp(p.serving.cert.SerialNumber) != 0 {
				t.Errorf("served %v, want the old %v", got, p.serving.cert.SerialNumber)
			}
		}},
		{"a repaired swap back to the set in use changes nothing and fails nothing", func(t *testing.T) {
			p.server.swap(t, map[string][]byte{"tls.crt": p.serving.certPEM, "tls.key": p.serving.keyPEM})
			if err := source.Reload(); err != nil {
				t.Fatal(err)
			}
			if changes, failures := calls.counts(); changes != 2 || failures != 1 {
				t.Errorf("OnChange %d times, OnFailure %d times; want 2, 1", changes, failures)
			}
		}},
		{"after a client-CA swap, the old CA's clients are refused and the new CA's accepted", func(t *testing.T) {
			next := newCA(t, "next tenant client CA", time.Now().Add(72*time.Hour))
			p.ca.swap(t, map[string][]byte{"client-ca.crt": next.pem})
			if err := source.Reload(); err != nil {
				t.Fatal(err)
			}
			if r := handshake(t, source.ServerConfig(), p.tenantClient(t, p.tenant)); r.serverErr == nil {
				t.Errorf("a client of the old CA was accepted")
			}
			nextTenant := next.issue(t, "kube-apiserver", profile{usages: clientAuth})
			if r := handshake(t, source.ServerConfig(), p.tenantClient(t, nextTenant)); r.serverErr != nil || r.clientErr != nil {
				t.Errorf("a client of the new CA was refused: %v, %v", r.serverErr, r.clientErr)
			}
		}},
	}
	for _, step := range steps {
		if !t.Run(step.name, step.run) {
			break // each step builds on the one before
		}
	}
}

func TestWatchReloadsUntilItsContextEnds(t *testing.T) {
	p := newPKI(t)
	source := loaded(t, p)
	calls := watchCallbacks(source)
	ctx, cancel := context.WithCancel(t.Context())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		source.Watch(ctx, 5*time.Millisecond)
	}()
	t.Cleanup(func() {
		cancel()
		within(t, stopped)
	})

	t.Run("a swap is put in use by the next tick", func(t *testing.T) {
		renewed := p.servingCA.issue(t, "etcd-1", profile{usages: serverAuth, dns: []string{"etcd-1.tenants.svc"}, notAfter: time.Now().Add(40 * time.Hour)})
		p.server.swap(t, map[string][]byte{"tls.crt": renewed.certPEM, "tls.key": renewed.keyPEM})
		within(t, calls.changed)
		if got := source.Current().NotAfter[ServingCertificate]; !got.Equal(renewed.cert.NotAfter) {
			t.Errorf("NotAfter = %v, want %v", got, renewed.cert.NotAfter)
		}
	})
	t.Run("a broken swap is reported and the set in use kept", func(t *testing.T) {
		before := source.Current()
		p.coreCAs.swap(t, map[string][]byte{"ca.crt": []byte("broken")})
		within(t, calls.failed)
		if source.Current() != before {
			t.Errorf("the set was replaced")
		}
	})
	t.Run("Watch returns once its context ends", func(t *testing.T) {
		cancel()
		within(t, stopped)
	})
}

// --- ClientCredentials ---

// coreServer is a TLS configuration as the core etcd's: its serving certificate, client certificates required.
func coreServer(t *testing.T, cert *leaf, clientCAs ...*authority) *tls.Config {
	t.Helper()
	return &tls.Config{
		Certificates: []tls.Certificate{cert.tls(t)}, ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs: pool(clientCAs...), NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12,
	}
}

type coreHandshake struct {
	server     tls.ConnectionState
	serverErr  error
	clientErr  error
	clientInfo credentials.AuthInfo
}

// dialCore runs the proxy's side of a handshake with the core, as grpc-go does it: ClientHandshake with the
// authority dialled.
func dialCore(t *testing.T, creds credentials.TransportCredentials, server *tls.Config, authority string) coreHandshake {
	t.Helper()
	var result coreHandshake
	accepted := serveOnce(t, server, func(state tls.ConnectionState, err error) { result.server, result.serverErr = state, err })
	raw, err := net.DialTimeout("tcp", accepted.addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	conn, info, err := creds.ClientHandshake(ctx, authority, raw)
	result.clientErr, result.clientInfo = err, info
	if err == nil {
		_ = conn.SetDeadline(time.Now().Add(wait))
		result.clientErr = readByte(conn)
		_ = conn.Close()
	}
	_ = raw.Close()
	within(t, accepted.done)
	return result
}

func TestClientCredentials(t *testing.T) {
	p := newPKI(t)
	source := loaded(t, p)
	unknown := newCA(t, "unknown CA", time.Now().Add(time.Hour))
	for _, tc := range []struct {
		name      string
		server    func(t *testing.T) *tls.Config
		authority string
		says      string // in the client's error; "" when the handshake succeeds
	}{
		{"a core certificate with only the IP SAN dialled is trusted", func(t *testing.T) *tls.Config {
			return coreServer(t, p.coreServer, p.coreClientCA)
		}, "127.0.0.1:2379", ""},
		{"a core certificate for another IP is refused", func(t *testing.T) *tls.Config {
			return coreServer(t, p.coreCA.issue(t, "core", profile{usages: serverAuth, ips: []net.IP{net.IPv4(10, 0, 0, 1)}}), p.coreClientCA)
		}, "127.0.0.1:2379", "not 127.0.0.1"},
		{"a core certificate with only an IP SAN, dialled by name, is refused", func(t *testing.T) *tls.Config {
			return coreServer(t, p.coreServer, p.coreClientCA)
		}, "etcd.core.svc:2379", "certificate"},
		{"a core certificate for a name, dialled by IP, is refused", func(t *testing.T) *tls.Config {
			return coreServer(t, p.coreCA.issue(t, "core", profile{usages: serverAuth, dns: []string{"etcd.core.svc"}}), p.coreClientCA)
		}, "127.0.0.1:2379", "127.0.0.1"},
		{"a core certificate for the name dialled is trusted", func(t *testing.T) *tls.Config {
			return coreServer(t, p.coreCA.issue(t, "core", profile{usages: serverAuth, dns: []string{"etcd.core.svc"}}), p.coreClientCA)
		}, "etcd.core.svc:2379", ""},
		{"a core certificate of an unknown CA is refused", func(t *testing.T) *tls.Config {
			return coreServer(t, unknown.issue(t, "core", profile{usages: serverAuth, ips: localhost}), p.coreClientCA)
		}, "127.0.0.1:2379", "unknown authority"},
		{"a core certificate with only the clientAuth usage is refused", func(t *testing.T) *tls.Config {
			return coreServer(t, p.coreCA.issue(t, "core", profile{usages: clientAuth, ips: localhost}), p.coreClientCA)
		}, "127.0.0.1:2379", "incompatible key usage"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := dialCore(t, source.ClientCredentials(), tc.server(t), tc.authority)
			if tc.says != "" {
				if r.clientErr == nil || !strings.Contains(r.clientErr.Error(), tc.says) {
					t.Errorf("client error = %v, want one that says %q", r.clientErr, tc.says)
				}
				return
			}
			if r.clientErr != nil || r.serverErr != nil {
				t.Fatalf("handshake failed: client %v, server %v", r.clientErr, r.serverErr)
			}
			if got := r.server.PeerCertificates[0].SerialNumber; got.Cmp(p.coreClient.cert.SerialNumber) != 0 {
				t.Errorf("the core saw the client certificate %v, want %v", got, p.coreClient.cert.SerialNumber)
			}
			info, ok := r.clientInfo.(credentials.TLSInfo)
			if !ok || info.State.NegotiatedProtocol != "h2" {
				t.Errorf("AuthInfo = %#v, want TLS info with ALPN h2", r.clientInfo)
			}
		})
	}
}

func TestClientCredentialsUseTheSetInUseAtEachHandshake(t *testing.T) {
	p := newPKI(t)
	source := loaded(t, p)
	creds := source.ClientCredentials()
	nextCA := newCA(t, "next core CA", time.Now().Add(96*time.Hour))
	nextClientCA := newCA(t, "next core client CA", time.Now().Add(96*time.Hour))
	nextServer := coreServer(t, nextCA.issue(t, "core", profile{usages: serverAuth, ips: localhost}), nextClientCA)
	nextClient := nextClientCA.issue(t, "", profile{usages: clientAuth})

	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"before the swap, a core of the new CA is not trusted", func(t *testing.T) {
			if r := dialCore(t, creds, nextServer, "127.0.0.1:2379"); r.clientErr == nil {
				t.Errorf("the handshake succeeded")
			}
		}},
		{"swapped files are not used before Reload", func(t *testing.T) {
			p.coreCAs.swap(t, map[string][]byte{"ca.crt": nextCA.pem})
			p.coreCert.swap(t, map[string][]byte{"tls.crt": nextClient.certPEM, "tls.key": nextClient.keyPEM})
			if r := dialCore(t, creds, nextServer, "127.0.0.1:2379"); r.clientErr == nil {
				t.Errorf("the handshake succeeded")
			}
		}},
		{"after Reload, the next handshake trusts the new CA and shows the new client certificate", func(t *testing.T) {
			if err := source.Reload(); err != nil {
				t.Fatal(err)
			}
			r := dialCore(t, creds, nextServer, "127.0.0.1:2379")
			if r.clientErr != nil || r.serverErr != nil {
				t.Fatalf("handshake failed: client %v, server %v", r.clientErr, r.serverErr)
			}
			if got := r.server.PeerCertificates[0].SerialNumber; got.Cmp(nextClient.cert.SerialNumber) != 0 {
				t.Errorf("the core saw the client certificate %v, want the new %v", got, nextClient.cert.SerialNumber)
			}
		}},
		{"after Reload, the old core is not trusted any more", func(t *testing.T) {
			if r := dialCore(t, creds, coreServer(t, p.coreServer, p.coreClientCA, nextClientCA), "127.0.0.1:2379"); r.clientErr == nil {
				t.Errorf("the handshake succeeded")
			}
		}},
		{"a clone of the credentials follows the source too", func(t *testing.T) {
			if r := dialCore(t, creds.Clone(), nextServer, "127.0.0.1:2379"); r.clientErr != nil || r.serverErr != nil {
				t.Errorf("handshake failed: client %v, server %v", r.clientErr, r.serverErr)
			}
		}},
	}
	for _, step := range steps {
		if !t.Run(step.name, step.run) {
			break
		}
	}
}

func TestClientCredentialsWithoutCertificates(t *testing.T) {
	p := newPKI(t)
	creds := NewSource(p.files, quietLog()).ClientCredentials()
	t.Run("a handshake before any set is loaded fails with the reason", func(t *testing.T) {
		client, server := net.Pipe()
		defer client.Close()
		defer server.Close()
		if _, _, err := creds.ClientHandshake(t.Context(), "127.0.0.1:2379", client); !errors.Is(err, errNotLoaded) {
			t.Errorf("error = %v, want %v", err, errNotLoaded)
		}
	})
	t.Run("the credentials serve no server side", func(t *testing.T) {
		client, server := net.Pipe()
		defer client.Close()
		defer server.Close()
		if _, _, err := creds.ServerHandshake(server); err == nil {
			t.Errorf("ServerHandshake succeeded")
		}
	})
	t.Run("the credentials are TLS", func(t *testing.T) {
		if info := creds.Info(); info.SecurityProtocol != "tls" {
			t.Errorf("Info = %+v", info)
		}
	})
	t.Run("the name dialled cannot be overridden", func(t *testing.T) {
		if err := creds.OverrideServerName("other"); err == nil {
			t.Errorf("OverrideServerName succeeded")
		}
	})
}
