#!/usr/bin/env bash
# `make bench`: kpki init against the openssl + age workflow it replaces (baseline.sh), on this
# machine in this run, with medians of several runs; plus a no-op rotate, status, verify and a
# fresh clone's refresh at 1,000 nodes and at 5,000 (FLEET, on the disk), kpki's peak memory,
# and the per-file floor (criterion). Writes target/bench/results.md.
#
# Every case runs twice: in a tmpfs (BENCH_DIR, default /dev/shm/kpki-bench, which also holds
# the keys) and on the repository's own filesystem (BENCH_DISK_DIR, default target/bench-disk),
# where kpki pays for durability (syncfs) and the baseline does not.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
kpki=$root/target/release/kpki
out=$root/target/bench
work=${BENCH_DIR:-/dev/shm/kpki-bench}
baseline_runs=${BASELINE_RUNS:-3}
kpki_runs=${KPKI_RUNS:-5}
# A 3-node init takes milliseconds, where this VM's noise is largest: more runs for its median.
small_runs=${SMALL_RUNS:-21}

for tool in openssl age age-keygen ssh-keygen /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 1; }
done
[ -x "$kpki" ] || { echo "bench: build first (make build)" >&2; exit 1; }
rm -rf "$work" && mkdir -p "$work/keys" "$out"

age-keygen -o "$work/admin.txt" 2>/dev/null
admin=$(grep -o 'age1[0-9a-z]*' "$work/admin.txt" | head -1)
# Host keys for up to 5,000 nodes (Kubernetes' limit), made here, outside any timing.
fleet=${FLEET:-5000}
seq 1 "$fleet" | xargs -P "$(nproc)" -I{} sh -c \
  'ssh-keygen -q -t ed25519 -N "" -C "root@node-$1" -f "$2/keys/$(printf node-%04d "$1")" </dev/null' _ {} "$work"

# A cluster of N nodes in DIR: 3 with every role, N-3 workers, each with its own host key, in a
# git repository of its own (kpki asks git whether its plaintext is ignored, and git's cost grows
# with what the repository tracks: see commit_cluster).
cluster() {
  local n=$1 dir=$2
  rm -rf "$dir" && mkdir -p "$dir/hosts" "$dir/pki"
  git init -q "$dir"
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

# Seconds a command takes, read from bash's clock: starting `date` around it would add two
# process starts (about a millisecond each here) to a 3-node init that takes some 25. Written
# data is flushed first, untimed: kpki's syncfs would otherwise also write out the files the
# run before left in the page cache (the baseline syncs nothing).
seconds() {
  sync
  local start=$EPOCHREALTIME
  "$@" >/dev/null
  echo "$EPOCHREALTIME - $start" | bc -l
}

# Commits everything in cluster $1 (untimed), as a user does after init: what follows runs in
# a repository that tracks every secret.
commit_cluster() {
  git -C "$1" add -A && git -C "$1" -c user.name=bench -c user.email=bench@localhost commit -qm init
}

median() { sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }

# Peak RSS in MiB of one run of a command.
peak() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -1 | awk '{printf "%.1f", $1/1024}'; }

# The files a cluster directory holds: plaintext .pem and their encrypted copies.
files() { (cd "$1" && find pki -name '*.pem' && find secrets -name '*.pem.age') | sort; }

# Every measured run gets a directory of its own, none removed while measuring: on ext4 without
# a journal (this VM's disk), creating inodes right after deleting thousands costs each new one a
# scan past the recently deleted (recently_deleted / find_inode_bit, seen with perf), a cost of
# the benchmark's own deletions that a user's init does not pay.
run_dir() { echo "$1/run-$2-$3"; }

declare -A base kp rss rotate status verify rotate_rss status_rss verify_rss
# Measures every case in directory $2, labelled $1.
suite() {
  local label=$1 dir=$2 n r big
  mkdir -p "$dir"
  # The baseline and kpki take turns, so a slow spell of this shared machine slows both sides
  # of a ratio rather than one.
  for n in 3 100 1000; do
    local runs=$kpki_runs bases=$baseline_runs
    [ "$n" -eq 3 ] && runs=$small_runs
    [ "$n" -eq 1000 ] && bases=0
    # Never fewer kpki runs than baseline runs: they take turns, one kpki run after each.
    [ "$runs" -lt "$bases" ] && runs=$bases
    : > "$dir/base-$n.times"; : > "$dir/kpki-$n.times"
    local made=0
    for r in $(seq 1 "$runs"); do
      # The baseline's runs spread evenly among kpki's.
      if [ "$made" -lt "$bases" ] && (( (r - 1) % (runs / bases) == 0 )); then
        made=$((made + 1))
        cluster "$n" "$(run_dir "$dir" base-$n "$made")"
        seconds "$root/tests/bench/baseline.sh" "$(run_dir "$dir" base-$n "$made")" "$n" "$admin" >> "$dir/base-$n.times"
      fi
      cluster "$n" "$(run_dir "$dir" kpki-$n "$r")"
      seconds "$kpki" --dir "$(run_dir "$dir" kpki-$n "$r")" init -q >> "$dir/kpki-$n.times"
    done
    [ "$bases" -gt 0 ] && base[$label-$n]=$(median < "$dir/base-$n.times")
    kp[$label-$n]=$(median < "$dir/kpki-$n.times")
    cluster "$n" "$(run_dir "$dir" rss-$n 1)"
    rss[$label-$n]=$(peak "$kpki" --dir "$(run_dir "$dir" rss-$n 1)" init -q)
  done
  for n in 3 100; do
    diff <(files "$(run_dir "$dir" base-$n 1)") <(files "$(run_dir "$dir" kpki-$n 1)") >/dev/null \
      || { echo "bench: baseline and kpki made different files for $n nodes" >&2; exit 1; }
  done
  for n in 3 1000; do
    "$kpki" --dir "$(run_dir "$dir" kpki-$n 1)" -i "$work/admin.txt" verify -q \
      || { echo "bench: kpki's output at $n nodes does not verify ($label)" >&2; exit 1; }
  done
  big=$(run_dir "$dir" kpki-1000 1)
  commit_cluster "$big"
  rotate[$label]=$(for r in $(seq 1 "$kpki_runs"); do seconds "$kpki" --dir "$big" rotate -q; done | median)
  status[$label]=$(for r in $(seq 1 "$kpki_runs"); do seconds "$kpki" --dir "$big" status; done | median)
  verify[$label]=$(for r in $(seq 1 3); do seconds "$kpki" --dir "$big" -i "$work/admin.txt" verify -q; done | median)
  rotate_rss[$label]=$(peak "$kpki" --dir "$big" rotate -q)
  status_rss[$label]=$(peak "$kpki" --dir "$big" status)
  verify_rss[$label]=$(peak "$kpki" --dir "$big" -i "$work/admin.txt" verify -q)
  refresh[$label-1000]=$(fresh_refresh "$big" "$dir/fresh-1000")
}

# Seconds a fresh clone's first writer takes (`init -i`: it reads every committed file from
# secrets/), in a git clone of cluster $1 made in $2: no plaintext, no record of kpki's. A
# clone rather than a copy with the plaintext deleted: the 5,000-node `init`s come next, and
# new inodes on this disk skip those deleted in the last minute.
fresh_refresh() {
  git clone -q "$1" "$2"
  seconds "$kpki" --dir "$2" -i "$work/admin.txt" init -q | median
}

# Kubernetes' limit, on the disk: init, status, no-op rotate, verify -i and a fresh clone's
# refresh at $fleet nodes, beside the same at 1,000 so that growth shows as a ratio.
declare -A refresh
fleet_suite() {
  local dir=$1 big
  big=$(run_dir "$dir" kpki-$fleet 1)
  # Three runs, each in a directory of its own: one on this disk swings by a fifth.
  init5k=$(for r in 1 2 3; do
    cluster "$fleet" "$(run_dir "$dir" kpki-$fleet "$r")"
    seconds "$kpki" --dir "$(run_dir "$dir" kpki-$fleet "$r")" init -q
  done | median)
  commit_cluster "$big"
  cluster "$fleet" "$(run_dir "$dir" rss-$fleet 1)"
  init5k_rss=$(peak "$kpki" --dir "$(run_dir "$dir" rss-$fleet 1)" init -q)
  # Five runs each: a half-second run on this VM swings by a fifth from one run to the next.
  rotate5k=$(for r in 1 2 3 4 5; do seconds "$kpki" --dir "$big" rotate -q; done | median)
  status5k=$(for r in 1 2 3 4 5; do seconds "$kpki" --dir "$big" status; done | median)
  verify5k=$(seconds "$kpki" --dir "$big" -i "$work/admin.txt" verify -q | median)
  refresh[disk-$fleet]=$(fresh_refresh "$big" "$dir/fresh-$fleet")
}

# A directory of its own on the disk; an earlier bench's runs are removed (see wait_settled).
disk_root=${BENCH_DISK_DIR:-$root/target/bench-disk}
disk=$disk_root/run-$(date +%s)
if [ -d "$disk_root" ]; then
  find "$disk_root" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
  sync
fi
# ext4 without a journal makes a new inode skip every inode of its block group freed in the
# last minute, or the last six while their inode table block is dirty (recently_deleted() in
# fs/ext4/ialloc.c), scanning past them again for each new inode: a 5,000-node init a few
# minutes after a quarter of a million deletions nearby took 13.4 s of system time instead of
# about 3 (perf: find_inode_bit, recently_deleted). The build just before the bench freed thousands of
# compiler temporaries below target/, and an earlier bench's runs were removed above: the disk
# suites wait until both are six minutes old. Nothing is deleted on the disk after that.
settled_at=$(($(date +%s) + 360))
wait_settled() {
  local left=$((settled_at - $(date +%s)))
  if [ "$left" -gt 0 ]; then
    echo "bench: waiting ${left}s for this disk's recent deletions to age (see bench.sh)" >&2
    sleep "$left"
  fi
}
suite tmpfs "$work/tmpfs"
wait_settled
# Each cluster is a repository of its own; the ceiling keeps git (and verify's look for tracked
# keys) from ever reaching kpki's own repository above target/, whose test fixtures hold keys.
GIT_CEILING_DIRECTORIES=$disk suite disk "$disk"
GIT_CEILING_DIRECTORIES=$disk fleet_suite "$disk"

# kpki rollout against a local fleet of 100 TLS listeners (network namespaces: root only).
if [ "$(id -u)" = 0 ]; then
  read -r rollout_time rollout_current < <(bash "$root/tests/bench/rollout.sh" "$kpki" "$work")
  rollout_line="| \`kpki rollout\`, 100 reachable endpoints (25 nodes, every role) | $rollout_time | ($rollout_current answered with a certificate) |"
else
  rollout_line="| \`kpki rollout\`, 100 reachable endpoints | - | (needs root for network namespaces: not run) |"
fi

# The crypto floor and the per-file cost (criterion): name, then its median time.
floor=$(cd "$root" && cargo bench --quiet --bench floor -- --quick 2>/dev/null \
  | awk '/^[^ ]/ { name = $0; next } /time:/ && name != "" { gsub(/\[|\]/, ""); printf "| %s | %s %s |\n", name, $4, $5; name = "" }')

# The table of init times for label $1.
init_table() {
  local label=$1 n count b ratio
  echo "| nodes | files | openssl + age (s) | kpki init (s) | speed-up | kpki per node (ms) | kpki peak RSS (MiB) |"
  echo "|---:|---:|---:|---:|---:|---:|---:|"
  for n in 3 100 1000; do
    count=$(files "$(run_dir "${dirs[$label]}" kpki-$n 1)" | wc -l)
    b=${base[$label-$n]:-} ratio="-"
    [ -n "$b" ] && ratio=$(echo "$b / ${kp[$label-$n]}" | bc -l | xargs printf '%.0fx')
    echo "| $n | $count | ${b:--} | ${kp[$label-$n]} | $ratio | $(echo "${kp[$label-$n]} * 1000 / $n" | bc -l | xargs printf '%.2f') | ${rss[$label-$n]} |"
  done
}
declare -A dirs=([tmpfs]="$work/tmpfs" [disk]="$disk")

{
  echo "kpki benchmark, $(date -u +%Y-%m-%d), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -m); medians of $baseline_runs baseline and $kpki_runs kpki runs ($small_runs at 3 nodes)"
  echo
  echo "In a tmpfs ($work/tmpfs):"
  echo
  init_table tmpfs
  echo
  echo "On the repository's disk ($disk, $(df -T "$disk" | awk 'NR == 2 {print $2}')):"
  echo
  init_table disk
  echo
  echo "| 1,000 nodes | tmpfs (s) | disk (s) | peak RSS, disk (MiB) |"
  echo "|---|---:|---:|---:|"
  echo "| no-op \`kpki rotate\` | ${rotate[tmpfs]} | ${rotate[disk]} | ${rotate_rss[disk]} |"
  echo "| \`kpki status\` | ${status[tmpfs]} | ${status[disk]} | ${status_rss[disk]} |"
  echo "| \`kpki verify -i\` (decrypts and checks every secret) | ${verify[tmpfs]} | ${verify[disk]} | ${verify_rss[disk]} |"
  echo "| a fresh clone's first \`kpki init -i\` (reads every file from secrets/) | ${refresh[tmpfs-1000]} | ${refresh[disk-1000]} | - |"
  echo
  echo "At $fleet nodes (Kubernetes supports 5,000), on the disk, beside 1,000 nodes: a ratio near $(echo "$fleet / 1000" | bc -l | xargs printf '%.1f') is linear."
  echo
  echo "| command | 1,000 nodes (s) | $fleet nodes (s) | ratio |"
  echo "|---|---:|---:|---:|"
  ratio() { echo "$2 / $1" | bc -l | xargs printf '%.1f'; }
  echo "| \`kpki init\` (peak RSS $init5k_rss MiB) | ${kp[disk-1000]} | $init5k | $(ratio "${kp[disk-1000]}" "$init5k") |"
  echo "| \`kpki status\` | ${status[disk]} | $status5k | $(ratio "${status[disk]}" "$status5k") |"
  echo "| no-op \`kpki rotate\` | ${rotate[disk]} | $rotate5k | $(ratio "${rotate[disk]}" "$rotate5k") |"
  echo "| \`kpki verify -i\` | ${verify[disk]} | $verify5k | $(ratio "${verify[disk]}" "$verify5k") |"
  echo "| a fresh clone's first \`kpki init -i\` | ${refresh[disk-1000]} | ${refresh[disk-$fleet]} | $(ratio "${refresh[disk-1000]}" "${refresh[disk-$fleet]}") |"
  echo
  echo "| asking the running cluster | time (s) | |"
  echo "|---|---:|---|"
  echo "$rollout_line"
  echo
  echo "| the floor, per operation (criterion, median) | time |"
  echo "|---|---:|"
  echo "$floor"
  echo
  echo "Both sides made the same files at 3 and 100 nodes; kpki's output verifies (\`kpki verify\`) at 3 and 1,000."
} | tee "$out/results.md"
