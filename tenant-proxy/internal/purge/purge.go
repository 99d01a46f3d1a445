// Package purge deletes one tenant's keys from the core etcd, for an EtcdStorage deleted with deletionPolicy Delete.
// It touches exactly one prefix, built here from the root and the tenant's name as the hook builds it, never a prefix
// given whole: a root or name that could reach the core API server's keys (`/registry/...`) or every tenant's
// (`/<root>/` alone) is refused before a connection is made. Keys go
// in batches, each one DeleteRange over keys just listed, so no single request deletes more than a batch: a large
// tenant never becomes one huge raft entry that stalls the core etcd for everyone.
package purge

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// label is one DNS label, as the settings allow for the prefix root's segments and the CRD for a tenant's name.
var label = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// maxLabel is a DNS label's length limit (a tenant name is shorter still, which the CRD enforces).
const maxLabel = 63

// Reserved are the top-level keys of other systems in a core etcd (etcdstorage.names.RESERVED_NAMES, held equal by
// a test): `/registry/` is the core API server's. A root may not start with one, nor a name under the root `/`.
var Reserved = map[string]bool{
	"registry": true, "calico": true, "cilium": true, "coreos": true, "flannel": true,
	"kubernetes": true, "openshift": true, "skydns": true, "traefik": true,
}

// Prefix is a tenant's key prefix, `/<root>/<name>/` or `/<name>/` for the root `/`, as etcdstorage.names.key_prefix
// builds it; an error when the root or the name could make it reach beyond one tenant's keys.
func Prefix(root, name string) (string, error) {
	var segments []string
	for _, part := range strings.Split(root, "/") {
		if part != "" {
			segments = append(segments, part)
		}
	}
	for _, part := range segments {
		if len(part) > maxLabel || !label.MatchString(part) {
			return "", fmt.Errorf("--root=%q: segment %q is not a DNS label", root, part)
		}
	}
	if len(segments) > 0 && Reserved[segments[0]] {
		return "", fmt.Errorf("--root=%q: /%s/ holds another system's keys", root, segments[0])
	}
	if len(name) > maxLabel || !label.MatchString(name) {
		return "", fmt.Errorf("--name=%q: not a DNS label", name)
	}
	if len(segments) == 0 && Reserved[name] {
		return "", fmt.Errorf("--name=%q: under the root / it is another system's keys", name)
	}
	return "/" + strings.Join(append(segments, name), "/") + "/", nil
}

// Result is what a run did: the keys deleted, and those left (0 when the prefix is empty, nil when not counted
// because the run failed first).
type Result struct {
	Prefix    string `json:"prefix"`
	Deleted   int64  `json:"deleted"`
	Remaining *int64 `json:"remaining"`
}

// Run deletes every key under prefix, batch keys at a time, until none is left or ctx ends; with countOnly it
// deletes nothing. The count of what is left is read last, so a Result with Remaining 0 is the truth at that moment.
// When ctx ends between batches the Result holds what was done and the error says so.
func Run(ctx context.Context, kv clientv3.KV, prefix string, batch int64, countOnly bool) (Result, error) {
	result := Result{Prefix: prefix}
	if batch < 1 {
		return result, errors.New("batch must be positive")
	}
	for !countOnly {
		listed, err := kv.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithLimit(batch))
		if err != nil {
			return result, fmt.Errorf("list keys under %s: %w", prefix, err)
		}
		if len(listed.Kvs) == 0 {
			break
		}
		key, end := span(listed.Kvs[0].Key, listed.Kvs[len(listed.Kvs)-1].Key)
		deleted, err := kv.Delete(ctx, string(key), clientv3.WithRange(string(end)))
		if err != nil {
			return result, fmt.Errorf("delete keys under %s: %w", prefix, err)
		}
		result.Deleted += deleted.Deleted
	}
	counted, err := kv.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return result, fmt.Errorf("count keys under %s: %w", prefix, err)
	}
	result.Remaining = &counted.Count
	return result, nil
}

// span is the interval [first, last] of listed keys as etcd's half-open [key, end): last followed by a zero byte is
// the next possible key. Both lie under the prefix, and so does everything between them.
func span(first, last []byte) (key, end []byte) {
	return first, append(append([]byte{}, last...), 0)
}
