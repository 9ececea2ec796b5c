# shellcheck shell=bash
# wait_for LABEL PID WHAT LOG CHECK...: waits up to 60 s for the command
# CHECK to pass, giving up early if process PID (WHAT) died; if it never
# passes, stops the script with the last lines of LOG, saying so under
# LABEL. Sourced, from the repository root, by the bench/ scripts.

wait_for() {
  local label=$1 pid=$2 what=$3 log=$4
  shift 4
  for _ in $(seq 600); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "$label: $what did not come up; last lines of $log:" >&2
  tail -n 20 "$log" >&2 || true
  exit 1
}
