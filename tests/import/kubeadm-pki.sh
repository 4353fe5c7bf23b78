#!/usr/bin/env bash
# A PKI laid out as kubeadm writes /etc/kubernetes/pki, made with openssl as kubeadm makes it:
# RSA 2048 keys in PKCS#1 ("RSA PRIVATE KEY"), three CAs, a service-account key pair, and per
# control-plane node its serving and client certificates with IPv6 SANs.
#
# usage: kubeadm-pki.sh OUT NODE=ADDRESS...   (writes OUT/NODE/ for each node)
set -euo pipefail
out=$1
shift
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

key() { openssl genrsa -traditional -out "$1" 2048 2>/dev/null; }

ca() { # NAME CN
  key "$work/$1.key"
  openssl req -x509 -new -key "$work/$1.key" -subj "/CN=$2" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign" \
    -addext "subjectKeyIdentifier=hash" -out "$work/$1.crt"
}

leaf() { # CA OUT SUBJECT EKU [SANS]
  local ext
  ext=$(mktemp -p "$work")
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$4"
    echo "authorityKeyIdentifier=keyid"
    [ -n "${5:-}" ] && echo "subjectAltName=$5"
  } >"$ext"
  mkdir -p "$(dirname "$2")"
  key "$2.key"
  openssl req -new -key "$2.key" -subj "$3" 2>/dev/null |
    openssl x509 -req -CA "$work/$1.crt" -CAkey "$work/$1.key" -set_serial "0x$(openssl rand -hex 16)" \
      -days 365 -sha256 -extfile "$ext" -out "$2.crt" 2>/dev/null
}

ca ca kubernetes
ca etcd-ca etcd-ca
ca front-proxy-ca front-proxy-ca
key "$work/sa.key"
openssl rsa -in "$work/sa.key" -pubout -out "$work/sa.pub" 2>/dev/null

for spec in "$@"; do
  node=${spec%%=*} addr=${spec#*=}
  dir=$out/$node
  mkdir -p "$dir/etcd"
  cp "$work/ca.crt" "$work/ca.key" "$work/front-proxy-ca.crt" "$work/front-proxy-ca.key" \
    "$work/sa.key" "$work/sa.pub" "$dir/"
  cp "$work/etcd-ca.crt" "$dir/etcd/ca.crt"
  cp "$work/etcd-ca.key" "$dir/etcd/ca.key"
  leaf ca "$dir/apiserver" "/CN=kube-apiserver" serverAuth \
    "DNS:$node,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:fd00:10:96::1,IP:$addr"
  leaf ca "$dir/apiserver-kubelet-client" "/O=kubeadm:cluster-admins/CN=kube-apiserver-kubelet-client" clientAuth
  leaf front-proxy-ca "$dir/front-proxy-client" "/CN=front-proxy-client" clientAuth
  leaf etcd-ca "$dir/apiserver-etcd-client" "/CN=kube-apiserver-etcd-client" clientAuth
  leaf etcd-ca "$dir/etcd/server" "/CN=$node" serverAuth,clientAuth \
    "DNS:$node,DNS:localhost,IP:$addr,IP:127.0.0.1,IP:::1"
  leaf etcd-ca "$dir/etcd/peer" "/CN=$node" serverAuth,clientAuth \
    "DNS:$node,DNS:localhost,IP:$addr,IP:127.0.0.1,IP:::1"
  leaf etcd-ca "$dir/etcd/healthcheck-client" "/CN=kube-etcd-healthcheck-client" clientAuth
done
