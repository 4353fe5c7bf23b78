#!/usr/bin/env bash
# `make bench`: kpki init against the openssl + age workflow it replaces (baseline.sh), on this
# machine in this run, with medians of several runs; plus a no-op rotate and status at 1,000
# nodes and kpki's peak memory. Writes target/bench/results.md.
#
# The clusters are built in a tmpfs (BENCH_DIR, default /dev/shm/kpki-bench): both sides create
# thousands of files, and on an ext4 disk that has just deleted many files, inode allocation
# (find_inode_bit / recently_deleted, seen with perf) dominates whatever the tool does.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
kpki=$root/target/release/kpki
out=$root/target/bench
work=${BENCH_DIR:-/dev/shm/kpki-bench}
baseline_runs=${BASELINE_RUNS:-3}
kpki_runs=${KPKI_RUNS:-5}

for tool in openssl age age-keygen ssh-keygen /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 1; }
done
[ -x "$kpki" ] || { echo "bench: build first (make build)" >&2; exit 1; }
rm -rf "$work" && mkdir -p "$work/keys" "$out"

age-keygen -o "$work/admin.txt" 2>/dev/null
admin=$(grep -o 'age1[0-9a-z]*' "$work/admin.txt" | head -1)
for i in $(seq 1 1000); do
  ssh-keygen -q -t ed25519 -N "" -C "root@node-$i" -f "$work/keys/$(printf 'node-%04d' "$i")" </dev/null
done

# A cluster of N nodes in DIR: 3 with every role, N-3 workers, each with its own host key.
cluster() {
  local n=$1 dir=$2
  rm -rf "$dir" && mkdir -p "$dir/hosts" "$dir/pki"
  {
    printf '[cluster]\nservice_cidr = "fd00:10:96::/112"\napi_server = "https://[2001:db8::1]:6443"\n'
    printf '[secrets]\nadmins = ["%s"]\n' "$admin"
    for i in $(seq 1 "$n"); do
      local name roles='["worker"]'
      name=$(printf 'node-%04d' "$i")
      [ "$i" -le 3 ] && roles='["control-plane", "etcd", "worker"]'
      cp "$work/keys/$name.pub" "$dir/hosts/"
      printf '[[node]]\nname = "%s"\naddresses = ["2001:db8::%x"]\nroles = %s\nhost_key = "%s"\n' \
        "$name" "$i" "$roles" "$(cat "$work/keys/$name.pub")"
    done
  } > "$dir/pki/kpki.toml"
}

# Seconds a command takes.
seconds() {
  local start end
  start=$(date +%s.%N)
  "$@" >/dev/null
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}

median() { sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }

# Peak RSS in MiB of one run of a command.
peak() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -1 | awk '{printf "%.1f", $1/1024}'; }

# The files a cluster directory holds: plaintext .pem and their encrypted copies.
files() { (cd "$1" && find pki -name '*.pem' && find secrets -name '*.pem.age') | sort; }

declare -A base kp rss
for n in 3 100; do
  for r in $(seq 1 "$baseline_runs"); do
    cluster "$n" "$work/base-$n"
    seconds "$root/tests/bench/baseline.sh" "$work/base-$n" "$n" "$admin"
  done | median > "$work/base-$n.median"
  base[$n]=$(cat "$work/base-$n.median")
done
for n in 3 100 1000; do
  for r in $(seq 1 "$kpki_runs"); do
    cluster "$n" "$work/kpki-$n"
    seconds "$kpki" --dir "$work/kpki-$n" init -q
  done | median > "$work/kpki-$n.median"
  kp[$n]=$(cat "$work/kpki-$n.median")
  cluster "$n" "$work/kpki-$n"
  rss[$n]=$(peak "$kpki" --dir "$work/kpki-$n" init -q)
done

for n in 3 100; do
  diff <(files "$work/base-$n") <(files "$work/kpki-$n") >/dev/null \
    || { echo "bench: baseline and kpki made different files for $n nodes" >&2; exit 1; }
done
for n in 3 1000; do
  "$kpki" --dir "$work/kpki-$n" -i "$work/admin.txt" verify -q \
    || { echo "bench: kpki's output at $n nodes does not verify" >&2; exit 1; }
done

big=$work/kpki-1000
rotate=$(for r in $(seq 1 "$kpki_runs"); do seconds "$kpki" --dir "$big" rotate -q; done | median)
status=$(for r in $(seq 1 "$kpki_runs"); do seconds "$kpki" --dir "$big" status; done | median)
verify=$(for r in $(seq 1 3); do seconds "$kpki" --dir "$big" -i "$work/admin.txt" verify -q; done | median)
rotate_rss=$(peak "$kpki" --dir "$big" rotate -q)
status_rss=$(peak "$kpki" --dir "$big" status)
verify_rss=$(peak "$kpki" --dir "$big" -i "$work/admin.txt" verify -q)

# The crypto floor (criterion): name, then its median time.
floor=$(cd "$root" && cargo bench --quiet --bench floor -- --quick 2>/dev/null \
  | awk '/time:/ { gsub(/\[|\]/, ""); printf "| %s | %s %s |\n", name, $4, $5; next } NF { name = $0 }')

{
  echo "kpki benchmark, $(date -u +%Y-%m-%d), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -m); medians of $baseline_runs baseline and $kpki_runs kpki runs, in $work"
  echo
  echo "| nodes | files | openssl + age (s) | kpki init (s) | speed-up | kpki per node (ms) | kpki peak RSS (MiB) |"
  echo "|---:|---:|---:|---:|---:|---:|---:|"
  for n in 3 100 1000; do
    count=$(files "$work/kpki-$n" | wc -l)
    b=${base[$n]:-} ratio="-"
    [ -n "$b" ] && ratio=$(echo "$b / ${kp[$n]}" | bc -l | xargs printf '%.0fx')
    echo "| $n | $count | ${b:--} | ${kp[$n]} | $ratio | $(echo "${kp[$n]} * 1000 / $n" | bc -l | xargs printf '%.2f') | ${rss[$n]} |"
  done
  echo
  echo "| 1,000 nodes | kpki (s) | peak RSS (MiB) |"
  echo "|---|---:|---:|"
  echo "| no-op \`kpki rotate\` | $rotate | $rotate_rss |"
  echo "| \`kpki status\` | $status | $status_rss |"
  echo "| \`kpki verify -i\` (decrypts and checks all $(files "$big" | grep -c '^secrets/') secrets) | $verify | $verify_rss |"
  echo
  echo "| the floor, per operation (criterion, median) | time |"
  echo "|---|---:|"
  echo "$floor"
  echo
  echo "Both sides made the same files at 3 and 100 nodes; kpki's output verifies (\`kpki verify\`) at 3 and 1,000."
} | tee "$out/results.md"
