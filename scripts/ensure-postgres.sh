#!/usr/bin/env bash
# Decides which PostgreSQL the tests and the worker use, writes .run/pg.env and prints
# one line saying where it is. Order:
#   (a) DATABASE_URL is set            -> that server            (PW_PG_MODE=url)
#   (b) 127.0.0.1:5432 or the unix socket answers as superuser postgres (PW_PG_MODE=local)
#   (c) a private cluster of this checkout in .run/pgdata, installing PostgreSQL if need
#       be (apt-get, sudo -n apt-get, or unpacked into .tools/)     (PW_PG_MODE=private)
# PW_PG_MODE=url|local|private forces one of them (default: auto).
# .run/pg.env (sh syntax) holds PGHOST PGPORT PGUSER PGDATABASE [PGPASSWORD] PW_ADMIN_URL
# PW_PG_MODE PW_PG_VERSION PW_PG_BINDIR [PW_PG_DATA PW_PG_SOCKDIR PW_PG_LOG].
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
. "$(dirname "${BASH_SOURCE[0]}")/pg-private.sh"

PG_ENV=$RUN_DIR/pg.env
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
  local parsed out err
  [[ -n ${DATABASE_URL:-} ]] || die "PW_PG_MODE=url but DATABASE_URL is not set"
  # Split the URL with Python's parser; prints shell assignments.
  parsed=$(python3 - <<'PY'
import os, shlex, sys
from urllib.parse import urlsplit, urlunsplit, unquote, parse_qs
u = urlsplit(os.environ["DATABASE_URL"])
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
netloc = u.netloc
admin = urlunsplit((u.scheme, netloc, "/postgres", u.query, ""))
hostport = netloc.rpartition("@")[2]
safe = (u.username or "") + (":***" if u.password else "") + ("@" if u.username else "") + hostport
safe_admin = urlunsplit((u.scheme, safe, "/postgres", "", ""))
for k, v in (("U_HOST", host), ("U_PORT", port), ("U_USER", user), ("U_PW", pw),
             ("U_ADMIN", admin), ("U_SAFE", safe_admin)):
    print("%s=%s" % (k, shlex.quote(v)))
PY
  ) || die "cannot parse DATABASE_URL"
  [[ $parsed == ERROR* ]] && die "${parsed#ERROR }"
  local U_HOST U_PORT U_USER U_PW U_ADMIN U_SAFE
  eval "$parsed"
  if ! out=$(q "$U_ADMIN" "select current_setting('server_version_num')::int / 10000" 2>&1); then
    err=$(printf '%s\n' "$out" | sed -n '/./{s/^psql: error: //;p;q}')
    die "DATABASE_URL does not answer ($U_SAFE): ${err//$U_PW/***}"
  fi
  if [[ $(q "$U_ADMIN" "select rolsuper from pg_roles where rolname = current_user") != t ]]; then
    note "warning: DATABASE_URL's user $U_USER is not a superuser: creating the schema's roles and extensions may fail"
  fi
  check_dblink warn "$U_ADMIN"
  local kv=(PW_PG_MODE=url PGHOST="$U_HOST" PGPORT="$U_PORT" PGUSER="$U_USER" PGDATABASE=postgres)
  [[ -n $U_PW ]] && kv+=(PGPASSWORD="$U_PW")
  write_env "${kv[@]}" PW_ADMIN_URL="$U_ADMIN" PW_PG_VERSION="$out" PW_PG_BINDIR="$(bindir_for "$out")"
  echo "postgres: DATABASE_URL server $U_SAFE (PostgreSQL $out)"
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
    echo "postgres: local server $host:5432 (PostgreSQL $major, user postgres)"
    return 0
  done
  return 1
}

use_private() {
  # shellcheck disable=SC2034  # set by private_start
  local P_PORT P_MAJOR P_BINDIR P_DATA P_SOCK P_LOG P_EXT
  private_start # sets P_PORT P_MAJOR P_BINDIR P_DATA P_SOCK P_LOG
  PSQL=$P_BINDIR/psql
  check_dblink die -h 127.0.0.1 -p "$P_PORT" -U postgres -d postgres
  write_env PW_PG_MODE=private PGHOST=127.0.0.1 PGPORT="$P_PORT" PGUSER=postgres \
    PGDATABASE=postgres PW_ADMIN_URL="postgresql://postgres@127.0.0.1:$P_PORT/postgres" \
    PW_PG_VERSION="$P_MAJOR" PW_PG_BINDIR="$P_BINDIR" PW_PG_DATA="$P_DATA" \
    PW_PG_SOCKDIR="$P_SOCK" PW_PG_LOG="$P_LOG"
  echo "postgres: private cluster 127.0.0.1:$P_PORT (PostgreSQL $P_MAJOR, data in ${P_DATA/#$REPO\//})"
}

main() {
  local mode=${PW_PG_MODE:-auto}
  case $mode in
    auto | url | local | private) ;;
    *) die "PW_PG_MODE must be auto, url, local or private (got '$mode')" ;;
  esac
  if [[ $mode == url || ($mode == auto && -n ${DATABASE_URL:-}) ]]; then
    PSQL=$(with_lock tools ensure_psql)
    use_url
    return
  fi
  if [[ $mode == local || $mode == auto ]]; then
    PSQL=$(with_lock tools ensure_psql)
    try_local && return 0
    [[ $mode == local ]] && die "PW_PG_MODE=local but no server answers at 127.0.0.1:5432 or /var/run/postgresql as superuser postgres"
  fi
  use_private
}

with_lock pg main
