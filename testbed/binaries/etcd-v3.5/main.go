// Command etcd is the etcd 3.5 server the e2e tests run (see testbed/binaries/build-etcd.sh); nothing here is shipped.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
