#!/usr/bin/env bash
# Prints the directory holding working `promtool` and `prometheus` binaries (Debian package
# prometheus), installing it if missing: apt-get as root or with passwordless sudo, else
# unpacked into .tools/ (no root), with wrappers in .tools/bin.
# Only the binaries are wanted, for tests (promtool check/test, a throwaway server): the
# package's system service is never started, and is disabled when this script installed it.
# Knobs: PW_INSTALL=auto|apt|tools, PW_IGNORE_SYSTEM=1 (see scripts/lib.sh).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# bindir_ok DIR: DIR has a promtool and a prometheus that run.
bindir_ok() {
  local d=$1
  [[ -x $d/promtool && -x $d/prometheus ]] || return 1
  "$d/promtool" --version >/dev/null 2>&1 && "$d/prometheus" --version >/dev/null 2>&1
}

find_bindir() {
  local p d
  if [[ ${PW_IGNORE_SYSTEM:-} != 1 ]]; then
    if p=$(command -v promtool 2>/dev/null); then
      d=$(dirname "$p")
      bindir_ok "$d" && { echo "$d"; return 0; }
    fi
    bindir_ok /usr/bin && { echo /usr/bin; return 0; }
  fi
  bindir_ok "$TOOLS/bin" && { echo "$TOOLS/bin"; return 0; }
  return 1
}

# The service as root: a policy-rc.d that forbids starting anything while the package is
# configured (invoke-rc.d and deb-systemd-invoke both ask it), then, if the package was new,
# the service is disabled and stopped in case something started it anyway.
POLICY=/usr/sbin/policy-rc.d
OWN_POLICY=

# shellcheck disable=SC2317  # run by the EXIT trap
drop_policy() { [[ -z $OWN_POLICY ]] || _priv rm -f "$POLICY"; }

forbid_service_starts() {
  [[ -e $POLICY ]] && return 0 # e.g. the `exit 101` of container images: already forbids
  note "writing $POLICY for the install (no service may start), removed afterwards"
  printf '#!/bin/sh\n# scripts/ensure-prometheus.sh: no service starts during its install\nexit 101\n' |
    _priv tee "$POLICY" >/dev/null
  _priv chmod 755 "$POLICY"
  OWN_POLICY=1
  trap drop_policy EXIT
}

stop_system_service() {
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    note "disabling and stopping the prometheus service the package enabled (only its binaries are used)"
    _priv systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  elif [[ -x /etc/init.d/prometheus ]]; then
    # no systemd: the sysv script runs the daemon with a pidfile; its `status` says if it runs
    if _priv /etc/init.d/prometheus status >/dev/null 2>&1; then
      note "stopping the prometheus service the package started"
      _priv /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    fi
    _priv update-rc.d prometheus disable >/dev/null 2>&1 || true
  fi
}

install_prometheus() {
  local mode
  mode=$(install_mode)
  if [[ $mode == tools || ${PW_IGNORE_SYSTEM:-} == 1 ]]; then
    # Only the two Go binaries matter: the JavaScript of the old console UI is left out.
    TOOLS_SKIP+=" fonts-glyphicons-halflings libjs-bootstrap4 libjs-eonasdan-bootstrap-datetimepicker
      libjs-jquery libjs-jquery-hotkeys libjs-moment libjs-moment-timezone libjs-mustache
      libjs-popper.js libjs-rickshaw "
    tools_unpack prometheus
    tools_wrap promtool usr/bin/promtool
    tools_wrap prometheus usr/bin/prometheus
  else
    local was_installed=
    dpkg-query -W -f='${db:Status-Status}' prometheus 2>/dev/null | grep -x installed >/dev/null &&
      was_installed=1
    forbid_service_starts
    apt_install prometheus
    [[ -n $was_installed ]] || stop_system_service
  fi
}

main() {
  local d
  if ! d=$(find_bindir); then
    install_prometheus
    d=$(find_bindir) || die "prometheus is installed but promtool/prometheus --version fail"
  fi
  echo "$d"
}

with_lock tools main
