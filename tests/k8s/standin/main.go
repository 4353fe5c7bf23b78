// Command standin is the other end of the apiserver's outgoing TLS connections in the control-plane
// test: a kubelet's endpoint (serving a node's kubelet-serving certificate, requiring clients of the
// Kubernetes CA) or an aggregated API server (requiring clients of the front-proxy CA). It answers
// every request with who called it: the client certificate's subject and the X-Remote-* headers the
// front proxy adds. Requests are also appended to -log, one JSON object per line.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"log"
	"net/http"
	"os"
	"sync"
)

// caller is what one request tells about its sender.
type caller struct {
	Path         string   `json:"path"`
	CommonName   string   `json:"commonName"`
	Organization []string `json:"organization"`
	RemoteUser   string   `json:"remoteUser"`
	RemoteGroups []string `json:"remoteGroups"`
}

func main() {
	listen := flag.String("listen", "", "address to serve on, [ip]:port")
	cert := flag.String("cert", "", "serving certificate (PEM, chain allowed)")
	key := flag.String("key", "", "serving key (PEM)")
	clientCA := flag.String("client-ca", "", "CA bundle that client certificates must chain to")
	group := flag.String("group-version", "", "answer discovery for this API group/version (aggregated API)")
	logPath := flag.String("log", "", "file to append one JSON line per request to")
	flag.Parse()

	pair, err := tls.LoadX509KeyPair(*cert, *key)
	if err != nil {
		log.Fatalf("standin: %v", err)
	}
	pem, err := os.ReadFile(*clientCA)
	if err != nil {
		log.Fatalf("standin: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		log.Fatalf("standin: no certificate in %s", *clientCA)
	}
	out, err := os.OpenFile(*logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		log.Fatalf("standin: %v", err)
	}
	var mu sync.Mutex

	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if *group != "" && r.URL.Path == "/apis/"+*group {
			// The aggregator's availability check and discovery read this list.
			json.NewEncoder(w).Encode(map[string]any{
				"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": *group,
				"resources": []any{},
			})
			return
		}
		leaf := r.TLS.PeerCertificates[0]
		c := caller{
			Path:         r.URL.Path,
			CommonName:   leaf.Subject.CommonName,
			Organization: leaf.Subject.Organization,
			RemoteUser:   r.Header.Get("X-Remote-User"),
			RemoteGroups: r.Header.Values("X-Remote-Group"),
		}
		line, _ := json.Marshal(c)
		mu.Lock()
		out.Write(append(line, '\n'))
		mu.Unlock()
		w.Write(line)
	})
	server := &http.Server{
		Addr:    *listen,
		Handler: handler,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{pair},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    pool,
		},
	}
	log.Fatal(server.ListenAndServeTLS("", ""))
}
