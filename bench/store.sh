#!/usr/bin/env bash
# Store benchmark: one large object (1 GiB by default) through the Store
# gRPC API of a release-built reelmesh-store on a file:// backend, on this
# machine. Reports, for Upload and Download each, the throughput and the
# store process's peak RSS (VmHWM, reset between the two), then the same
# bytes copied by cp for comparison. Run as root on Debian 12 (the peak is
# reset through /proc/<pid>/clear_refs):
#
#   bench/store.sh               # 1024 MiB
#   BENCH_MIB=256 bench/store.sh # quicker
#
# The issue's target: the service's peak RSS stays under 150 MB either way.
# Needs 2 x BENCH_MIB of free disk under BENCH_DIR (default /var/tmp), all
# removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

export BENCH_MIB="${BENCH_MIB:-1024}"
BENCH_DIR="${BENCH_DIR:-/var/tmp}"

if [[ $EUID -ne 0 ]]; then
  echo "bench/store.sh: run as root (it installs packages and reads another process's peak RSS)" >&2
  exit 1
fi
scripts/setup.sh
# shellcheck source=../scripts/env.sh
source scripts/env.sh

echo "building reelmesh-store and the driver (release)" >&2
cargo build --release --quiet -p reelmesh-store -p reelmesh-store-bench
target="${CARGO_TARGET_DIR:-target}/release"

work="$(mktemp -d "$BENCH_DIR/reelmesh-store-bench.XXXXXX")"
store_pid=""
cleanup() {
  if [[ -n "$store_pid" ]]; then kill "$store_pid" 2>/dev/null || true; wait "$store_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cat > "$work/reelmesh.toml" <<EOF
[store]
listen = "127.0.0.1:$port"
url = "file://$work/store"
api_keys = { "bench-key" = "bench" }
EOF
REELMESH_CONFIG="$work/reelmesh.toml" RUST_LOG=warn "$target/reelmesh-store" > "$work/store.log" 2>&1 &
store_pid=$!
# Ready when the port accepts connections (the service binds, then serves).
for _ in $(seq 600); do
  if python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.1)" 2>/dev/null; then break; fi
  kill -0 "$store_pid" 2>/dev/null || { cat "$work/store.log" >&2; exit 1; }
  sleep 0.1
done

report="$("$target/reelmesh-store-bench" --endpoint "http://127.0.0.1:$port" --api-key bench-key --pid "$store_pid" --mib "$BENCH_MIB")"

# The plain tool: cp of the stored file, then sync, for what the disk itself
# does with the same bytes (no network, no hashing).
stored="$work/store/tenants/bench/bench/big.bin"
sync
start=$(date +%s.%N)
cp "$stored" "$work/copy.bin"
sync
end=$(date +%s.%N)

python3 - "$report" "$start" "$end" <<'EOF'
import json, sys
report = json.loads(sys.argv[1])
cp_seconds = float(sys.argv[3]) - float(sys.argv[2])
size = report["size_mib"]
print(f"store benchmark: {size:.0f} MiB through reelmesh-store (file:// backend), server idle RSS {report['server_idle_rss_mib']:.1f} MiB")
print(f"{'':10} {'seconds':>8} {'MiB/s':>8} {'server peak RSS (MiB)':>22}")
for direction in ("upload", "download"):
    r = report[direction]
    print(f"{direction:10} {r['seconds']:8.2f} {r['mib_per_s']:8.1f} {r['server_peak_rss_mib']:22.1f}")
print(f"{'cp + sync':10} {cp_seconds:8.2f} {size / cp_seconds:8.1f} {'':>22}")
print(json.dumps(report))
EOF
