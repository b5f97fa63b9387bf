#!/usr/bin/env bash
# with-env.sh CMD...: runs CMD with sqitch and PostgreSQL ready: ensures both, exports
# .run/pg.env, and puts the sqitch dir and the PostgreSQL bin dir (psql, pg_ctl) on PATH.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

(($#)) || die "usage: scripts/with-env.sh CMD [ARG...]"
sqitch=$("$REPO/scripts/ensure-sqitch.sh")
"$REPO/scripts/ensure-postgres.sh"
set -a
. "$RUN_DIR/pg.env"
set +a

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
exec "$@"
