#!/usr/bin/env bash
# Prints the path of a working sqitch with PostgreSQL support (DBD::Pg), installing it if
# missing: apt-get as root or with passwordless sudo, else unpacked into .tools/ (no root).
# Also makes sure a psql exists, since sqitch's pg engine runs it.
# Knobs: PW_INSTALL=auto|apt|tools, PW_IGNORE_SYSTEM=1 (see scripts/lib.sh).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# sqitch_ok PATH: sqitch runs and its perl can load DBD::Pg.
sqitch_ok() {
  local s=$1 perl=perl first
  [[ -x $s ]] || return 1
  "$s" --version >/dev/null 2>&1 || return 1
  first=$(head -n 1 "$s" 2>/dev/null || true)
  if [[ $s == "$TOOLS/bin/sqitch" ]]; then
    (. "$TOOLS/env.sh" && perl -MDBD::Pg -e 1) >/dev/null 2>&1
    return
  fi
  if [[ $first =~ ^#![[:space:]]*([^[:space:]]*perl[^[:space:]]*) ]]; then
    perl=${BASH_REMATCH[1]}
    [[ $perl == */env ]] && perl=perl
  fi
  "$perl" -MDBD::Pg -e 1 >/dev/null 2>&1
}

find_sqitch() {
  local s
  if [[ ${PW_IGNORE_SYSTEM:-} != 1 ]] && s=$(command -v sqitch 2>/dev/null) && sqitch_ok "$s"; then
    echo "$s"
    return 0
  fi
  sqitch_ok "$TOOLS/bin/sqitch" && { echo "$TOOLS/bin/sqitch"; return 0; }
  return 1
}

install_sqitch() {
  local mode
  mode=$(install_mode)
  if [[ $mode == tools || ${PW_IGNORE_SYSTEM:-} == 1 ]]; then
    tools_unpack sqitch libdbd-pg-perl
    tools_wrap sqitch usr/bin/sqitch
  else
    apt_install sqitch libdbd-pg-perl
  fi
}

main() {
  local s
  ensure_psql >/dev/null
  if ! s=$(find_sqitch); then
    install_sqitch
    s=$(find_sqitch) || die "sqitch is installed but does not work (sqitch --version, or perl -MDBD::Pg)"
  fi
  echo "$s"
}

with_lock tools main
