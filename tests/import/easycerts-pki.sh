#!/usr/bin/env bash
# The files of a node that nixpkgs' easyCerts set up (services.kubernetes.easyCerts): cfssl's one
# CA (/var/lib/cfssl/ca.pem, ca-key.pem) and what certmgr wrote to /var/lib/kubernetes/secrets,
# named as nixpkgs' kubernetes modules name them, RSA 2048 keys in PKCS#1 as cfssl writes them;
# made with openssl, copied into one directory.
#
# usage: easycerts-pki.sh OUT NODE ADDRESS
set -euo pipefail
out=$1 node=$2 addr=$3
mkdir -p "$out"
cd "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

key() { openssl genrsa -traditional -out "$1" 2048 2>/dev/null; }

key ca-key.pem
openssl req -x509 -new -key ca-key.pem -subj "/O=NixOS/OU=services.kubernetes.pki.caSpec/L=auto-generated/CN=kubernetes-cluster-ca" \
  -days 1825 -sha256 -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,digitalSignature,keyCertSign,cRLSign" -addext "subjectKeyIdentifier=hash" -out ca.pem

cert() { # NAME SUBJECT EKU [SANS]
  local ext=$work/$1.ext
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$3"
    echo "authorityKeyIdentifier=keyid"
    [ -n "${4:-}" ] && echo "subjectAltName=$4"
  } >"$ext"
  key "$1-key.pem"
  openssl req -new -key "$1-key.pem" -subj "$2" 2>/dev/null |
    openssl x509 -req -CA ca.pem -CAkey ca-key.pem -set_serial "0x$(openssl rand -hex 16)" \
      -days 365 -sha256 -extfile "$ext" -out "$1.pem" 2>/dev/null
}

cert kube-apiserver "/CN=kubernetes" serverAuth \
  "DNS:$node,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:$addr,IP:fd00:10:96::1,IP:127.0.0.1"
cert kube-apiserver-proxy-client "/CN=front-proxy-client" clientAuth
cert kube-apiserver-kubelet-client "/CN=system:kube-apiserver" clientAuth
cert kube-apiserver-etcd-client "/CN=etcd-client" clientAuth
cert cluster-admin "/O=system:masters/CN=cluster-admin" clientAuth
cert kube-controller-manager-client "/CN=system:kube-controller-manager" clientAuth
cert kube-scheduler-client "/CN=system:kube-scheduler" clientAuth
cert kube-proxy-client "/O=system:node-proxier/CN=system:kube-proxy" clientAuth
cert kubelet "/CN=$node" serverAuth "DNS:$node,IP:$addr"
cert kubelet-client "/O=system:nodes/CN=system:node:$node" clientAuth
cert etcd "/CN=$node" serverAuth,clientAuth "DNS:etcd.local,DNS:etcd.cluster.local,DNS:$node,IP:$addr"
cert flannel-client "/CN=flannel-client" clientAuth
cert service-account "/CN=system:service-account-signer" clientAuth
