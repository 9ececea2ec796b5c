# Sourced by the other scripts: puts the tools scripts/setup.sh installed first on PATH.
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$repo_root/.tools/venv/bin:$repo_root/.tools/node_modules/.bin:$HOME/.cargo/bin:$PATH"
export REELMESH_NATS_SERVER="$repo_root/.tools/venv/bin/nats-server"
export REELMESH_GRPCURL="$repo_root/.tools/venv/bin/grpcurl"
# The storage emulators the integration tests start (moto's S3, Azurite).
export REELMESH_MOTO_SERVER="$repo_root/.tools/venv/bin/moto_server"
export REELMESH_AZURITE_BLOB="$repo_root/.tools/node_modules/.bin/azurite-blob"
