package main

import (
	"strings"
	"testing"
	"time"

	"etcdstorage.local/tenant-proxy/internal/policy"
)

func TestParse(t *testing.T) {
	valid := []string{"--prefix=/registry-tenants/alpha/", "--endpoints=https://10.0.0.1:2379"}
	for _, tc := range []struct {
		name string
		args []string
		says string // in the error; "" when the arguments are valid
	}{
		{"a prefix and endpoints are enough", valid, ""},
		{"printing the allowlist needs nothing else", []string{"--print-allowlist"}, ""},
		{"a prefix without its trailing slash is refused", []string{"--prefix=/registry-tenants/alpha", "--endpoints=https://e:2379"}, "trailing slashes"},
		{"a prefix without its leading slash is refused", []string{"--prefix=registry-tenants/alpha/", "--endpoints=https://e:2379"}, "leading"},
		{"the prefix / (the whole core) is refused", []string{"--prefix=/", "--endpoints=https://e:2379"}, "--prefix"},
		{"the prefix // is refused", []string{"--prefix=//", "--endpoints=https://e:2379"}, "--prefix"},
		{"no prefix is refused", []string{"--endpoints=https://e:2379"}, "--prefix"},
		{"no endpoints are refused", []string{"--prefix=/r/a/"}, "--endpoints is required"},
		{"arguments after the flags are refused", append(valid, "extra"), "unexpected arguments"},
		{"a request limit of 0 is refused", append(valid, "--max-request-bytes=0"), "must be positive"},
		{"a Txn limit of 0 is refused", append(valid, "--max-txn-ops=0"), "must be positive"},
		{"a Txn read limit of 0 is refused", append(valid, "--max-txn-reads=0"), "must be positive"},
		{"a watch limit of 0 is refused", append(valid, "--max-watches-per-stream=0"), "must be positive"},
		{"a reload interval of 0 is refused", append(valid, "--reload-interval=0s"), "--reload-interval"},
		{"a negative shutdown delay is refused", append(valid, "--shutdown-delay=-1s"), "not negative"},
		{"no shutdown delay is allowed", append(valid, "--shutdown-delay=0s"), ""},
		{"a shutdown timeout of 0 is refused", append(valid, "--shutdown-timeout=0s"), "--shutdown-timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(tc.args)
			switch {
			case tc.says == "" && err != nil:
				t.Errorf("parse: %v", err)
			case tc.says != "" && (err == nil || !strings.Contains(err.Error(), tc.says)):
				t.Errorf("parse = %v, want an error that says %q", err, tc.says)
			}
		})
	}
	t.Run("the defaults are etcd's limits and the documented times", func(t *testing.T) {
		c, err := parse(valid)
		if err != nil {
			t.Fatal(err)
		}
		if c.limits != policy.DefaultLimits || c.reloadInterval != 10*time.Second || c.shutdownDelay != 5*time.Second ||
			c.shutdownTimeout != 15*time.Second || c.listen != ":2379" || c.healthListen != ":8080" {
			t.Errorf("defaults = %+v", c)
		}
	})
}

func TestDialable(t *testing.T) {
	for _, tc := range []struct{ name, listen, want string }{
		{"a port alone is dialled on localhost", ":2379", "localhost:2379"},
		{"every IPv4 address is dialled on localhost", "0.0.0.0:2379", "localhost:2379"},
		{"every IPv6 address is dialled on localhost", "[::]:2379", "localhost:2379"},
		{"a given address is dialled as it is", "10.0.0.7:2379", "10.0.0.7:2379"},
		{"a given name is dialled as it is", "proxy.local:2379", "proxy.local:2379"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := dialable(tc.listen); got != tc.want {
				t.Errorf("dialable(%q) = %q, want %q", tc.listen, got, tc.want)
			}
		})
	}
}
