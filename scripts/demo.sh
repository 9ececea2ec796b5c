#!/usr/bin/env bash
# The main job, start to finish: install what is missing, build, start
# nats-server and every reelmesh service in one process, generate a sample
# clip, upload it, submit a trim over gRPC, show live progress, and print
# where the result is with its duration and codecs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
exec cargo run --quiet -p reelmesh -- demo --standalone "$@"
