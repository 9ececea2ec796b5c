# Sourced by the other scripts: puts the tools scripts/setup.sh installed first on PATH.
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$repo_root/.tools/venv/bin:$HOME/.cargo/bin:$PATH"
export REELMESH_NATS_SERVER="$repo_root/.tools/venv/bin/nats-server"
export REELMESH_GRPCURL="$repo_root/.tools/venv/bin/grpcurl"
