#!/usr/bin/env bash
# run.sh: what `make run` runs, after scripts/run-checks.sh and through scripts/with-env.sh
# (which exports .run/pg.env and puts psql and sqitch on PATH). Deploys the schema, picks a
# Stripe (the real one or the stand-in), prints the lines to try, then runs supervisord in
# the foreground until Ctrl-C (or SIGTERM, e.g. from `make stop`), which stops everything
# it started: the stand-in, and the private PostgreSQL if with-env.sh started it for us.
#
# Environment (everything else, e.g. RIVER_WORKER_COUNT or LOG_LEVEL, reaches the workers):
#   DATABASE_URL     the database (default: payment_worker on the server of .run/pg.env,
#                    created if missing)
#   STRIPE_API_KEY   without STRIPE_API_BASE: the real Stripe API with this key
#   STRIPE_API_BASE  a Stripe-compatible server to use as it is (no stand-in is started)
#   STANDIN_PORT     the stand-in's port (default 12111; 0 picks a free one)
# Passwords and API keys are never printed.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

# One make run per checkout, held from here to the end (supervisord and the stand-in inherit
# it): run-checks.sh refuses a second one while this one still deploys, before any port of
# ours is bound. The file says who holds it.
RUN_LOCK=$RUN_DIR/locks/run.lock
mkdir -p "$RUN_DIR/locks"
exec 8>>"$RUN_LOCK"
if command -v flock >/dev/null 2>&1 && ! flock -n 8; then
  die "another make run is starting or running from this checkout (pid $(cat "$RUN_LOCK" 2>/dev/null || echo '?'));" \
    "wait for it, or stop it with \`make stop\`"
fi
echo $$ >"$RUN_LOCK"

# supervisord and every program reopen /dev/stdout (supervisord.conf): into a regular file
# (`make run >run.log`) only O_APPEND keeps their writes from overwriting each other.
# Where this user may not reopen it (`su user -c 'make run'` in root's terminal: the tty
# is root's), everything goes through a pipe of ours, which anyone may reopen; its cat
# ignores Ctrl-C so that the last lines of the stop still get out.
OUT_PID=
if ! { : >>/dev/stdout; } 2>/dev/null; then
  exec > >(trap '' INT TERM; exec cat)
  OUT_PID=$!
elif [[ -f /dev/stdout ]]; then
  exec >>/dev/stdout
fi
if [[ -f /dev/stderr ]] && { : >>/dev/stderr; } 2>/dev/null; then exec 2>>/dev/stderr; fi

VENV_BIN=$REPO/.venv/bin
[[ -x $VENV_BIN/supervisord ]] || die ".venv has no supervisord: run 'make venv' first"
export PATH=$VENV_BIN:$PATH
SQITCH=${PW_SQITCH:-sqitch}

SUP_PID=
STANDIN_PID=
STANDIN_LOG_PID=
STANDIN=
TMP=$(mktemp -d "${TMPDIR:-/tmp}/pw-run.XXXXXX")

# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
  local rc=$?
  trap - INT TERM
  if [[ -n $SUP_PID ]] && kill -0 "$SUP_PID" 2>/dev/null; then
    kill -TERM "$SUP_PID" 2>/dev/null || true
    wait "$SUP_PID" 2>/dev/null || true
  fi
  if [[ -n $STANDIN_PID ]] && kill -0 "$STANDIN_PID" 2>/dev/null; then
    kill -TERM "$STANDIN_PID" 2>/dev/null || true
    wait "$STANDIN_PID" 2>/dev/null || true
  fi
  [[ -z $STANDIN_LOG_PID ]] || wait "$STANDIN_LOG_PID" 2>/dev/null || true
  rm -f "$RUN_DIR/standin.pid"
  # The private cluster, when this run started it and nobody else uses it meanwhile.
  if [[ ${PW_PG_STARTED:-} == 1 ]]; then "$REPO/scripts/stop-postgres.sh" --if-idle || true; fi
  rm -rf "$TMP"
  if [[ -n $OUT_PID ]]; then
    exec >&- 2>&-
    wait "$OUT_PID" 2>/dev/null || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# url_parts URL [D]: shell assignments U_SAFE (URL without password), U_USER, U_PASSWORD,
# U_TARGET (sqitch target, without password), U_AS_WORKER (the same database as the login
# payment_worker_app, no password) and U_WITH_DB (same server, database D: see below).
# The URL comes through the environment: argv is public, and it may hold a password.
url_parts() {
  PW_URL=$1 "$VENV_BIN/python" - "${2:-}" <<'PY'
import os, shlex, sys
from urllib.parse import unquote, urlsplit, urlunsplit

url, dbname = os.environ["PW_URL"], sys.argv[1]
u = urlsplit(url)
if u.scheme not in ("postgres", "postgresql"):
    sys.exit("run.sh: error: DATABASE_URL must be a postgresql://user@host:port/dbname URL")
netloc = u.netloc
if u.password is not None:
    netloc = netloc.rsplit("@", 1)
    netloc = netloc[0].split(":", 1)[0] + "@" + netloc[1]
safe = urlunsplit(("postgresql", netloc, u.path, u.query, ""))
server = u.netloc.rsplit("@", 1)[-1]
values = {
    "U_SAFE": safe,
    "U_USER": unquote(u.username or ""),
    "U_AS_WORKER": urlunsplit(("postgresql", "payment_worker_app@" + server, u.path, u.query, "")),
    "U_PASSWORD": unquote(u.password or ""),
    "U_TARGET": "db:" + urlunsplit(("pg", netloc, u.path, u.query, "")),
    "U_WITH_DB": urlunsplit((u.scheme, u.netloc, "/" + dbname, u.query, "")) if dbname else "",
}
for key, value in values.items():
    print(f"{key}={shlex.quote(value)}")
PY
}

# --- database ------------------------------------------------------------------------------
if [[ -n ${DATABASE_URL:-} ]]; then
  # A key=value string, as libpq and the worker take it, becomes the same URL.
  url=$("$VENV_BIN/python" scripts/conninfo.py 2>&1) || die "${url#error: }"
  DATABASE_URL=$url
  unset url
  eval "$(url_parts "$DATABASE_URL")"
  echo "database: $U_SAFE (DATABASE_URL)"
else
  [[ -n ${PW_ADMIN_URL:-} ]] ||
    die "DATABASE_URL is not set and .run/pg.env was not loaded: run 'make run'"
  eval "$(url_parts "$PW_ADMIN_URL" payment_worker)"
  exists() { psql "$PW_ADMIN_URL" -XAtqc "SELECT 1 FROM pg_database WHERE datname = 'payment_worker'"; }
  if [[ $(exists) != 1 ]]; then
    psql "$PW_ADMIN_URL" -XAtqc "CREATE DATABASE payment_worker" >/dev/null ||
      [[ $(exists) == 1 ]] || die "cannot create database payment_worker"
    echo "database: created payment_worker"
  fi
  export DATABASE_URL=$U_WITH_DB
  eval "$(url_parts "$DATABASE_URL")"
  echo "database: $U_SAFE"
fi

# Deploys whatever is not deployed yet; "Nothing to deploy (up-to-date)" otherwise.
if [[ -n $U_PASSWORD ]]; then
  SQITCH_PASSWORD=$U_PASSWORD "$SQITCH" --chdir schema deploy "$U_TARGET"
else
  "$SQITCH" --chdir schema deploy "$U_TARGET"
fi

# --- least-privilege logins ------------------------------------------------------------------
# The workers need only the payment_worker group, the webhook receiver only payment_webhook,
# not the admin who deployed. Where the admin may create roles and the server lets a
# password-less login in (trust), they run as payment_worker_app and payment_webhook_app;
# otherwise as DATABASE_URL's user, with a warning.
admin_psql() { PGPASSWORD=${U_PASSWORD:-${PGPASSWORD:-}} psql "$U_SAFE" -XAtq -v ON_ERROR_STOP=1 "$@"; }

# login_url LOGIN GROUP: prints DATABASE_URL as LOGIN when LOGIN (created if missing) is a
# password-less login only in GROUP; prints nothing otherwise.
login_url() {
  local login=$1 group=$2 url
  local check="SELECT 1 FROM pg_roles WHERE rolname = '$login' AND rolcanlogin
    AND NOT rolsuper AND pg_has_role(oid, '$group', 'MEMBER')"
  if [[ $(admin_psql -c "$check" 2>/dev/null) != 1 ]]; then
    if [[ $(admin_psql -c "SELECT 1 FROM pg_roles WHERE rolname = '$login'" 2>/dev/null) == 1 ]]; then
      # There, but no longer in the group (a schema revert dropped and remade it).
      admin_psql -c "GRANT $group TO $login" >/dev/null 2>&1 || true
    else
      admin_psql -c "CREATE ROLE $login LOGIN IN ROLE $group" >/dev/null 2>&1 || true
    fi
  fi
  url=${U_AS_WORKER/payment_worker_app@/$login@}
  if [[ $(admin_psql -c "$check" 2>/dev/null) == 1 ]] &&
    env -u PGPASSWORD PGPASSFILE=/dev/null psql "$url" -XAtqw -c "SELECT 1" >/dev/null 2>&1; then
    echo "$url"
  fi
}

ADMIN_URL=$DATABASE_URL
WORKER_URL=$(login_url payment_worker_app payment_worker)
if [[ -n $WORKER_URL ]]; then
  export DATABASE_URL=$WORKER_URL
  echo "workers: as payment_worker_app (a login in role payment_worker only)"
else
  echo "workers: WARNING: they run as ${U_USER:-the default user}, with the admin's privileges" \
    "(no password-less login payment_worker_app in role payment_worker could be used;" \
    "create a login IN ROLE payment_worker and give it to DATABASE_URL)"
fi
RECEIVER_URL=$(login_url payment_webhook_app payment_webhook)
if [[ -n $RECEIVER_URL ]]; then
  export WEBHOOK_DATABASE_URL=$RECEIVER_URL
  echo "webhooks: the receiver as payment_webhook_app (a login in role payment_webhook only)"
else
  export WEBHOOK_DATABASE_URL=$ADMIN_URL
  echo "webhooks: WARNING: the receiver runs as ${U_USER:-the default user}, with the admin's" \
    "privileges (no password-less login payment_webhook_app in role payment_webhook could be used)"
fi
unset U_PASSWORD ADMIN_URL

# --- Stripe --------------------------------------------------------------------------------
start_standin() {
  local port_file=$TMP/standin.port i
  # Its own session: Ctrl-C must not stop it before the workers have finished their jobs;
  # cleanup() stops it once supervisord has exited.
  local setsid=()
  command -v setsid >/dev/null 2>&1 && setsid=(setsid)
  # Its log lines, prefixed, through a FIFO so that cleanup() can wait for the last one.
  mkfifo "$TMP/standin.log"
  sed -u 's/^/stand-in | /' <"$TMP/standin.log" >&2 &
  STANDIN_LOG_PID=$!
  # The stand-in signs its webhooks with the receiver's secret, read from its environment
  # (never argv, which every user can read).
  STANDIN_WEBHOOK_SECRET=$STRIPE_WEBHOOK_SECRET "${setsid[@]}" "$VENV_BIN/python" -m stripe_standin \
    --port "${STANDIN_PORT:-12111}" --port-file "$port_file" \
    --webhook-url "http://127.0.0.1:$WEBHOOK_PORT/webhooks/stripe" 2>"$TMP/standin.log" &
  STANDIN_PID=$!
  echo "$STANDIN_PID $$" >"$RUN_DIR/standin.pid" # for `make stop`, should this script die
  for ((i = 0; i < 200; i++)); do
    [[ -s $port_file ]] && break
    kill -0 "$STANDIN_PID" 2>/dev/null ||
      die "the stand-in exited at start (port ${STANDIN_PORT:-12111} in use? STANDIN_PORT=0 picks a free one)"
    sleep 0.05
  done
  [[ -s $port_file ]] || die "the stand-in did not listen within 10 s"
  STRIPE_API_BASE=http://127.0.0.1:$(<"$port_file")
  export STRIPE_API_BASE
  export STRIPE_API_KEY=${STRIPE_API_KEY:-sk_test_standin}
  echo "stripe: the stand-in at $STRIPE_API_BASE (pid $STANDIN_PID; $STRIPE_API_BASE/_standin/stats)"
  echo "webhooks: the stand-in delivers to http://127.0.0.1:$WEBHOOK_PORT/webhooks/stripe," \
    "signed with a secret made for this run"
}

export WEBHOOK_PORT=${WEBHOOK_PORT:-8080}

if [[ -n ${STRIPE_API_KEY:-} && -z ${STRIPE_API_BASE:-} ]]; then
  case $STRIPE_API_KEY in
    sk_live_* | rk_live_*) echo "stripe: the REAL Stripe API in LIVE mode (STRIPE_API_KEY): payments are real" ;;
    *) echo "stripe: the real Stripe API in test mode (STRIPE_API_KEY)" ;;
  esac
elif [[ -n ${STRIPE_API_BASE:-} ]]; then
  export STRIPE_API_KEY=${STRIPE_API_KEY:-sk_test_standin}
  echo "stripe: STRIPE_API_BASE=$(sed -E 's#//[^/@]*@#//#' <<<"$STRIPE_API_BASE") (no stand-in started)"
else
  # The receiver, for the stand-in on this machine: on loopback only, with a signing secret
  # made for this run.
  export WEBHOOK_HOST=${WEBHOOK_HOST:-127.0.0.1}
  STRIPE_WEBHOOK_SECRET=whsec_$("$VENV_BIN/python" -c 'import secrets; print(secrets.token_hex(24))')
  export STRIPE_WEBHOOK_SECRET
  start_standin
  STANDIN=1
fi
if [[ -z ${STRIPE_WEBHOOK_SECRET:-} ]]; then
  echo "webhooks: STRIPE_WEBHOOK_SECRET is not set: the receiver stays stopped and payments" \
    "follow Stripe by reconciliation only (README: \"Using a real Stripe account\")."
fi

# --- supervisord ---------------------------------------------------------------------------
# supervisord.conf puts its socket, pidfile and metrics files in .run/ (never beside the code).
mkdir -p .run
if [[ -S .run/supervisor.sock ]] && supervisorctl -c supervisord.conf pid >/dev/null 2>&1; then
  die "another supervisord already runs from this checkout" \
    "(pid $(cat .run/supervisord.pid 2>/dev/null || echo '?')); stop it with \`make stop\`"
fi

# The psql of the lines to paste: plain `psql` where the caller's shell finds one, else
# its full path (an ordinary user's psql may live in .tools/bin). No pager: a payment's
# JSON is wider than most terminals, and a newcomer should not land in less.
PSQL_CMD=psql
if ! PATH=${PW_CALLER_PATH:-$PATH} command -v psql >/dev/null 2>&1; then
  PSQL_CMD=$(command -v psql)
  PSQL_CMD=$(printf '%q' "$PSQL_CMD")
fi
PSQL_CMD+=" -P pager=off"

# What Ctrl-C stops, honestly: the private cluster only if this run started it.
STOPS="Ctrl-C stops everything"
case ${PW_PG_MODE:-} in
  private)
    if [[ ${PW_PG_STARTED:-} == 1 ]]; then
      STOPS+=", the private PostgreSQL this run started too (its data stays)"
    else
      STOPS+=" but the private PostgreSQL on port $PGPORT, which was already running (\`make stop\` stops it)"
    fi
    ;;
  local) STOPS+=" but the machine's PostgreSQL server, which is not ours" ;;
  url) STOPS+=" but the DATABASE_URL server, which is not ours" ;;
esac

cat <<EOF

Try it (in another shell):
  $PSQL_CMD "$U_SAFE" -c "SELECT create_payment_intent_sync(2500, 'Test payment \\\$25.00');"
Watch the jobs:
  $PSQL_CMD "$U_SAFE" -c "SELECT id, state, attempt, attempted_by FROM metadata.river_job ORDER BY id DESC LIMIT 5;"
EOF
if [[ -n $STANDIN ]]; then
  # The stand-in's module lives in the checkout: its lines go there first, from any shell.
  IN_REPO="cd $(printf '%q' "$REPO") &&"
  cat <<EOF
Pay it as a customer would, with a test card (PAYMENT_ID: the payment_id it printed; the
stand-in takes any sk_test_ key, and this one is nobody's secret):
  $IN_REPO STRIPE_API_KEY=sk_test_customer .venv/bin/python -m stripe_standin pay --api-base $STRIPE_API_BASE PAYMENT_ID --card pm_card_visa
Read it, succeeded once Stripe's webhook has told the database:
  $PSQL_CMD "$U_SAFE" -c "SELECT get_payment('PAYMENT_ID');"
Other test cards: pm_card_chargeDeclined (declined: pay again with another card) and
pm_card_authenticationRequired (then: $IN_REPO .venv/bin/python -m stripe_standin 3ds --api-base $STRIPE_API_BASE PAYMENT_ID --succeed).
EOF
fi
cat <<EOF
Workers: ${RIVER_WORKER_COUNT:-1} (RIVER_WORKER_COUNT); $STOPS.

EOF

# In the background only so that this script can stop the stand-in after it: a signal is
# passed on, and its exit status is this script's.
# As root, supervisord warns unless told that root is meant: the programs then run as
# root, as the one who typed `make run` is.
as_root=()
if is_root; then
  as_root=(-u root)
  echo "supervisord: as root, and the programs too (make run as an ordinary user to avoid that)"
fi
supervisord -c supervisord.conf "${as_root[@]}" &
SUP_PID=$!
trap 'kill -TERM "$SUP_PID" 2>/dev/null || true' INT TERM
status=0
while :; do
  status=0
  wait "$SUP_PID" || status=$?
  # wait returns early (128+signal) when a trap ran; supervisord may still be stopping.
  ((status > 128)) && kill -0 "$SUP_PID" 2>/dev/null && continue
  break
done
if ((status > 128)); then
  # The trap ran just as supervisord exited: its own status is still there to collect.
  real=0
  wait "$SUP_PID" 2>/dev/null || real=$?
  ((real == 127)) || status=$real
fi
SUP_PID=
exit "$status"
