package purge

import (
	"bytes"
	"strings"
	"testing"
)

func TestPrefixIsBuiltAsTheHookBuildsIt(t *testing.T) {
	for _, c := range []struct{ root, name, want string }{
		{"/etcdstorage/", "sample-apiserver", "/etcdstorage/sample-apiserver/"},
		{"etcdstorage", "a", "/etcdstorage/a/"},
		{"/tenants/kube/", "a1", "/tenants/kube/a1/"},
		{"/", "sample-apiserver", "/sample-apiserver/"}, // the original's layout
		{"", "sample-apiserver", "/sample-apiserver/"},
	} {
		got, err := Prefix(c.root, c.name)
		if err != nil || got != c.want {
			t.Errorf("Prefix(%q, %q) = %q, %v; want %q", c.root, c.name, got, err, c.want)
		}
	}
}

func TestAPrefixThatCouldReachBeyondOneTenantIsRefused(t *testing.T) {
	for _, c := range []struct{ root, name, says string }{
		{"/registry/", "secrets", "another system's keys"}, // every Secret of the cluster
		{"/registry/pods/", "x", "another system's keys"},
		{"/kubernetes/", "x", "another system's keys"},
		{"/", "registry", "another system's keys"},
		{"/", "calico", "another system's keys"},
		{"/etcdstorage/", "", "not a DNS label"}, // the root alone: every tenant's keys
		{"/etcdstorage/", "a/b", "not a DNS label"},
		{"/etcdstorage/", "..", "not a DNS label"},
		{"/etcdstorage/", "A", "not a DNS label"},
		{"/etcdstorage/", "a\x00", "not a DNS label"},
		{"/etcdstorage/", "-a", "not a DNS label"},
		{"/etcdstorage/", strings.Repeat("a", 64), "not a DNS label"},
		{"/etc storage/", "a", "not a DNS label"},
		{"/etcdstorage/*/", "a", "not a DNS label"},
	} {
		got, err := Prefix(c.root, c.name)
		if err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("Prefix(%q, %q) = %q, %v; want an error saying %q", c.root, c.name, got, err, c.says)
		}
	}
}

func TestASpanCoversTheListedKeysAndNothingPastTheLast(t *testing.T) {
	first, last := []byte("/etcdstorage/a/k1"), []byte("/etcdstorage/a/k9")
	key, end := span(first, last)
	if !bytes.Equal(key, first) {
		t.Fatalf("key = %q", key)
	}
	inside := [][]byte{first, last, []byte("/etcdstorage/a/k5")}
	outside := [][]byte{[]byte("/etcdstorage/a/k90"), []byte("/etcdstorage/a/l"), []byte("/etcdstorage/ab/"), []byte("/etcdstorage/a/k0")}
	for _, k := range inside {
		if bytes.Compare(k, key) < 0 || bytes.Compare(k, end) >= 0 {
			t.Errorf("%q is not in [%q, %q)", k, key, end)
		}
	}
	for _, k := range outside {
		if bytes.Compare(k, key) >= 0 && bytes.Compare(k, end) < 0 {
			t.Errorf("%q is in [%q, %q)", k, key, end)
		}
	}
	if &last[0] == &end[0] {
		t.Error("span reuses the listed key's storage")
	}
}
