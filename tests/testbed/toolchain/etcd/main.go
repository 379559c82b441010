// The etcd server binary: etcdmain is the server's real entry point, which the
// upstream root module wraps in the same one-line main.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
