// Command fakecri serves Kubernetes' fake container runtime (k8s.io/cri-client/pkg/fake) on a
// unix socket, so that a real kubelet runs in the control-plane test without containers.
package main

import (
	"flag"
	"log"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/cri-client/pkg/fake"
)

func main() {
	endpoint := flag.String("endpoint", "", "unix:///path/to/socket")
	flag.Parse()
	runtime := fake.NewFakeRemoteRuntime()
	if err := runtime.Start(*endpoint); err != nil {
		log.Fatalf("fakecri: %v", err)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	runtime.Stop()
}
