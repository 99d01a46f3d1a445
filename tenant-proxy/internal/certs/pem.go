package certs

import (
	"crypto/x509"
	"encoding/pem"
)

// nextCertificate is the first parsable CERTIFICATE block of data and what follows it; nil when none is left.
// Blocks of other types and unparsable certificates are skipped, as x509.CertPool.AppendCertsFromPEM skips them.
func nextCertificate(data []byte) (*x509.Certificate, []byte) {
	for len(data) > 0 {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, nil
		}
		if block.Type != "CERTIFICATE" || len(block.Headers) != 0 {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			continue
		}
		return cert, data
	}
	return nil, nil
}
