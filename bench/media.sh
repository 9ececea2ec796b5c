#!/usr/bin/env bash
# Media benchmark: reelmesh vs the ffmpeg CLI vs MoviePy, side by side.
# Run as root on Debian 12:
#
#   bench/media.sh                    # 5 timed runs per tool and operation
#   BENCH_RUNS=1 bench/media.sh       # quick pass
#
# Installs what is missing (scripts/setup.sh, ffmpeg, fonts-dejavu-core,
# MoviePy 2.x in .tools/bench-venv), builds reelmesh in release mode, starts
# a private `reelmesh dev` cluster on free ports, runs bench/media/run.py and
# stops the cluster. Results: bench/media/results.md (also printed).
#
# Optional: BENCH_RUNS (default 5), BENCH_TOOLS (subset of
# reelmesh,ffmpeg,moviepy), BENCH_OPS (subset of concat_copy,trim_copy,
# trim_exact,trim_smart,add_text,concat_reencode,extract_audio), BENCH_TIMEOUT (seconds
# per run, default 900). See bench/media/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

MOVIEPY_VERSION=2.2.1
export BENCH_RUNS="${BENCH_RUNS:-5}"
export BENCH_TOOLS="${BENCH_TOOLS:-reelmesh,ffmpeg,moviepy}"

# The command as it was given, with the BENCH_* settings that shaped it.
command_line="bench/media.sh"
for name in BENCH_TIMEOUT BENCH_OPS BENCH_TOOLS BENCH_RUNS; do
  if [[ -n "${!name:-}" ]]; then command_line="$name=${!name} $command_line"; fi
done

if [[ $EUID -ne 0 ]]; then
  echo "bench/media.sh: run as root (it installs packages)" >&2
  exit 1
fi

uses() { [[ ",$BENCH_TOOLS," == *",$1,"* ]]; }

# --- installs --------------------------------------------------------------
if uses reelmesh; then
  scripts/setup.sh
fi
apt_packages=(ffmpeg fonts-dejavu-core python3 python3-venv)
# shellcheck source=../scripts/apt.sh
source scripts/apt.sh
install_missing_apt bench "${apt_packages[@]}"
# shellcheck source=../scripts/env.sh
source scripts/env.sh

bench_python="$repo/.tools/bench-venv/bin/python"
if ! "$bench_python" -c "import importlib.metadata as m, sys; sys.exit(m.version('moviepy') != '$MOVIEPY_VERSION')" 2>/dev/null; then
  echo "bench: installing MoviePy $MOVIEPY_VERSION into .tools/bench-venv"
  python3 -m venv .tools/bench-venv
  .tools/bench-venv/bin/pip install -q --disable-pip-version-check "moviepy==${MOVIEPY_VERSION}"
fi
# MoviePy runs ffmpeg through imageio-ffmpeg, which would otherwise use its
# own bundled build: every tool uses the system ffmpeg.
IMAGEIO_FFMPEG_EXE="$(command -v ffmpeg)"
export IMAGEIO_FFMPEG_EXE

# --- reelmesh: build and start a private dev cluster -------------------------
run_args=(--command "$command_line" --moviepy-python "$bench_python")
reelmesh_down=""
dev_pid=""
data_dir=""
dev_log="$repo/bench/media/reelmesh-dev.log"

cleanup() {
  if [[ -n "$dev_pid" ]] && kill -0 "$dev_pid" 2>/dev/null; then
    kill -TERM "$dev_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$dev_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$dev_pid" 2>/dev/null || true
    wait "$dev_pid" 2>/dev/null || true
  fi
  if [[ -n "$data_dir" ]]; then rm -rf "$data_dir"; fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

if uses reelmesh; then
  reelmesh_bin="${CARGO_TARGET_DIR:-$repo/target}/release/reelmesh"
  echo "bench: cargo build --release -p reelmesh"
  if ! cargo build --release -p reelmesh; then
    reelmesh_down="cargo build --release -p reelmesh failed"
  fi
  if [[ -z "$reelmesh_down" ]]; then
    data_dir="$(mktemp -d /var/tmp/reelmesh-bench.XXXXXX)"
    grpc_port="$(free_port)"
    nats_port="$(free_port)"
    while [[ "$nats_port" == "$grpc_port" ]]; do nats_port="$(free_port)"; done
    addr="127.0.0.1:$grpc_port"
    echo "bench: starting reelmesh dev on $addr (nats port $nats_port, log $dev_log)"
    "$reelmesh_bin" dev --data-dir "$data_dir" --listen "$addr" --nats-port "$nats_port" >"$dev_log" 2>&1 &
    dev_pid=$!
    up=""
    for _ in $(seq 120); do
      if grpcurl -plaintext "$addr" list >/dev/null 2>&1; then up=1; break; fi
      kill -0 "$dev_pid" 2>/dev/null || break
      sleep 0.5
    done
    if [[ -z "$up" ]]; then
      echo "bench: reelmesh dev did not come up; last log lines:" >&2
      tail -n 20 "$dev_log" >&2 || true
      reelmesh_down="reelmesh dev did not answer on $addr within 60 s"
    else
      run_args+=(--reelmesh-bin "$reelmesh_bin" --endpoint "http://$addr")
    fi
  fi
  if [[ -n "$reelmesh_down" ]]; then
    echo "bench: $reelmesh_down; measuring the other tools only" >&2
    run_args+=(--reelmesh-down "$reelmesh_down")
  fi
fi

# --- benchmark -----------------------------------------------------------------
python3 bench/media/run.py "${run_args[@]}"
if [[ -n "$reelmesh_down" ]]; then
  echo "bench: reelmesh was not measured: $reelmesh_down" >&2
  exit 1
fi
