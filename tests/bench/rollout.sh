#!/usr/bin/env bash
# `kpki rollout` against 100 reachable TLS endpoints: 25 nodes with every role (etcd client and
# peer, apiserver, kubelet), each endpoint an `openssl s_server` that presents the node's etcd
# certificate and asks for a client certificate of the etcd CA, all in one network namespace.
# Prints the median of five runs, in seconds, and how many endpoints answered with a
# certificate. Needs root (network namespaces).
# Usage: rollout.sh KPKI WORKDIR
set -euo pipefail
kpki=$1 work=$2
ns=kpki-bench-$$
nodes=25
servers=()
cleanup() {
  for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
dir=$work/rollout
rm -rf "$dir" && mkdir -p "$dir/pki"
{
  printf '[cluster]\nservice_cidr = "fd00:10:96::/112"\napi_server = "https://[2001:db8::1]:6443"\n'
  for i in $(seq 1 "$nodes"); do
    printf '[[node]]\nname = "node-%02d"\naddresses = ["2001:db8::%x"]\n' "$i" "$i"
    ip -n "$ns" addr add "2001:db8::$(printf %x "$i")/128" dev lo nodad
  done
} > "$dir/pki/kpki.toml"
"$kpki" --dir "$dir" init -q >/dev/null
for i in $(seq 1 "$nodes"); do
  node=$(printf node-%02d "$i")
  for port in 2379 2380 6443 10250; do
    ip netns exec "$ns" openssl s_server -quiet -Verify 1 \
      -CAfile "$dir/pki/etcd/ca.pem" \
      -cert "$dir/pki/$node/etcd-server.pem" -key "$dir/pki/$node/etcd-server-key.pem" \
      -accept "[2001:db8::$(printf %x "$i")]:$port" >/dev/null 2>&1 &
    servers+=($!)
  done
done
sleep 2
times=()
for _ in 1 2 3 4 5; do
  start=$EPOCHREALTIME
  ip netns exec "$ns" "$kpki" --dir "$dir" rollout >/dev/null || true
  times+=("$(echo "$EPOCHREALTIME - $start" | bc -l)")
done
answered=$(ip netns exec "$ns" "$kpki" --dir "$dir" rollout --json | grep -c '"serves": {' || true)
median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 3p)
printf '%.3f %s\n' "$median" "$answered"
