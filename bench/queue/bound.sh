#!/usr/bin/env bash
# The redesign bounds: how fast the job path could get if a job's record and
# its events were one stream (the redesign BENCHMARKS.md sketches), measured
# through the real gateway before anyone builds it. Run as root on Debian 12:
#
#   bench/queue/bound.sh                      # 3000 jobs, 1 then 16 producers, 3 runs each
#   BENCH_RUNS=1 BENCH_JOBS=1000 bench/queue/bound.sh
#
# It builds this commit twice in release mode (commit first: the second
# build is of HEAD, not of the working tree): as it is, and with
# bench/queue/bound.patch applied in a throw-away git worktree (built in
# target/bound, or $BOUND_TARGET_DIR). The patch makes these changes:
#   - with REELMESH_BOUND_ONE_MESSAGE set, the gateway's submit stores one
#     message, the record as the job's `queued` change on the events stream
#     (compare-and-set: only if nothing is stored for the job), in place of
#     the record, the queued event and the work item;
#   - with REELMESH_BOUND_WORK_ITEM set, it stores that message and then,
#     once it is stored, a work item holding the record and the change's
#     sequence (two round trips to NATS); with REELMESH_BOUND_WORK_PIPELINED
#     set, it sends both at once and awaits both acks (one round trip), so
#     the work item does not hold the sequence;
#   - reelmesh-bound-worker takes the `queued` messages (a durable consumer
#     filtered on `queued`), stores one `completed` message holding the
#     record (compare-and-set on the job's last subject sequence) and acks;
#     with `work` it takes the work items instead, stores `started` and
#     then `completed` (each by compare-and-set on the one before) and acks;
#     with `work-get` it first reads the sequence of the job's last change
#     (one direct get);
#   - reelmesh-grpc-rtt times a health check to the gateway: gRPC alone.
# These are bounds, not the redesign: no running slots, no cancel, no
# progress, no notify, no GetJob. The work-item stack keeps what the first
# leaves out that every job pays for: a `started` event and a stored
# message per queued job to count a tenant's queued jobs by (today's work
# stream, which also keeps priorities). For each producer count and run it
# starts, in turn, each stack in $BOUND_STACKS on a fresh nats-server (file
# storage) and free ports:
#   - current: this commit's gateway and render worker (concurrency 16);
#   - bound: the patched gateway (one message) and reelmesh-bound-worker;
#   - bound-work: the patched gateway (work item) and reelmesh-bound-worker work;
#   - bound-work-get: the gateway sending both at once, and the worker with
#     work-get;
#   - bound-1-thread: bound with TOKIO_WORKER_THREADS=1 for the gateway,
#     the worker and the load generator (not run by default);
#   - bullmq: redis-server and a BullMQ worker as bench/queue.sh runs them
#     (started once and kept for every run, as that script does, so later
#     runs find node's JIT warm), with that script's BullMQ load generator,
#     so each bound sits beside BullMQ measured in the same run (its CPU
#     shows under nats-server for redis-server and under worker for the
#     BullMQ worker);
# notify runs in none of them. The load generator is the queue benchmark's
# (bench/queue/load). Prints medians (throughput, submit p50 / p99,
# submit -> completed p50, CPU ms per job of nats-server, gateway, worker).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo="$(pwd)"

jobs="${BENCH_JOBS:-3000}"
runs="${BENCH_RUNS:-3}"
producers="${BENCH_PRODUCERS:-1,16}"
warmup="${BENCH_WARMUP:-200}"
stacks="${BOUND_STACKS:-current,bound,bound-work,bound-work-get,bullmq}"
stacks="${stacks// /}"
for stack in ${stacks//,/ }; do
  case "$stack" in
    current | bound | bound-work | bound-work-get | bound-1-thread | bullmq) ;;
    *)
      echo "bench/queue/bound.sh: unknown stack '$stack' in BOUND_STACKS" >&2
      exit 1
      ;;
  esac
done

if [[ $EUID -ne 0 ]]; then
  echo "bench/queue/bound.sh: run as root (it installs packages)" >&2
  exit 1
fi
scripts/setup.sh
if [[ ",$stacks," == *,bullmq,* ]]; then
  # shellcheck source=bullmq-stack.sh
  source bench/queue/bullmq-stack.sh
  install_bullmq bound
fi
# shellcheck source=../../scripts/env.sh
source scripts/env.sh

current="${CARGO_TARGET_DIR:-$repo/target}/release"
bound_target="${BOUND_TARGET_DIR:-$repo/target/bound}"
bound="$bound_target/release"
services=(-p reelmesh-gateway -p reelmesh-render -p reelmesh-queue-bench)

echo "bound: cargo build --release (this commit)"
cargo build --release "${services[@]}"

tree="$(mktemp -d /var/tmp/reelmesh-bound-tree.XXXXXX)"
pids=()
scratch=()
# Stops the processes of the stack in hand, waiting for them to exit.
stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
cleanup() {
  stop_all
  pids=("${bullmq_pids[@]}")
  stop_all
  rm -rf "${scratch[@]}"
  git -C "$repo" worktree remove --force "$tree" 2>/dev/null || rm -rf "$tree"
}
trap cleanup EXIT
git worktree add --quiet --detach "$tree" HEAD
git -C "$tree" apply "$repo/bench/queue/bound.patch"
echo "bound: cargo build --release (with bench/queue/bound.patch, in $bound_target)"
(cd "$tree" && CARGO_TARGET_DIR="$bound_target" cargo build --release \
  -p reelmesh-gateway -p reelmesh-queue-bench)

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Waits up to 30 s for the gateway at $1 to answer its health check.
wait_serving() {
  for _ in $(seq 300); do
    if "$bound/reelmesh-grpc-rtt" "http://$1" 1 >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "bound: the gateway at $1 did not come up" >&2
  exit 1
}

# One run of one stack: prints a JSON line of the load generator's report
# with the CPU per job of each process added.
run_stack() {
  local stack="$1" producers="$2" data port nats_port
  data="$(mktemp -d /var/tmp/reelmesh-bound.XXXXXX)"
  scratch+=("$data")
  if [[ "$stack" == bullmq ]]; then
    run_bullmq "$producers" "$data"
    return
  fi
  port="$(free_port)"
  nats_port="$(free_port)"
  nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$data/nats" >"$data/nats.log" 2>&1 &
  local nats=$!
  pids=("$nats")
  local threads=()
  [[ "$stack" == bound-1-thread ]] && threads=(TOKIO_WORKER_THREADS=1)
  local common=(REELMESH_GATEWAY_LISTEN="127.0.0.1:$port"
                REELMESH_GATEWAY_NATS_URL="nats://127.0.0.1:$nats_port"
                REELMESH_GATEWAY_STORE_URL="file://$data/store")
  local gateway worker
  if [[ "$stack" == current ]]; then
    env "${common[@]}" "$current/reelmesh-gateway" >"$data/gateway.log" 2>&1 &
    gateway=$!
    pids+=("$gateway")
    wait_serving "127.0.0.1:$port"
    REELMESH_RENDER_LISTEN="127.0.0.1:$(free_port)" \
      REELMESH_RENDER_NATS_URL="nats://127.0.0.1:$nats_port" \
      REELMESH_RENDER_STORE_URL="file://$data/store" REELMESH_RENDER_CONCURRENCY=16 \
      "$current/reelmesh-render" >"$data/worker.log" 2>&1 &
    worker=$!
  else
    local submit=REELMESH_BOUND_ONE_MESSAGE=1 take=()
    [[ "$stack" == bound-work ]] && submit=REELMESH_BOUND_WORK_ITEM=1 take=(work)
    [[ "$stack" == bound-work-get ]] && submit=REELMESH_BOUND_WORK_PIPELINED=1 take=(work-get)
    env "${threads[@]}" "${common[@]}" "$submit" \
      "$bound/reelmesh-gateway" >"$data/gateway.log" 2>&1 &
    gateway=$!
    pids+=("$gateway")
    wait_serving "127.0.0.1:$port"
    env "${threads[@]}" "$bound/reelmesh-bound-worker" "nats://127.0.0.1:$nats_port" \
      "${take[@]}" >"$data/worker.log" 2>&1 &
    worker=$!
  fi
  pids+=("$worker")
  # Started, as far as its log tells (the render worker says so just
  # before it declares its consumers; the queue holds jobs meanwhile).
  for _ in $(seq 300); do
    grep -q -e ready -e "render worker" "$data/worker.log" 2>/dev/null && break
    sleep 0.1
  done
  if ! kill -0 "$worker" 2>/dev/null; then
    echo "bound: the $stack worker stopped; last lines of its log:" >&2
    tail -n 20 "$data/worker.log" >&2
    exit 1
  fi
  local before=("$(cpu_ticks "$nats")" "$(cpu_ticks "$gateway")" "$(cpu_ticks "$worker")")
  local report
  report="$(env "${threads[@]}" "$current/reelmesh-queue-bench" \
    --endpoint "http://127.0.0.1:$port" --nats-url "nats://127.0.0.1:$nats_port" \
    --jobs "$jobs" --producers "$producers" --warmup "$warmup" 2>"$data/load.log")"
  local after=("$(cpu_ticks "$nats")" "$(cpu_ticks "$gateway")" "$(cpu_ticks "$worker")")
  stop_all
  rm -rf "$data"
  report_json "$stack" "$report" "${before[@]}" "${after[@]}"
}

# Starts redis-server and the BullMQ worker, kept for every run (as
# bench/queue.sh keeps them): bullmq_port, bullmq_pids (redis, worker).
start_bullmq_stack() {
  bullmq_logs="$(mktemp -d /var/tmp/reelmesh-bound-bullmq.XXXXXX)"
  scratch+=("$bullmq_logs")
  bullmq_port="$(free_port)"
  start_bullmq bound "$bullmq_logs" "$bullmq_logs" "$bullmq_port" 16
}

# Stops the script, with the logs' last lines, unless both BullMQ
# processes are up (and the worker said it is ready).
check_bullmq() {
  if kill -0 "${bullmq_pids[0]}" 2>/dev/null && kill -0 "${bullmq_pids[1]}" 2>/dev/null \
    && grep -qx ready "$bullmq_logs/bullmq-worker.log"; then
    return 0
  fi
  echo "bound: redis-server or the BullMQ worker is not running; last lines of their logs:" >&2
  tail -n 20 "$bullmq_logs/redis-server.log" "$bullmq_logs/bullmq-worker.log" >&2
  exit 1
}

# One run of BullMQ, as run_stack's (redis-server under nats, the BullMQ
# worker under worker).
run_bullmq() {
  local producers="$1" data="$2" redis="${bullmq_pids[0]}" worker="${bullmq_pids[1]}"
  check_bullmq
  local before=("$(cpu_ticks "$redis")" 0 "$(cpu_ticks "$worker")")
  local report
  report="$(node bench/queue/bullmq.mjs load --port "$bullmq_port" \
    --node-modules "$bullmq_node_modules" --jobs "$jobs" --producers "$producers" \
    --warmup "$warmup" 2>"$data/load.log")"
  local after=("$(cpu_ticks "$redis")" 0 "$(cpu_ticks "$worker")")
  rm -rf "$data"
  report_json bullmq "$report" "${before[@]}" "${after[@]}"
}

# Prints a load generator's report with the stack's name and the CPU per
# job of its three processes (ticks before, then after) added.
report_json() {
  python3 - "$1" "$((jobs + warmup))" "$2" "${@:3}" <<'EOF'
import json, os, sys
stack, total, report = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
ticks = list(map(float, sys.argv[4:]))
hz = os.sysconf("SC_CLK_TCK")
cpu = [(a - b) * 1000 / hz / total for b, a in zip(ticks[:3], ticks[3:])]
report.update(stack=stack, cpu=dict(zip(["nats", "gateway", "worker"], cpu)))
print(json.dumps(report))
EOF
}

results="$(mktemp /var/tmp/reelmesh-bound-results.XXXXXX)"
scratch+=("$results")
if [[ ",$stacks," == *,bullmq,* ]]; then start_bullmq_stack; fi
for p in ${producers//,/ }; do
  for run in $(seq "$runs"); do
    for stack in ${stacks//,/ }; do
      echo "bound: $stack, $p producers, run $run of $runs" >&2
      run_stack "$stack" "$p" >>"$results"
    done
  done
done

# gRPC alone: a health check's round trip on an idle gateway.
data="$(mktemp -d /var/tmp/reelmesh-bound.XXXXXX)"
scratch+=("$data")
port="$(free_port)"
nats_port="$(free_port)"
nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$data/nats" >/dev/null 2>&1 &
pids=($!)
REELMESH_GATEWAY_LISTEN="127.0.0.1:$port" REELMESH_GATEWAY_NATS_URL="nats://127.0.0.1:$nats_port" \
  REELMESH_GATEWAY_STORE_URL="file://$data/store" "$current/reelmesh-gateway" >/dev/null 2>&1 &
pids+=($!)
wait_serving "127.0.0.1:$port"
rtt="$("$bound/reelmesh-grpc-rtt" "http://127.0.0.1:$port" 5000)"
stop_all

python3 - "$results" "$rtt" "$jobs" "$runs" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"\n{sys.argv[3]} no-op jobs per run, median of {sys.argv[4]} runs; notify not running.\n")
print("| producers | stack | throughput | submit p50 | submit p99 | submit→completed p50 "
      "| CPU ms/job nats-server | gateway | worker |")
print("|---|---|---|---|---|---|---|---|---|")
seen = []
for r in rows:
    key = (r["producers"], r["stack"])
    if key in seen:
        continue
    seen.append(key)
    same = [x for x in rows if (x["producers"], x["stack"]) == key]
    med = lambda f: statistics.median(f(x) for x in same)
    print(f"| {key[0]} | {key[1]} | {med(lambda x: x['throughput']):,.0f} jobs/s "
          f"| {med(lambda x: x['submit_ms']['p50']):.2f} ms | {med(lambda x: x['submit_ms']['p99']):.2f} ms "
          f"| {med(lambda x: x['e2e_ms']['p50']):.2f} ms | "
          + " | ".join(f"{med(lambda x: x['cpu'][k]):.3f}" for k in ("nats", "gateway", "worker")) + " |")
throughput = {key: statistics.median(x["throughput"] for x in rows
                                     if (x["producers"], x["stack"]) == key) for key in seen}
for producers in dict.fromkeys(p for p, _ in seen):
    if (producers, "bullmq") not in throughput:
        continue
    ratios = ", ".join(f"{stack} {throughput[(p, stack)] / throughput[(p, 'bullmq')]:.2f}×"
                       for p, stack in seen if p == producers and stack != "bullmq")
    print(f"\nThroughput / BullMQ's, {producers} producers: {ratios}")
print(f"\ngRPC alone (health check, idle gateway): {sys.argv[2]}")
EOF
rm -f "$results"
