#!/usr/bin/env bash
# with-env.sh [--stop-after] CMD...: runs CMD with sqitch and PostgreSQL ready: ensures
# both, exports .run/pg.env, and puts the sqitch dir and the PostgreSQL bin dir (psql,
# pg_ctl) on PATH. PW_PG_STARTED=1 tells CMD that the private cluster was started for it;
# with --stop-after it is stopped again once CMD exits (unless others use it).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STOP_AFTER=
if [[ ${1:-} == --stop-after ]]; then STOP_AFTER=1; shift; fi
(($#)) || die "usage: scripts/with-env.sh [--stop-after] CMD [ARG...]"
sqitch=$("$REPO/scripts/ensure-sqitch.sh")
report=$(mktemp "${TMPDIR:-/tmp}/pw-pg.XXXXXX")
PW_PG_REPORT=$report "$REPO/scripts/ensure-postgres.sh" || { rm -f "$report"; exit 1; }
# PW_PG_STARTED=1: the private cluster was started for this command.
PW_PG_STARTED=$(sed -n 's/^PW_PG_STARTED=//p' "$report")
rm -f "$report"
set -a
. "$RUN_DIR/pg.env"
set +a
# The caller's own PATH, for lines printed to be pasted into the caller's shell.
export PW_CALLER_PATH=${PW_CALLER_PATH:-$PATH} PW_PG_STARTED

# prepend DIR unless PATH already starts with it; standard dirs are on PATH anyway.
prepend() {
  case $1 in /usr/bin | /bin | /usr/local/bin | /usr/sbin | /sbin) return ;; esac
  case :$PATH: in :"$1":*) return ;; esac
  PATH=$1:$PATH
}
prepend "$(dirname "$sqitch")"
[[ -d $TOOLS/bin ]] && prepend "$TOOLS/bin"
prepend "$PW_PG_BINDIR"
export PATH PW_SQITCH=$sqitch
cd "$REPO"
[[ -n $STOP_AFTER ]] || exec "$@"
# --stop-after (make test): run CMD, then stop the private cluster if it was started for
# it. Ctrl-C reaches CMD (same process group) and then lands here, to stop the cluster.
trap : INT TERM
rc=0
"$@" || rc=$?
if [[ $PW_PG_STARTED == 1 ]]; then "$REPO/scripts/stop-postgres.sh" --if-idle || true; fi
exit "$rc"
