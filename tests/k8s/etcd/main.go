// Command etcd is etcd's own server (go.etcd.io/etcd/server/v3, the version k8s.io/kubernetes
// requires): kube-apiserver 1.34 needs etcd 3.5 or later for consistent reads from its watch
// cache, and Debian ships etcd 3.4.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
