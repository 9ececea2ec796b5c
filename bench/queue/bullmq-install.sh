# shellcheck shell=bash
# install_bullmq LABEL: installs, as root on Debian 12, what running BullMQ
# needs (redis-server, Node.js and npm from apt if missing; BullMQ and ioredis
# at the versions pinned in bench/queue/package.json into .tools/bench-node)
# and sets bullmq_node_modules. Sourced, from the repository root, by
# bench/queue.sh and bench/queue/bound.sh.

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
