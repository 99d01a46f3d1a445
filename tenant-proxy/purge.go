package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"etcdstorage.local/tenant-proxy/internal/purge"
)

// purgeCommand is `tenant-proxy purge-prefix`: delete (or, with --count-only, count) one tenant's keys in the core
// etcd and print the result as one JSON line, {"prefix", "deleted", "remaining"}. The cert-rotation job runs it for
// an EtcdStorage deleted with deletionPolicy Delete. Exit 0 when the run finished (remaining is then the count
// left), 1 when the core etcd failed or the timeout ended the run (the line says what was done), 2 for bad flags.
func purgeCommand(args []string) int {
	flags := flag.NewFlagSet("tenant-proxy purge-prefix", flag.ContinueOnError)
	root := flags.String("root", "/etcdstorage/", "the key-prefix root (ETCDSTORAGE_KEY_PREFIX_ROOT)")
	name := flags.String("name", "", "the EtcdStorage's name (required)")
	endpoints := flags.String("endpoints", "", "the core etcd's client URLs, comma-separated (required)")
	tlsInfo := transport.TLSInfo{}
	flags.StringVar(&tlsInfo.TrustedCAFile, "core-ca-file", "", "CA bundle of the core etcd (required)")
	flags.StringVar(&tlsInfo.CertFile, "core-cert-file", "", "client certificate for the core etcd (required)")
	flags.StringVar(&tlsInfo.KeyFile, "core-key-file", "", "client key for the core etcd (required)")
	countOnly := flags.Bool("count-only", false, "count the keys, delete nothing")
	batch := flags.Int64("batch", 1000, "most keys one DeleteRange deletes")
	timeout := flags.Duration("timeout", 50*time.Second, "how long the whole run may take")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	prefix, err := purge.Prefix(*root, *name)
	switch {
	case err != nil:
	case flags.NArg() != 0:
		err = fmt.Errorf("unexpected arguments %q", flags.Args())
	case *endpoints == "":
		err = errors.New("--endpoints is required: the core etcd's client URLs")
	case tlsInfo.TrustedCAFile == "" || tlsInfo.CertFile == "" || tlsInfo.KeyFile == "":
		err = errors.New("--core-ca-file, --core-cert-file and --core-key-file are required")
	case *batch < 1 || *timeout <= 0:
		err = errors.New("--batch and --timeout must be positive")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tenant-proxy purge-prefix:", err)
		return 2
	}
	result, err := purgeRun(prefix, strings.Split(*endpoints, ","), tlsInfo, *batch, *timeout, *countOnly)
	if line, marshalErr := json.Marshal(result); marshalErr == nil {
		fmt.Println(string(line))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tenant-proxy purge-prefix:", err)
		return 1
	}
	return 0
}

func purgeRun(prefix string, endpoints []string, tlsInfo transport.TLSInfo, batch int64, timeout time.Duration, countOnly bool) (purge.Result, error) {
	tlsConfig, err := tlsInfo.ClientConfig()
	if err != nil {
		return purge.Result{Prefix: prefix}, fmt.Errorf("core etcd TLS material: %w", err)
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		TLS:         tlsConfig,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(), // the one error that matters is returned, and printed as the last line
	})
	if err != nil {
		return purge.Result{Prefix: prefix}, fmt.Errorf("core etcd client: %w", err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return purge.Run(ctx, client.KV, prefix, batch, countOnly)
}
