#!/usr/bin/env bash
# stop.sh (`make stop`): stops what `make run` and `make test` started from this checkout:
# its supervisord (the workers, exporter and receiver with it, as Ctrl-C would), a stand-in
# left behind, and the private PostgreSQL cluster. Keeps every piece of data. One line per
# thing stopped; a server that is not ours (DATABASE_URL, the machine's) is left alone.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

stopped=0

# ours PIDFILE PATTERN: prints the pid of PIDFILE (its first word) if it runs a command
# matching PATTERN.
ours() {
  local pid
  pid=$(cut -d' ' -f1 "$1" 2>/dev/null || true)
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -E "$2" >/dev/null || return 1
  echo "$pid"
}

# stop_pid PID WHAT SECONDS: SIGTERM, then wait for it to go (it stops its own children).
stop_pid() {
  local pid=$1 what=$2 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < $3 * 10; i++)); do
    [[ -e /proc/$pid ]] || break
    # a zombie is gone for our purposes
    [[ $(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$pid/status" 2>/dev/null) == Z ]] && break
    sleep 0.1
  done
  if [[ -e /proc/$pid ]] && [[ $(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$pid/status" 2>/dev/null) != Z ]]; then
    die "$what (pid $pid) did not stop within $3 s"
  fi
  echo "stopped $what (pid $pid)"
  stopped=1
}

# supervisord's own limit for its programs (the workers' stopwaitsecs is 40) and a margin.
if pid=$(ours "$RUN_DIR/supervisord.pid" supervisord); then
  stop_pid "$pid" "supervisord of this checkout, and its programs" 50
fi
# make run stops the stand-in once supervisord has gone: let it, unless it died.
if pid=$(ours "$RUN_DIR/standin.pid" stripe_standin); then
  owner=$(cut -s -d' ' -f2 "$RUN_DIR/standin.pid" 2>/dev/null || true)
  for ((i = 0; i < 150; i++)); do
    [[ -n $owner && -e /proc/$owner && -e /proc/$pid ]] || break
    sleep 0.1
  done
  if [[ -e /proc/$pid ]]; then stop_pid "$pid" "the Stripe stand-in" 15; fi
  rm -f "$RUN_DIR/standin.pid"
fi
if [[ -f $RUN_DIR/private.env ]]; then
  out=$("$REPO/scripts/stop-postgres.sh" 2>&1) || { echo "$out" >&2; exit 1; }
  if [[ -n $out ]]; then
    echo "${out#stop-postgres.sh: }"
    stopped=1
  fi
fi
((stopped)) || echo "nothing of this checkout was running"
