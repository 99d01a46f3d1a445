package tenant

import (
	"bytes"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Prefix is a tenant's place in the core etcd, `/<root>/<name>/`: every key it reads, writes or watches lies
// under it, and it sees its keys with the prefix taken off.
type Prefix string

// interval moves a tenant's key interval [key, end) under the prefix with the rules of etcd's namespace package
// (which confines KV; it offers no raw watch stream, so watches use this): no end is one key, the end "\x00" (every
// key from `key` on) stops at the end of the prefix, any other end is prefixed too. A test holds this equal to
// namespace.NewKV's intervals.
func (p Prefix) interval(key, end []byte) (pkey, pend []byte) {
	pkey = append([]byte(p), key...)
	switch {
	case len(end) == 0:
		return pkey, nil
	case len(end) == 1 && end[0] == 0:
		return pkey, []byte(clientv3.GetPrefixRangeEnd(string(p)))
	default:
		return pkey, append([]byte(p), end...)
	}
}

// strip takes the prefix off a key from the core etcd, and refuses one outside it: the core only answers keys of
// the requested interval, so this never happens, and a tenant must not see a foreign key if it ever did.
func (p Prefix) strip(key []byte) ([]byte, error) {
	if !bytes.HasPrefix(key, []byte(p)) {
		return nil, fmt.Errorf("the core etcd answered a key outside the prefix %q", string(p))
	}
	return key[len(p):], nil
}

// stripKV takes the prefix off a key-value of the core etcd (nil passes).
func (p Prefix) stripKV(kv *mvccpb.KeyValue) error {
	if kv == nil {
		return nil
	}
	key, err := p.strip(kv.Key)
	if err != nil {
		return err
	}
	kv.Key = key
	return nil
}
