#!/usr/bin/env bash
# Queue benchmark: N no-op jobs through reelmesh (submit -> work queue ->
# render worker -> completed event) vs BullMQ + Redis, on this machine, with
# the floor of any JetStream queue beside them.
# Run as root on Debian 12:
#
#   bench/queue.sh                          # 2000 jobs, 1 then 16 producers, 5 runs each
#   BENCH_RUNS=1 BENCH_JOBS=500 bench/queue.sh   # quick pass
#
# Installs what is missing (scripts/setup.sh; redis-server, and Node.js/npm
# if absent, from apt; BullMQ and ioredis as pinned in bench/queue/package.json
# into .tools/bench-node), builds reelmesh and the load generator
# (bench/queue/load) in release mode, starts on free ports with throw-away
# data directories:
#   - reelmesh: nats-server (JetStream file storage) and the gateway, render
#     and notify services, each its own process, render with
#     REELMESH_RENDER_CONCURRENCY=$BENCH_CONCURRENCY;
#   - BullMQ: redis-server (appendonly yes, appendfsync everysec) and a
#     BullMQ Worker process with the same concurrency;
#   - the JetStream floor: its own nats-server (file storage) and a worker
#     process (bench/queue/load/src/bin/floor.rs) doing the least a JetStream
#     queue can do per job: one stored job, one stored completion, one ack;
# runs bench/queue/run.py and stops everything. Results:
# bench/queue/results.md (also printed).
#
# Optional: BENCH_JOBS (default 2000), BENCH_PRODUCERS (default "1,16"),
# BENCH_RUNS (default 5), BENCH_WARMUP (untimed jobs before each run, default
# 200), BENCH_CONCURRENCY (worker concurrency of both, default 16),
# BENCH_TOOLS (subset of reelmesh,bullmq,jetstream), BENCH_TIMEOUT (seconds per run,
# default 300), BENCH_REELMESH=dev (run `reelmesh dev` instead of separate
# services, with REELMESH_RENDER_CONCURRENCY=$BENCH_CONCURRENCY). See
# bench/queue/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

# The command as it was given, with the BENCH_* settings that shaped it.
command_line="bench/queue.sh"
for name in BENCH_REELMESH BENCH_TIMEOUT BENCH_TOOLS BENCH_CONCURRENCY BENCH_WARMUP BENCH_RUNS BENCH_PRODUCERS BENCH_JOBS; do
  if [[ -n "${!name:-}" ]]; then command_line="$name=${!name} $command_line"; fi
done

export BENCH_JOBS="${BENCH_JOBS:-2000}"
export BENCH_PRODUCERS="${BENCH_PRODUCERS:-1,16}"
export BENCH_RUNS="${BENCH_RUNS:-5}"
export BENCH_WARMUP="${BENCH_WARMUP:-200}"
export BENCH_CONCURRENCY="${BENCH_CONCURRENCY:-16}"
export BENCH_TOOLS="${BENCH_TOOLS:-reelmesh,bullmq,jetstream}"
BENCH_REELMESH="${BENCH_REELMESH:-services}"

if [[ $EUID -ne 0 ]]; then
  echo "bench/queue.sh: run as root (it installs packages)" >&2
  exit 1
fi
if [[ "$BENCH_REELMESH" != services && "$BENCH_REELMESH" != dev ]]; then
  echo "bench/queue.sh: BENCH_REELMESH must be services or dev" >&2
  exit 1
fi

uses() { [[ ",$BENCH_TOOLS," == *",$1,"* ]]; }

# --- installs --------------------------------------------------------------
if uses reelmesh || uses jetstream; then
  scripts/setup.sh
fi
# shellcheck source=../scripts/apt.sh
source scripts/apt.sh
install_missing_apt bench python3
if uses bullmq; then
  # shellcheck source=queue/bullmq-stack.sh
  source bench/queue/bullmq-stack.sh
  install_bullmq bench
fi
# shellcheck source=../scripts/env.sh
source scripts/env.sh

# --- processes -----------------------------------------------------------------
pids=()
data_dirs=()
logs="$repo/bench/queue/logs"
mkdir -p "$logs"

cleanup() {
  local pid all=("${pids[@]}" "${bullmq_pids[@]}")
  for ((i = ${#all[@]} - 1; i >= 0; i--)); do
    pid="${all[$i]}"
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -KILL "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  for dir in "${data_dirs[@]}"; do rm -rf "$dir"; done
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# shellcheck source=wait.sh
source bench/wait.sh

run_args=(--command "$command_line" --concurrency "$BENCH_CONCURRENCY" --tools "$BENCH_TOOLS"
          --reelmesh-mode "$BENCH_REELMESH")
target="${CARGO_TARGET_DIR:-$repo/target}/release"

if uses jetstream && ! uses reelmesh; then
  echo "bench: cargo build --release (the load generators)"
  cargo build --release -p reelmesh-queue-bench
fi

if uses reelmesh; then
  echo "bench: cargo build --release (reelmesh, its services and the load generators)"
  cargo build --release -p reelmesh -p reelmesh-gateway -p reelmesh-render -p reelmesh-notify \
    -p reelmesh-queue-bench
  data_dir="$(mktemp -d /var/tmp/reelmesh-queue-bench.XXXXXX)"
  data_dirs+=("$data_dir")
  grpc_port="$(free_port)"
  nats_port="$(free_port)"
  while [[ "$nats_port" == "$grpc_port" ]]; do nats_port="$(free_port)"; done
  addr="127.0.0.1:$grpc_port"
  reelmesh_start=${#pids[@]}
  if [[ "$BENCH_REELMESH" == dev ]]; then
    echo "bench: starting reelmesh dev on $addr (nats port $nats_port, log bench/queue/logs/reelmesh-dev.log)"
    REELMESH_RENDER_CONCURRENCY="$BENCH_CONCURRENCY" \
      "$target/reelmesh" dev --data-dir "$data_dir" --listen "$addr" --nats-port "$nats_port" \
      >"$logs/reelmesh-dev.log" 2>&1 &
    pids+=($!)
    wait_for bench "$!" "reelmesh dev" "$logs/reelmesh-dev.log" grpcurl -plaintext "$addr" list
    # The dev process and the nats-server it started.
    reelmesh_pids="$!,$(pgrep -d, -P "$!" || true)"
  else
    echo "bench: starting nats-server (port $nats_port), reelmesh gateway ($addr), render" \
         "(concurrency $BENCH_CONCURRENCY) and notify; logs in bench/queue/logs/"
    mkdir -p "$data_dir/nats" "$data_dir/store"
    # As `reelmesh dev` starts it: JetStream with file storage in the data dir,
    # plus a monitoring port from which the messages per job are counted.
    monitor_port="$(free_port)"
    "$REELMESH_NATS_SERVER" -a 127.0.0.1 -p "$nats_port" -m "$monitor_port" -js -sd "$data_dir/nats" \
      >"$logs/nats-server.log" 2>&1 &
    pids+=($!)
    nats_url="nats://127.0.0.1:$nats_port"
    store_url="file://$data_dir/store"
    health_ports=("$(free_port)" "$(free_port)")
    REELMESH_GATEWAY_LISTEN="$addr" REELMESH_GATEWAY_NATS_URL="$nats_url" \
      REELMESH_GATEWAY_STORE_URL="$store_url" \
      "$target/reelmesh-gateway" >"$logs/reelmesh-gateway.log" 2>&1 &
    pids+=($!)
    wait_for bench "$!" "reelmesh gateway" "$logs/reelmesh-gateway.log" grpcurl -plaintext "$addr" list
    REELMESH_RENDER_LISTEN="127.0.0.1:${health_ports[0]}" REELMESH_RENDER_NATS_URL="$nats_url" \
      REELMESH_RENDER_STORE_URL="$store_url" REELMESH_RENDER_CONCURRENCY="$BENCH_CONCURRENCY" \
      "$target/reelmesh-render" >"$logs/reelmesh-render.log" 2>&1 &
    pids+=($!)
    wait_for bench "$!" "reelmesh render" "$logs/reelmesh-render.log" \
      grpcurl -plaintext "127.0.0.1:${health_ports[0]}" grpc.health.v1.Health/Check
    REELMESH_NOTIFY_LISTEN="127.0.0.1:${health_ports[1]}" REELMESH_NOTIFY_NATS_URL="$nats_url" \
      "$target/reelmesh-notify" >"$logs/reelmesh-notify.log" 2>&1 &
    pids+=($!)
    wait_for bench "$!" "reelmesh notify" "$logs/reelmesh-notify.log" \
      grpcurl -plaintext "127.0.0.1:${health_ports[1]}" grpc.health.v1.Health/Check
    reelmesh_pids="$(IFS=,; echo "${pids[*]:$reelmesh_start}")"
    run_args+=(--nats-monitor "http://127.0.0.1:$monitor_port")
  fi
  run_args+=(--load-bin "$target/reelmesh-queue-bench" --reelmesh-bin "$target/reelmesh"
             --endpoint "http://$addr" --nats-url "nats://127.0.0.1:$nats_port"
             --reelmesh-pids "$reelmesh_pids")
fi

if uses bullmq; then
  redis_dir="$(mktemp -d /var/tmp/reelmesh-queue-bench-redis.XXXXXX)"
  data_dirs+=("$redis_dir")
  redis_port="$(free_port)"
  echo "bench: starting redis-server (port $redis_port, appendonly yes, appendfsync everysec)" \
       "and a BullMQ worker (concurrency $BENCH_CONCURRENCY)"
  start_bullmq bench "$redis_dir" "$logs" "$redis_port" "$BENCH_CONCURRENCY"
  run_args+=(--redis-port "$redis_port" --node-modules "$bullmq_node_modules"
             --bullmq-pids "${bullmq_pids[0]},${bullmq_pids[1]}")
fi

if uses jetstream; then
  floor_dir="$(mktemp -d /var/tmp/reelmesh-queue-bench-floor.XXXXXX)"
  data_dirs+=("$floor_dir")
  floor_port="$(free_port)"
  echo "bench: starting nats-server (port $floor_port) and the JetStream floor worker" \
       "(concurrency $BENCH_CONCURRENCY)"
  "$REELMESH_NATS_SERVER" -a 127.0.0.1 -p "$floor_port" -js -sd "$floor_dir" \
    >"$logs/floor-nats-server.log" 2>&1 &
  pids+=($!)
  floor_url="nats://127.0.0.1:$floor_port"
  # The worker connects once the server answers (it declares the streams).
  wait_for bench "$!" "floor nats-server" "$logs/floor-nats-server.log" \
    bash -c "echo >/dev/tcp/127.0.0.1/$floor_port"
  "$target/reelmesh-queue-floor" --role worker --nats-url "$floor_url" \
    --concurrency "$BENCH_CONCURRENCY" >"$logs/floor-worker.log" 2>&1 &
  pids+=($!)
  wait_for bench "$!" "floor worker" "$logs/floor-worker.log" grep -qx ready "$logs/floor-worker.log"
  run_args+=(--floor-bin "$target/reelmesh-queue-floor" --floor-nats-url "$floor_url"
             --floor-pids "${pids[-2]},${pids[-1]}")
fi

# --- benchmark -----------------------------------------------------------------
python3 bench/queue/run.py "${run_args[@]}"
