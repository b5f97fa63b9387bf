#!/usr/bin/env bash
# Decides which PostgreSQL the tests and the worker use, writes .run/pg.env and prints
# one line saying where it is. Order:
#   (a) DATABASE_URL is set            -> that server            (PW_PG_MODE=url)
#   (b) 127.0.0.1:5432 or the unix socket answers as superuser postgres (PW_PG_MODE=local)
#   (c) a private cluster of this checkout in .run/pgdata, installing PostgreSQL if need
#       be (apt-get, sudo -n apt-get, or unpacked into .tools/)     (PW_PG_MODE=private)
# (b) or (c) is decided once and remembered in .run/pg-choice: PW_PG_MODE=local|private
# switches (and is remembered), PW_PG_MODE=auto decides again, PW_PG_MODE=url insists on
# DATABASE_URL. --explain (make db) also prints how to switch.
# .run/pg.env (sh syntax) holds PGHOST PGPORT PGUSER PGDATABASE [PGPASSWORD] PW_ADMIN_URL
# PW_PG_MODE PW_PG_VERSION PW_PG_BINDIR [PW_PG_DATA PW_PG_SOCKDIR PW_PG_LOG].
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
. "$(dirname "${BASH_SOURCE[0]}")/pg-private.sh"

PG_ENV=$RUN_DIR/pg.env
CHOICE=$RUN_DIR/pg-choice
export PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-5}

PSQL=

# q CONNINFO-ARGS... SQL: run one query, no password prompt, print the value.
q() {
  local sql=${*: -1}
  env -u PGSERVICE "$PSQL" -X -w -At -v ON_ERROR_STOP=1 "${@:1:$#-1}" -c "$sql"
}

# write_env KEY=VALUE...: write .run/pg.env atomically, private to the user.
write_env() {
  local kv tmp
  mkdir -p "$RUN_DIR"
  tmp=$(mktemp "$RUN_DIR/pg.env.XXXXXX")
  chmod 600 "$tmp"
  {
    echo "# Written by scripts/ensure-postgres.sh; load it with '. .run/pg.env'."
    for kv in "$@"; do printf 'export %s=%s\n' "${kv%%=*}" "$(shq "${kv#*=}")"; done
  } >"$tmp"
  mv -f "$tmp" "$PG_ENV"
}

# bindir_for MAJOR: the bin dir (psql, pg_ctl, ...) matching a server's major version.
bindir_for() {
  local major=$1 d
  if [[ ${PW_IGNORE_SYSTEM:-} != 1 && -x /usr/lib/postgresql/$major/bin/psql ]]; then
    echo "/usr/lib/postgresql/$major/bin"; return
  fi
  if [[ -x $TOOLS_ROOT/usr/lib/postgresql/$major/bin/psql && -x $TOOLS/bin/psql ]]; then
    echo "$TOOLS/bin"; return
  fi
  d=$(dirname "$(readlink -f "$PSQL")")
  [[ -x $d/psql ]] || d=$(dirname "$PSQL")
  echo "$d"
}

check_dblink() {  # warn-or-die CONNINFO-ARGS...
  local how=$1
  shift
  if [[ $(q "$@" "select count(*) from pg_available_extensions where name = 'dblink'") != 1 ]]; then
    if [[ $how == die ]]; then
      die "the contrib extension dblink is not available in this PostgreSQL (install its contrib package)"
    fi
    note "warning: the contrib extension dblink is not available on this server"
  fi
}

use_url() {
  local url parsed out err
  [[ -n ${DATABASE_URL:-} ]] || die "PW_PG_MODE=url but DATABASE_URL is not set"
  # A key=value string as libpq (and the worker) takes it, turned into a URL.
  url=$(python3 "$REPO/scripts/conninfo.py" 2>&1) || die "${url#error: }"
  # Split the URL with Python's parser (from the environment: argv is public); prints
  # shell assignments.
  parsed=$(PW_URL=$url python3 - <<'PY'
import os, shlex, sys
from urllib.parse import urlsplit, urlunsplit, unquote, parse_qs
u = urlsplit(os.environ["PW_URL"])
if u.scheme not in ("postgres", "postgresql"):
    print("ERROR DATABASE_URL must start with postgresql:// (it starts with %s://)" % u.scheme)
    sys.exit(0)
qs = parse_qs(u.query)
host = unquote(u.hostname or "") or qs.get("host", [""])[0]
try:
    port = str(u.port or qs.get("port", ["5432"])[0])
except ValueError:
    print("ERROR DATABASE_URL has an invalid port")
    sys.exit(0)
user = unquote(u.username or "") or qs.get("user", [""])[0] or os.environ.get("USER", "")
pw = unquote(u.password or "") if u.password is not None else qs.get("password", [""])[0]
db = unquote(u.path.lstrip("/")) or qs.get("dbname", [""])[0] or user
netloc = u.netloc
admin = urlunsplit((u.scheme, netloc, "/postgres", u.query, ""))
hostport = netloc.rpartition("@")[2]
safe = (u.username or "") + (":***" if u.password else "") + ("@" if u.username else "") + hostport
safe_admin = urlunsplit((u.scheme, safe, "/postgres", "", ""))
safe_db = urlunsplit((u.scheme, safe, u.path, "", ""))
for k, v in (("U_HOST", host), ("U_PORT", port), ("U_USER", user), ("U_PW", pw),
             ("U_DB", db), ("U_ADMIN", admin), ("U_SAFE", safe_admin), ("U_SAFE_DB", safe_db)):
    print("%s=%s" % (k, shlex.quote(v)))
PY
  ) || die "cannot parse DATABASE_URL"
  [[ $parsed == ERROR* ]] && die "${parsed#ERROR }"
  local U_HOST U_PORT U_USER U_PW U_DB U_ADMIN U_SAFE U_SAFE_DB
  eval "$parsed"
  # The user's own database first: its error is the one that names what is wrong.
  if ! out=$(q "$url" "select current_setting('server_version_num')::int / 10000" 2>&1); then
    err=$(printf '%s\n' "$out" | sed -n '/./{s/^psql: error: //;s/^connection to server [^:]* failed: //;s/^FATAL: *//;p;q}')
    err=${err//$U_PW/***}
    if [[ $err == *"database \"$U_DB\" does not exist"* ]]; then
      local createdb=createdb
      command -v createdb >/dev/null 2>&1 || createdb=$(dirname "$PSQL")/createdb
      die "database \"$U_DB\" does not exist on $U_HOST:$U_PORT ($U_SAFE_DB): create it" \
        "($createdb -h $U_HOST -p $U_PORT -U $U_USER $U_DB), or unset DATABASE_URL to use make's own"
    fi
    die "DATABASE_URL does not answer ($U_SAFE_DB): $err;" \
      "start that server or correct DATABASE_URL, or unset it to use make's own ('make db' says which)"
  fi
  # The server's postgres database, for the tests (they create databases); else the user's.
  if ! q "$U_ADMIN" "select 1" >/dev/null 2>&1; then U_ADMIN=$url; fi
  if [[ $(q "$U_ADMIN" "select rolsuper from pg_roles where rolname = current_user") != t ]]; then
    note "warning: DATABASE_URL's user $U_USER is not a superuser: creating the schema's roles and extensions may fail"
  fi
  check_dblink warn "$U_ADMIN"
  local kv=(PW_PG_MODE=url PGHOST="$U_HOST" PGPORT="$U_PORT" PGUSER="$U_USER" PGDATABASE=postgres)
  [[ -n $U_PW ]] && kv+=(PGPASSWORD="$U_PW")
  write_env "${kv[@]}" PW_ADMIN_URL="$U_ADMIN" PW_PG_VERSION="$out" PW_PG_BINDIR="$(bindir_for "$out")"
  echo "postgres: DATABASE_URL's server $U_SAFE_DB (PostgreSQL $out), because DATABASE_URL is set"
}

# try_local: the machine's own server, as superuser postgres without a password.
try_local() {
  local host major url
  for host in 127.0.0.1 /var/run/postgresql /tmp; do
    [[ $host == /* && ! -S $host/.s.PGSQL.5432 ]] && continue
    major=$(unset PGPASSWORD; q -h "$host" -p 5432 -U postgres -d postgres \
      "select current_setting('server_version_num')::int / 10000 from pg_roles
       where rolname = current_user and rolsuper" 2>/dev/null) || continue
    [[ -n $major ]] || continue
    if [[ $host == /* ]]; then
      url="postgresql://postgres@/postgres?host=$host&port=5432"
    else
      url="postgresql://postgres@$host:5432/postgres"
    fi
    check_dblink warn -h "$host" -p 5432 -U postgres -d postgres
    write_env PW_PG_MODE=local PGHOST="$host" PGPORT=5432 PGUSER=postgres PGDATABASE=postgres \
      PW_ADMIN_URL="$url" PW_PG_VERSION="$major" PW_PG_BINDIR="$(bindir_for "$major")"
    LOCAL_LINE="postgres: the local server $host:5432 (PostgreSQL $major, user postgres)"
    return 0
  done
  return 1
}

use_private() {
  # shellcheck disable=SC2034  # set by private_start
  local P_PORT P_MAJOR P_BINDIR P_DATA P_SOCK P_LOG P_EXT P_STARTED
  private_start # sets P_PORT P_MAJOR P_BINDIR P_DATA P_SOCK P_LOG P_STARTED
  PSQL=$P_BINDIR/psql
  check_dblink die -h 127.0.0.1 -p "$P_PORT" -U postgres -d postgres
  write_env PW_PG_MODE=private PGHOST=127.0.0.1 PGPORT="$P_PORT" PGUSER=postgres \
    PGDATABASE=postgres PW_ADMIN_URL="postgresql://postgres@127.0.0.1:$P_PORT/postgres" \
    PW_PG_VERSION="$P_MAJOR" PW_PG_BINDIR="$P_BINDIR" PW_PG_DATA="$P_DATA" \
    PW_PG_SOCKDIR="$P_SOCK" PW_PG_LOG="$P_LOG"
  echo "postgres: the private cluster 127.0.0.1:$P_PORT (PostgreSQL $P_MAJOR, data in ${P_DATA/#$REPO\//}), $1"
  # with-env.sh asks: did this run start it? (then `make run`'s Ctrl-C stops it again)
  if ((P_STARTED)) && [[ -n ${PW_PG_REPORT:-} ]]; then echo "PW_PG_STARTED=1" >>"$PW_PG_REPORT"; fi
}

# The choice between the local server and a private cluster, made once and kept in
# .run/pg-choice, so that a server starting later on 5432 does not silently take over.
remembered() {
  local c
  if [[ -f $CHOICE ]]; then c=$(<"$CHOICE"); else
    # .run/pg.env of a checkout from before .run/pg-choice existed
    c=$(sed -n "s/^export PW_PG_MODE='\(local\|private\)'$/\1/p" "$PG_ENV" 2>/dev/null || true)
  fi
  [[ $c == local || $c == private ]] && echo "$c"
  return 0
}

remember() { mkdir -p "$RUN_DIR" && echo "$1" >"$CHOICE"; }

explain() {
  cat <<EOF

Without DATABASE_URL, make run and make test keep to the choice in .run/pg-choice; to switch:
  PW_PG_MODE=private make db   a private cluster of this checkout (data in .run/pgdata; make stop stops it)
  PW_PG_MODE=local make db     the server at 127.0.0.1:5432, as superuser postgres without a password
  PW_PG_MODE=auto make db      choose again: that server if it answers, else a private cluster
  DATABASE_URL=postgresql://... make run   another server, for that run only (the choice stays)
EOF
}

main() {
  local mode=${PW_PG_MODE:-} choice why
  case $mode in
    '' | auto | url | local | private) ;;
    *) die "PW_PG_MODE must be auto, url, local or private (got '$mode')" ;;
  esac
  PSQL=$(with_lock tools ensure_psql)
  if [[ $mode == url || ($mode != local && $mode != private && -n ${DATABASE_URL:-}) ]]; then
    use_url
    [[ ${1:-} != --explain ]] || explain
    return
  fi
  choice=$(remembered)
  case $mode in
    local | private) choice=$mode why="chosen by PW_PG_MODE=$mode" ;;
    auto) choice= ;;
    *) [[ -z $choice ]] || why="the choice remembered in .run/pg-choice" ;;
  esac
  if [[ -z $choice ]]; then
    if try_local; then
      choice=local why="chosen because it answers at 127.0.0.1:5432 as superuser postgres without a password"
    else
      choice=private why="chosen because no server answers at 127.0.0.1:5432 as superuser postgres without a password"
    fi
  elif [[ $choice == local ]] && ! try_local; then
    die "no server answers at 127.0.0.1:5432 (or /var/run/postgresql) as superuser postgres," \
      "and it is $why: start it, or switch: PW_PG_MODE=private make db ('make db' says more)"
  fi
  remember "$choice"
  if [[ $choice == local ]]; then
    echo "$LOCAL_LINE, $why"
  else
    use_private "$why"
  fi
  [[ ${1:-} != --explain ]] || explain
}

with_lock pg main "$@"
