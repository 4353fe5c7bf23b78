#!/usr/bin/env bash
# The workflow kpki replaces, as a hand-written pki/Makefile + agenix would run it: openssl once
# per key, request and certificate, then the age CLI once per .pem, to the admin plus the SSH
# host keys of the nodes that read it. Same certificate set and recipients as `kpki init`.
#
# usage: baseline.sh DIR NODES ADMIN_RECIPIENT
#   DIR/hosts/node-NNNN.pub must hold each node's SSH host public key; nodes 1-3 have every
#   role, the rest are workers (as bench.sh lays them out).
set -euo pipefail
dir=$1 nodes=$2 admin=$3
cd "$dir"

name() { printf 'node-%04d' "$1"; }
addr() { printf '2001:db8::%x' "$1"; }

cat hosts/*.pub > hosts/all.txt
for i in 1 2 3; do cat "hosts/$(name "$i").pub"; done > hosts/cp.txt

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

ca() { # DIR CN
  mkdir -p "pki/$1"
  key "pki/$1/ca-key.pem"
  openssl req -x509 -new -key "pki/$1/ca-key.pem" -subj "/CN=$2" -days 3650 \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:1" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" -out "pki/$1/ca.pem"
}

leaf() { # CA DIR STEM SUBJECT EKU [SANS]
  local ca=$1 out="pki/$2/$3" ext
  mkdir -p "pki/$2"
  key "$out-key.pem"
  ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=$5
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid${6:+
subjectAltName=$6}"
  openssl req -new -key "$out-key.pem" -subj "$4" -out "$out.csr"
  openssl x509 -req -in "$out.csr" -CA "pki/$ca/ca.pem" -CAkey "pki/$ca/ca-key.pem" \
    -set_serial "0x$(openssl rand -hex 16 | sed 's/^./1/')" -days 365 \
    -extfile <(printf '%s\n' "$ext") -out "$out.pem" 2>/dev/null
  # The request stays: deleting files on this disk would slow the next run's inode allocation
  # (kpki's, which takes turns with this one; see bench.sh's wait_settled).
}

seal() { # FILE [RECIPIENTS_FILE]
  mkdir -p "secrets/$(dirname "$1")"
  age -a -r "$admin" ${2:+-R "$2"} -o "secrets/$1.age" "pki/$1"
}

ca kubernetes kubernetes-ca
ca etcd etcd-ca
ca front-proxy kubernetes-front-proxy-ca
mkdir -p pki/service-account
key pki/service-account/sa-key.pem
openssl pkey -in pki/service-account/sa-key.pem -pubout -out pki/service-account/sa.pem

leaf kubernetes kubernetes admin "/O=system:masters/CN=kubernetes-admin" clientAuth
leaf kubernetes kubernetes controller-manager "/CN=system:kube-controller-manager" clientAuth
leaf kubernetes kubernetes scheduler "/CN=system:kube-scheduler" clientAuth
leaf kubernetes kubernetes apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
leaf kubernetes kubernetes kube-proxy "/O=system:node-proxier/CN=system:kube-proxy" clientAuth
leaf etcd etcd apiserver-etcd-client "/CN=kube-apiserver-etcd-client" clientAuth
leaf front-proxy front-proxy client "/CN=front-proxy-client" clientAuth

for i in $(seq 1 "$nodes"); do
  n=$(name "$i") a=$(addr "$i")
  if [ "$i" -le 3 ]; then
    svc="DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster,DNS:kubernetes.default.svc.cluster.local,IP:fd00:10:96::1"
    leaf kubernetes "$n" apiserver "/CN=kube-apiserver" serverAuth "DNS:$n,$svc,IP:$a,IP:2001:db8::1,DNS:localhost,IP:::1"
    leaf etcd "$n" etcd-server "/CN=$n" serverAuth,clientAuth "DNS:$n,DNS:localhost,IP:$a,IP:::1"
    leaf etcd "$n" etcd-peer "/CN=$n" serverAuth,clientAuth "DNS:$n,IP:$a"
  fi
  leaf kubernetes "$n" kubelet "/O=system:nodes/CN=system:node:$n" clientAuth
  leaf kubernetes "$n" kubelet-serving "/O=system:nodes/CN=system:node:$n" serverAuth "DNS:$n,IP:$a"
done
rm -f pki/*/*.srl

# Encrypt: CA keys and the admin to the admin only; shared files to the nodes that read them.
for f in kubernetes/ca-key.pem etcd/ca-key.pem front-proxy/ca-key.pem kubernetes/admin.pem kubernetes/admin-key.pem; do
  seal "$f"
done
seal kubernetes/ca.pem hosts/all.txt
seal etcd/ca.pem hosts/cp.txt
seal front-proxy/ca.pem hosts/cp.txt
for f in service-account/sa kubernetes/controller-manager kubernetes/scheduler kubernetes/apiserver-kubelet-client \
  etcd/apiserver-etcd-client front-proxy/client; do
  seal "$f.pem" hosts/cp.txt
  seal "$f-key.pem" hosts/cp.txt
done
seal kubernetes/kube-proxy.pem hosts/all.txt
seal kubernetes/kube-proxy-key.pem hosts/all.txt
for i in $(seq 1 "$nodes"); do
  n=$(name "$i")
  for f in pki/"$n"/*.pem; do
    seal "${f#pki/}" "hosts/$n.pub"
  done
done
