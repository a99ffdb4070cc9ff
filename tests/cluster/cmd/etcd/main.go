// etcd for poold's real-control-plane tests: the upstream server (go.etcd.io/etcd/server/v3),
// at the version k8s.io/kubernetes itself requires, so the API server always accepts it.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
