# shellcheck shell=bash
# BullMQ as the queue benchmarks run it. Sourced, from the repository root,
# by bench/queue.sh and bench/queue/bound.sh.
#
# install_bullmq LABEL: installs, as root on Debian 12, what running BullMQ
# needs (redis-server, Node.js and npm from apt if missing; BullMQ and ioredis
# at the versions pinned in bench/queue/package.json into .tools/bench-node)
# and sets bullmq_node_modules.
#
# start_bullmq LABEL DATA_DIR LOG_DIR PORT CONCURRENCY: starts redis-server on
# PORT with durable file storage (append-only file fsynced every second, no
# snapshots) in DATA_DIR, then one BullMQ worker with a no-op processor
# running CONCURRENCY jobs at a time, logs in LOG_DIR (redis-server.log,
# bullmq-worker.log); waits until both are ready, or stops the script with
# the log's last lines. Appends their pids to bullmq_pids (redis-server
# first) as it starts them, for the caller's cleanup.

install_bullmq() {
  local label=$1 packages=(redis-server)
  command -v node >/dev/null || packages+=(nodejs)
  command -v npm >/dev/null || packages+=(npm)
  # shellcheck source=../../scripts/apt.sh
  source scripts/apt.sh
  install_missing_apt "$label" "${packages[@]}"
  local node_dir="$PWD/.tools/bench-node"
  if ! cmp -s bench/queue/package.json "$node_dir/package.json"; then
    echo "$label: installing BullMQ and ioredis (bench/queue/package.json) into .tools/bench-node"
    rm -rf "$node_dir"
    mkdir -p "$node_dir"
    cp bench/queue/package.json "$node_dir/package.json"
    (cd "$node_dir" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
  fi
  bullmq_node_modules="$node_dir/node_modules"
}

# shellcheck source=../wait.sh
source bench/wait.sh

bullmq_pids=()

start_bullmq() {
  local label=$1 data=$2 logs=$3 port=$4 concurrency=$5
  redis-server --bind 127.0.0.1 --port "$port" --dir "$data" \
    --appendonly yes --appendfsync everysec --save '' --daemonize no \
    >"$logs/redis-server.log" 2>&1 &
  bullmq_pids+=($!)
  wait_for "$label" "${bullmq_pids[-1]}" redis-server "$logs/redis-server.log" \
    redis-cli -p "$port" ping
  node bench/queue/bullmq.mjs worker --port "$port" --concurrency "$concurrency" \
    --node-modules "$bullmq_node_modules" >"$logs/bullmq-worker.log" 2>&1 &
  bullmq_pids+=($!)
  wait_for "$label" "${bullmq_pids[-1]}" "the BullMQ worker" "$logs/bullmq-worker.log" \
    grep -qx ready "$logs/bullmq-worker.log"
}
