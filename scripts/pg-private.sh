# shellcheck shell=bash
# The private PostgreSQL cluster of this checkout: find or install the server, initdb,
# start, stop. Sourced (after lib.sh) by ensure-postgres.sh and stop-postgres.sh.
#
# PostgreSQL refuses to run as root, so as root the cluster belongs to the system user
# payment-worker-pg (created if missing). If that user cannot reach .run/ (say, the checkout
# is under /root), the cluster lives in /var/tmp/payment-worker-pg/<hash of the checkout>/
# and .run/pgdata and .run/postgres.log are symlinks to it.

PG_OS_USER=payment-worker-pg
PRIVATE_ENV=$RUN_DIR/private.env
PG_FIRST_PORT=54329

# as_pg CMD...: run CMD as the owner of the cluster, from a directory it can read.
as_pg() {
  if ! is_root; then
    (cd / && "$@")
  elif command -v runuser >/dev/null 2>&1; then
    (cd / && runuser -u "$PG_OS_USER" -- "$@")
  else
    (cd / && su -s /bin/sh "$PG_OS_USER" -c "$(printf '%q ' "$@")")
  fi
}

ensure_pg_os_user() {
  getent passwd "$PG_OS_USER" >/dev/null && return 0
  command -v useradd >/dev/null 2>&1 || die "cannot create system user $PG_OS_USER (no useradd)"
  note "creating system user $PG_OS_USER (useradd --system): PostgreSQL does not run as root, this user owns the private cluster"
  run_quiet "useradd $PG_OS_USER" useradd --system --user-group --no-create-home \
    --home-dir /nonexistent --shell /usr/sbin/nologin "$PG_OS_USER"
}

# private_layout: sets P_DATA P_SOCK P_LOG (P_EXT=1 when outside the checkout).
private_layout() {
  local hash base=$RUN_DIR
  hash=$(printf '%s' "$REPO" | sha256sum | cut -c1-12)
  P_EXT=0
  mkdir -p "$RUN_DIR"
  if is_root; then
    ensure_pg_os_user
    if ! runuser -u "$PG_OS_USER" -- test -x "$RUN_DIR" 2>/dev/null; then
      base=/var/tmp/payment-worker-pg/$hash P_EXT=1
      mkdir -p "$base"
      chmod 755 /var/tmp/payment-worker-pg "$base"
    fi
  fi
  P_DATA=$base/pgdata P_SOCK=$base/pgsock P_LOG=$base/postgres.log
  # A unix socket path must fit in 107 bytes (".s.PGSQL.NNNNN.lock" included).
  if ((${#P_SOCK} > 85)); then P_SOCK=/tmp/payment-worker-pg-$hash; fi
}

pg_major_of() { "$1/pg_ctl" --version 2>/dev/null | sed -n 's/.*) \([0-9][0-9]*\).*/\1/p'; }

# find_server_bindir [MAJOR]: a dir with initdb, pg_ctl and psql (of MAJOR, if given).
find_server_bindir() {
  local want=${1:-} p d
  local -a cands=()
  if [[ ${PW_IGNORE_SYSTEM:-} != 1 ]]; then
    p=$(command -v initdb 2>/dev/null) && cands+=("$(dirname "$(readlink -f "$p")")")
    for d in $(pg_bindirs); do [[ $d == "$TOOLS_ROOT"/* ]] || cands+=("$d"); done
  fi
  for d in $(pg_bindirs); do [[ $d == "$TOOLS_ROOT"/* && -x $d/initdb ]] && cands+=("$TOOLS/bin"); done
  for d in "${cands[@]}"; do
    [[ -x $d/initdb && -x $d/pg_ctl && -x $d/psql ]] || continue
    if [[ -n $want && $(pg_major_of "$d") != "$want" ]]; then continue; fi
    echo "$d"
    return 0
  done
  return 1
}

install_server() {
  local mode major
  mode=$(install_mode)
  if [[ $mode == tools || ${PW_IGNORE_SYSTEM:-} == 1 ]]; then
    tools_apt_prepare postgresql
    major=$(pg_default_major)
    tools_unpack "postgresql-$major" "postgresql-client-$major" libpq5
    tools_pg_wrappers "$TOOLS_ROOT/usr/lib/postgresql/$major/bin"
    [[ -f $TOOLS_ROOT/usr/share/postgresql/$major/extension/dblink.control ]] ||
      die "postgresql-$major unpacked into .tools has no dblink extension (dblink.control)"
  else
    apt_install postgresql postgresql-contrib
  fi
}

port_busy() {
  (: </dev/tcp/127.0.0.1/"$1") 2>/dev/null || [[ -e $P_SOCK/.s.PGSQL.$1.lock ]]
}

pick_port() {
  local p
  for ((p = PG_FIRST_PORT; p < PG_FIRST_PORT + 100; p++)); do
    port_busy "$p" || { echo "$p"; return 0; }
  done
  die "no free TCP port in $PG_FIRST_PORT..$((PG_FIRST_PORT + 99)) for the private cluster"
}

pg_answers() {
  "$P_BINDIR/psql" -X -w -At -h 127.0.0.1 -p "$1" -U postgres -d postgres -c 'select 1' \
    >/dev/null 2>&1
}

# private_start: init/start (or reuse) the cluster; sets P_PORT P_MAJOR P_BINDIR P_DATA ...
# and P_STARTED (1: this call started it).
private_start() {
  local dmajor loc t0
  P_STARTED=0
  private_layout
  if [[ -f $P_DATA/PG_VERSION ]]; then
    dmajor=$(cat "$P_DATA/PG_VERSION")
    P_BINDIR=$(find_server_bindir "$dmajor") ||
      die "the private cluster in $P_DATA was made by PostgreSQL $dmajor, which is not installed; 'make clean' removes it"
  elif ! P_BINDIR=$(find_server_bindir); then
    with_lock tools install_server
    P_BINDIR=$(find_server_bindir) || die "PostgreSQL installed but initdb/pg_ctl/psql not found"
  fi
  P_MAJOR=$(pg_major_of "$P_BINDIR")
  [[ -n $P_MAJOR ]] || die "$P_BINDIR/pg_ctl --version does not work"

  mkdir -p "$P_DATA" "$P_SOCK"
  [[ -e $P_LOG ]] || : >"$P_LOG"
  chmod 700 "$P_DATA"
  if is_root; then
    chown "$PG_OS_USER:" "$P_DATA" "$P_SOCK" "$P_LOG"
    if ((P_EXT)); then
      [[ -L $RUN_DIR/pgdata || ! -e $RUN_DIR/pgdata ]] && ln -sfn "$P_DATA" "$RUN_DIR/pgdata"
      [[ -L $RUN_DIR/postgres.log || ! -e $RUN_DIR/postgres.log ]] &&
        ln -sfn "$P_LOG" "$RUN_DIR/postgres.log"
    fi
  fi
  {
    echo "# Written by scripts/pg-private.sh: where the private cluster lives."
    for v in P_DATA P_SOCK P_LOG P_BINDIR P_EXT; do printf '%s=%s\n' "$v" "$(shq "${!v}")"; done
  } >"$PRIVATE_ENV"

  if [[ ! -f $P_DATA/PG_VERSION ]]; then
    loc=C
    locale -a 2>/dev/null | grep -iE '^c\.utf-?8$' >/dev/null && loc=C.UTF-8
    t0=$SECONDS
    run_quiet "initdb $P_DATA" as_pg "$P_BINDIR/initdb" -D "$P_DATA" -U postgres -A trust \
      -E UTF8 --locale="$loc" --no-instructions
    # `make run` keeps real payments here too: PostgreSQL's durability defaults stay.
    cat >>"$P_DATA/postgresql.conf" <<'EOF'

# Added by scripts/pg-private.sh (private cluster; host, port and socket dir are
# given by pg_ctl -o).
max_connections = 200
jit = off
EOF
    note "initdb of the private cluster took $((SECONDS - t0))s"
  fi

  if as_pg "$P_BINDIR/pg_ctl" status -D "$P_DATA" >/dev/null 2>&1; then
    P_PORT=$(sed -n 4p "$P_DATA/postmaster.pid")
    pg_answers "$P_PORT" && return 0
    die "the private cluster ($P_DATA) runs but does not answer on 127.0.0.1:$P_PORT; see $P_LOG"
  fi
  P_PORT=$(pick_port)
  if ! run_quiet "pg_ctl start" as_pg "$P_BINDIR/pg_ctl" start -D "$P_DATA" -l "$P_LOG" -w -t 60 \
    -o "-p $P_PORT -k $P_SOCK -h 127.0.0.1"; then
    tail -n 15 "$P_LOG" | sed 's/^/    log: /' >&2
    die "the private cluster did not start; log: $P_LOG"
  fi
  P_STARTED=1
  pg_answers "$P_PORT" || die "the private cluster started but does not answer on 127.0.0.1:$P_PORT"
}

# private_stop [--remove|--if-idle]: stop the cluster if it runs; --remove also deletes
# data kept outside .run (the caller removes .run itself); --if-idle leaves it running
# while other sessions use it (what a `make run` started, a `make test` may still use).
private_stop() {
  local P_DATA P_SOCK P_LOG P_BINDIR P_EXT
  [[ -f $PRIVATE_ENV ]] || return 0
  . "$PRIVATE_ENV"
  if [[ -f $P_DATA/postmaster.pid ]] && as_pg "$P_BINDIR/pg_ctl" status -D "$P_DATA" >/dev/null 2>&1; then
    if [[ ${1:-} == --if-idle ]]; then
      local port others
      port=$(sed -n 4p "$P_DATA/postmaster.pid")
      others=$("$P_BINDIR/psql" -X -w -At -h 127.0.0.1 -p "$port" -U postgres -d postgres -c \
        "select count(*) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()" \
        2>/dev/null || echo 0)
      if ((others > 0)); then
        note "the private cluster (127.0.0.1:$port) stays up: $others other sessions use it; 'make stop' stops it"
        return 0
      fi
    fi
    run_quiet "pg_ctl stop" as_pg "$P_BINDIR/pg_ctl" stop -D "$P_DATA" -m fast -w -t 60
    if [[ ${1:-} == --remove ]]; then note "stopped the private cluster"; else
      note "stopped the private cluster (${P_DATA/#$REPO\//}; data kept)"
    fi
  fi
  if [[ ${1:-} == --remove ]]; then
    if [[ $P_EXT == 1 ]]; then rm -rf "$(dirname "$P_DATA")"; fi
    if [[ $P_SOCK != "$RUN_DIR"/* ]]; then rm -rf "$P_SOCK"; fi
  fi
  return 0
}
