# shellcheck shell=bash
# install_missing_apt LABEL PACKAGE...: installs, as root on Debian, the
# packages that are not installed yet, saying which under LABEL. Sourced by
# scripts/setup.sh and the bench/ scripts.

install_missing_apt() {
  local label=$1 package
  shift
  local missing=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  if ((${#missing[@]})); then
    echo "$label: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}
