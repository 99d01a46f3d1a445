// Package certs keeps the proxy's TLS material current: the serving certificate and the tenant's client-CA bundle
// towards the tenant, the core etcd's CA bundle and the proxy's client certificate towards the core. Files are read
// again every interval; a complete, valid new set replaces the old one for new handshakes, while open connections
// keep the session they have. A broken set is reported and ignored: the last good one stays in use.
package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"
)

// Files are the paths of the material, as the pod mounts it.
type Files struct {
	ServingCert, ServingKey string // the proxy's serving certificate, from <N>-server-cert
	ClientCA                string // the tenant's client-CA bundle, from <N>-ca-cert
	CoreCA                  string // the core etcd's CA bundle
	CoreCert, CoreKey       string // the proxy's client certificate for the core etcd
}

// Material is one complete, valid set.
type Material struct {
	serving   tls.Certificate
	clientCAs *x509.CertPool
	coreCAs   *x509.CertPool
	core      tls.Certificate
	raw       [][]byte             // file contents, to tell a change
	NotAfter  map[string]time.Time // per certificate (the earliest of a bundle), for the expiry metric
}

// Names of the certificates in Material.NotAfter (the `certificate` label of the expiry metric).
const (
	ServingCertificate = "serving"
	ClientCA           = "client-ca"
	CoreCA             = "core-ca"
	CoreCertificate    = "core-client"
)

// Load reads and checks every file.
func Load(files Files) (*Material, error) {
	raw := make([][]byte, 0, 6)
	for _, path := range []string{files.ServingCert, files.ServingKey, files.ClientCA, files.CoreCA, files.CoreCert, files.CoreKey} {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		raw = append(raw, data)
	}
	material := &Material{raw: raw, NotAfter: map[string]time.Time{}}
	var err error
	if material.serving, err = pair(raw[0], raw[1], files.ServingCert); err != nil {
		return nil, err
	}
	if material.core, err = pair(raw[4], raw[5], files.CoreCert); err != nil {
		return nil, err
	}
	if material.clientCAs, material.NotAfter[ClientCA], err = bundle(raw[2], files.ClientCA); err != nil {
		return nil, err
	}
	if material.coreCAs, material.NotAfter[CoreCA], err = bundle(raw[3], files.CoreCA); err != nil {
		return nil, err
	}
	material.NotAfter[ServingCertificate] = material.serving.Leaf.NotAfter
	material.NotAfter[CoreCertificate] = material.core.Leaf.NotAfter
	return material, nil
}

func (m *Material) same(other *Material) bool {
	for i := range m.raw {
		if !bytes.Equal(m.raw[i], other.raw[i]) {
			return false
		}
	}
	return true
}

func pair(cert, key []byte, where string) (tls.Certificate, error) {
	loaded, err := tls.X509KeyPair(cert, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate %s and its key: %w", where, err)
	}
	return loaded, nil // Go 1.23+ fills Leaf
}

func bundle(data []byte, where string) (*x509.CertPool, time.Time, error) {
	pool := x509.NewCertPool()
	var earliest time.Time
	for rest := data; ; {
		var cert *x509.Certificate
		cert, rest = nextCertificate(rest)
		if cert == nil {
			break
		}
		pool.AddCert(cert)
		if earliest.IsZero() || cert.NotAfter.Before(earliest) {
			earliest = cert.NotAfter
		}
	}
	if earliest.IsZero() {
		return nil, time.Time{}, fmt.Errorf("CA bundle %s holds no PEM certificate", where)
	}
	return pool, earliest, nil
}

// Source holds the current material and reloads it.
type Source struct {
	files   Files
	current atomic.Pointer[Material]
	log     *slog.Logger
	// OnChange, when set, is told of every set put in use (the first one included).
	OnChange func(*Material)
	// OnFailure, when set, is told of every reload that found a broken set.
	OnFailure func(error)
}

// NewSource reads the files once; until a valid set exists every handshake fails with a clear error, and Reload
// keeps trying.
func NewSource(files Files, log *slog.Logger) *Source {
	return &Source{files: files, log: log}
}

// Current is the set in use, or nil before the first valid one.
func (s *Source) Current() *Material { return s.current.Load() }

// Reload reads the files and puts a changed, valid set in use.
func (s *Source) Reload() error {
	material, err := Load(s.files)
	if err != nil {
		if s.OnFailure != nil {
			s.OnFailure(err)
		}
		return err
	}
	if old := s.current.Load(); old != nil && old.same(material) {
		return nil
	}
	s.current.Store(material)
	s.log.Info("certificates loaded",
		"serving_not_after", material.NotAfter[ServingCertificate],
		"client_ca_not_after", material.NotAfter[ClientCA],
		"core_ca_not_after", material.NotAfter[CoreCA],
		"core_client_not_after", material.NotAfter[CoreCertificate])
	if s.OnChange != nil {
		s.OnChange(material)
	}
	return nil
}

// Watch reloads every interval until ctx ends. Kubelet swaps a mounted Secret's or ConfigMap's files at once (the
// `..data` symlink), so a read sees one version of each volume; a set that does not fit together yet (a new
// serving certificate before its key, written by hand) fails to load and is tried again next time.
func (s *Source) Watch(ctx context.Context, interval time.Duration) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			if err := s.Reload(); err != nil {
				s.log.Error("certificates not reloaded: keeping the ones in use", "error", err)
			}
		}
	}
}

var errNotLoaded = errors.New("etcdstorage tenant proxy: no valid certificates loaded yet (see its log)")

// ServerConfig is the TLS configuration towards tenants: TLS 1.2 or newer, a client certificate that chains to the
// tenant's client-CA bundle with the clientAuth usage (Go checks it for client certificates), each handshake with
// the material current at that moment.
func (s *Source) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			material := s.Current()
			if material == nil {
				return nil, errNotLoaded
			}
			return &tls.Config{
				MinVersion:   tls.VersionTLS12,
				Certificates: []tls.Certificate{material.serving},
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    material.clientCAs,
				NextProtos:   []string{"h2"}, // gRPC: grpc-go requires ALPN
			}, nil
		},
	}
}

// ClientCredentials are the gRPC transport credentials towards the core etcd. Go's TLS configuration takes its
// roots once, so each handshake gets a configuration of its own, with the CA bundle and the client certificate
// current at that moment; verification is Go's standard one (chain, serverAuth usage, the name or IP dialled).
func (s *Source) ClientCredentials() credentials.TransportCredentials {
	return &clientCredentials{source: s}
}

type clientCredentials struct{ source *Source }

func (c *clientCredentials) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	material := c.source.Current()
	if material == nil {
		return nil, nil, errNotLoaded
	}
	config := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		RootCAs:      material.coreCAs,
		Certificates: []tls.Certificate{material.core},
	}
	return credentials.NewTLS(config).ClientHandshake(ctx, authority, conn)
}

func (c *clientCredentials) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("client credentials only")
}

func (c *clientCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.2"}
}

func (c *clientCredentials) Clone() credentials.TransportCredentials {
	return &clientCredentials{source: c.source}
}

// OverrideServerName is deprecated in grpc-go and never called by it; the name dialled is always verified.
func (c *clientCredentials) OverrideServerName(string) error {
	return errors.New("the core etcd's name is not overridden")
}
