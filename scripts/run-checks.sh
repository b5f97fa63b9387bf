#!/usr/bin/env bash
# run-checks.sh: what `make run` checks before it starts anything (PostgreSQL included),
# so that a mistake gets its one line first: another supervisord of this checkout, a
# Stripe key that is not a secret one, a port in use. Every problem found is one line
# naming what to change; exit status 1 if there is any.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

problems=0
problem() { printf 'make run: error: %s\n' "$*" >&2; problems=$((problems + 1)); }

# A make run of this checkout that holds its lock (scripts/run.sh), even while it deploys.
lock=$RUN_DIR/locks/run.lock
if [[ -f $lock ]] && command -v flock >/dev/null 2>&1 && ! flock -n "$lock" true; then
  echo "make run: error: another make run is starting or running from this checkout" \
    "(pid $(cat "$lock" 2>/dev/null || echo '?')); wait for it, or stop it with \`make stop\`" >&2
  exit 1
fi

# supervisord.conf puts its socket and pidfile in this checkout's .run/: one per checkout.
pid=$(cat "$RUN_DIR/supervisord.pid" 2>/dev/null || true)
if [[ $pid =~ ^[0-9]+$ && -S $RUN_DIR/supervisor.sock ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep supervisord >/dev/null; then
  echo "make run: error: another supervisord already runs from this checkout (pid $pid); stop it with \`make stop\`" >&2
  exit 1
fi

key=${STRIPE_API_KEY:-}
if [[ -n $key && ! $key =~ ^(sk|rk)_(test|live)_[A-Za-z0-9_]+$ ]]; then
  case $key in
    pk_*) what="a publishable key (pk_…)" ;;
    *) what="not a Stripe secret key" ;;
  esac
  problem "STRIPE_API_KEY is $what: the worker needs a secret key (sk_test_…, sk_live_…)" \
    "or a restricted key (rk_…); unset it to use the stand-in"
fi

# worker/scaler.py's bounds (MAX_WORKERS): past them the scaler stops and the RPC times out.
count=${RIVER_WORKER_COUNT:-1}
if [[ ! $count =~ ^[0-9]+$ ]] || ((10#$count < 1 || 10#$count > 32)); then
  problem "RIVER_WORKER_COUNT must be a whole number from 1 to 32, got '$count'"
fi

# The ports make run will bind: VAR HOST DEFAULT WHAT, for what it starts.
ports=()
standin=
if [[ -z ${STRIPE_API_KEY:-} && -z ${STRIPE_API_BASE:-} ]]; then standin=1; fi
if [[ -n $standin && ${STANDIN_PORT:-12111} != 0 ]]; then
  ports+=("STANDIN_PORT 127.0.0.1 12111 the Stripe stand-in")
fi
if [[ -n $standin || -n ${STRIPE_WEBHOOK_SECRET:-} ]]; then
  webhook_host=${WEBHOOK_HOST:-0.0.0.0}
  [[ -z $standin ]] || webhook_host=${WEBHOOK_HOST:-127.0.0.1}
  ports+=("WEBHOOK_PORT $webhook_host 8080 the webhook receiver")
fi
ports+=("METRICS_PORT ${METRICS_HOST:-127.0.0.1} 9187 the Prometheus exporter")

# One bind per port, as the servers bind (SO_REUSEADDR): prints VAR PORT STATE [FREE].
results=$(
  for spec in "${ports[@]}"; do
    read -r var host default what <<<"$spec"
    printf '%s\t%s\t%s\t%s\n' "$var" "$host" "${!var:-$default}" "$what"
  done | "$REPO/.venv/bin/python" -c '
import socket, sys

def free(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True

for line in sys.stdin:
    var, host, port, what = line.rstrip("\n").split("\t")
    if not port.isdigit() or not 0 < int(port) < 65536:
        print(f"{var} must be a port number (1-65535), got {port!r}")
    elif not free(host, int(port)):
        spare = next((p for p in range(int(port) + 1, 65536) if free(host, p)), None)
        hint = f"; {var}={spare} make run, say" if spare else ""
        print(f"port {port} ({var}, {what}) is in use: set {var} to a free port{hint}"
              + ("; STANDIN_PORT=0 picks a free one" if var == "STANDIN_PORT" else ""))
'
)
if [[ -n $results ]]; then
  while IFS= read -r line; do problem "$line"; done <<<"$results"
fi
((problems == 0)) || exit 1
