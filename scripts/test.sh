#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then unit,
# in-process and integration tests (real nats-server, real GStreamer).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
