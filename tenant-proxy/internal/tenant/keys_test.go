package tenant

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/namespace"
)

var errCaptured = errors.New("captured, not sent")

// captureKV is a clientv3.KV that records the operation it is given and sends nothing.
type captureKV struct {
	clientv3.KV
	ops []clientv3.Op
}

func (c *captureKV) Do(_ context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	c.ops = append(c.ops, op)
	return clientv3.OpResponse{}, errCaptured
}

// namespaceInterval is the interval etcd's namespace.NewKV sends upstream for [key, end): read inside a Txn,
// where an empty key is allowed, from a Get operation and from a compare.
func namespaceInterval(t testing.TB, prefix Prefix, key, end []byte) (getKey, getEnd, cmpKey, cmpEnd []byte) {
	t.Helper()
	capture := &captureKV{}
	kv := namespace.NewKV(capture, string(prefix))
	get := clientv3.OpGet(string(key), clientv3.WithRange(string(end)))
	compare := clientv3.Compare(clientv3.ModRevision(string(key)), "=", 0).WithRange(string(end))
	if _, err := kv.Do(context.Background(), clientv3.OpTxn([]clientv3.Cmp{compare}, []clientv3.Op{get}, nil)); !errors.Is(err, errCaptured) {
		t.Fatalf("namespace Do: %v", err)
	}
	if len(capture.ops) != 1 || !capture.ops[0].IsTxn() {
		t.Fatalf("namespace sent %d operations, want one Txn", len(capture.ops))
	}
	cmps, then, _ := capture.ops[0].Txn()
	return then[0].KeyBytes(), then[0].RangeBytes(), cmps[0].KeyBytes(), cmps[0].RangeEnd
}

// namespaceGet is the interval namespace.NewKV sends for a plain Get of [key, end) (key not empty).
func namespaceGet(t testing.TB, prefix Prefix, key, end []byte) (pkey, pend []byte) {
	t.Helper()
	capture := &captureKV{}
	_, err := namespace.NewKV(capture, string(prefix)).Get(context.Background(), string(key), clientv3.WithRange(string(end)))
	if !errors.Is(err, errCaptured) || len(capture.ops) != 1 {
		t.Fatalf("namespace Get: %v, %d operations", err, len(capture.ops))
	}
	return capture.ops[0].KeyBytes(), capture.ops[0].RangeBytes()
}

func TestIntervalAgreesWithEtcdNamespace(t *testing.T) {
	keys := []string{"a", "", "\x00", "\xff\xff", "/", "/registry/pods/", "/t/alpha/", "/t/alpha0", "a\x00b"}
	ends := []string{"", "\x00", "\x00\x00", "\x01", "b", "\xff", "\xff\xff", "/registry/pods0", "/t/alpha0", "/t/alpha/"}
	for _, prefix := range []Prefix{"/t/alpha/", "/registry-tenants/b-2/", "/\xff/"} {
		for _, key := range keys {
			for _, end := range ends {
				t.Run(fmt.Sprintf("under %q, [%q, %q) moves as namespace moves it", prefix, key, end), func(t *testing.T) {
					pkey, pend := prefix.interval([]byte(key), []byte(end))
					getKey, getEnd, cmpKey, cmpEnd := namespaceInterval(t, prefix, []byte(key), []byte(end))
					if !bytes.Equal(pkey, getKey) || !bytes.Equal(pend, getEnd) {
						t.Errorf("interval = [%q, %q), namespace Get in a Txn = [%q, %q)", pkey, pend, getKey, getEnd)
					}
					if !bytes.Equal(pkey, cmpKey) || !bytes.Equal(pend, cmpEnd) {
						t.Errorf("interval = [%q, %q), namespace compare = [%q, %q)", pkey, pend, cmpKey, cmpEnd)
					}
					if key != "" {
						if getKey, getEnd := namespaceGet(t, prefix, []byte(key), []byte(end)); !bytes.Equal(pkey, getKey) || !bytes.Equal(pend, getEnd) {
							t.Errorf("interval = [%q, %q), namespace Get = [%q, %q)", pkey, pend, getKey, getEnd)
						}
					}
				})
			}
		}
	}
}

func TestInterval(t *testing.T) {
	const prefix Prefix = "/t/alpha/"
	for _, tc := range []struct {
		name, key, end, wantKey, wantEnd string
	}{
		{"a key without an end stays one key", "a", "", "/t/alpha/a", ""},
		{"the end \\x00 stops at the end of the prefix", "a", "\x00", "/t/alpha/a", "/t/alpha0"},
		{"the empty key to \\x00 is the whole tenant", "", "\x00", "/t/alpha/", "/t/alpha0"},
		{"any other end is prefixed", "a", "b", "/t/alpha/a", "/t/alpha/b"},
		{"an end of two zero bytes is an ordinary end", "a", "\x00\x00", "/t/alpha/a", "/t/alpha/\x00\x00"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key, end := prefix.interval([]byte(tc.key), []byte(tc.end))
			if string(key) != tc.wantKey || string(end) != tc.wantEnd {
				t.Errorf("interval(%q, %q) = [%q, %q), want [%q, %q)", tc.key, tc.end, key, end, tc.wantKey, tc.wantEnd)
			}
		})
	}
	t.Run("the request's key is not changed", func(t *testing.T) {
		key := make([]byte, 1, 16)
		key[0] = 'a'
		pkey, _ := prefix.interval(key, nil)
		pkey[len(pkey)-1] = 'z'
		if string(key) != "a" {
			t.Errorf("key became %q", key)
		}
	})
}

// FuzzInterval holds Prefix.interval equal to etcd's namespace for any key and end, under any prefix the proxy
// accepts (it ends with a slash: see main's --prefix check).
func FuzzInterval(f *testing.F) {
	f.Add("/t/alpha/", []byte("a"), []byte(""))
	f.Add("/t/alpha/", []byte(""), []byte("\x00"))
	f.Add("/t/alpha/", []byte("\xff"), []byte("\xff\xff"))
	f.Add("/\xff\xff/", []byte("/"), []byte("\x00\x00"))
	f.Fuzz(func(t *testing.T, prefix string, key, end []byte) {
		p := Prefix(prefix + "/")
		pkey, pend := p.interval(key, end)
		getKey, getEnd, cmpKey, cmpEnd := namespaceInterval(t, p, key, end)
		if !bytes.Equal(pkey, getKey) || !bytes.Equal(pend, getEnd) || !bytes.Equal(pkey, cmpKey) || !bytes.Equal(pend, cmpEnd) {
			t.Errorf("under %q, interval(%q, %q) = [%q, %q), namespace = [%q, %q) and compare [%q, %q)",
				p, key, end, pkey, pend, getKey, getEnd, cmpKey, cmpEnd)
		}
		if len(key) != 0 {
			if getKey, getEnd := namespaceGet(t, p, key, end); !bytes.Equal(pkey, getKey) || !bytes.Equal(pend, getEnd) {
				t.Errorf("under %q, interval(%q, %q) = [%q, %q), namespace Get = [%q, %q)", p, key, end, pkey, pend, getKey, getEnd)
			}
		}
	})
}

func TestStrip(t *testing.T) {
	const prefix Prefix = "/t/alpha/"
	for _, tc := range []struct {
		name, key, want string
		outside         bool
	}{
		{"a key under the prefix loses the prefix", "/t/alpha/a/b", "a/b", false},
		{"the prefix itself becomes the empty key", "/t/alpha/", "", false},
		{"a key of another tenant is outside", "/t/alphabet/a", "", true},
		{"a key of a tenant whose name extends this one is outside", "/t/alpha0", "", true},
		{"a key shorter than the prefix is outside", "/t/", "", true},
		{"the empty key is outside", "", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := prefix.strip([]byte(tc.key))
			if tc.outside {
				if err == nil {
					t.Errorf("strip(%q) = %q, want an error", tc.key, got)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Errorf("strip(%q) = %q, %v; want %q", tc.key, got, err, tc.want)
			}
		})
	}
	t.Run("a nil key-value passes", func(t *testing.T) {
		if err := prefix.stripKV(nil); err != nil {
			t.Errorf("stripKV(nil) = %v", err)
		}
	})
	t.Run("a key-value outside keeps its key", func(t *testing.T) {
		kv := &mvccpb.KeyValue{Key: []byte("/t/beta/x")}
		if err := prefix.stripKV(kv); err == nil || string(kv.Key) != "/t/beta/x" {
			t.Errorf("stripKV = %v, key %q", err, kv.Key)
		}
	})
}
