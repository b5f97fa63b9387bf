# shellcheck shell=bash
# Shared helpers for scripts/ensure-*.sh. Source it; do not run it.
#
# Knobs (environment):
#   PW_INSTALL=auto|apt|tools   how to install missing Debian packages: apt-get (root, or
#                               passwordless sudo) or unprivileged `apt-get download` +
#                               `dpkg -x` into .tools/ (default auto: apt when possible).
#   PW_IGNORE_SYSTEM=1          ignore a sqitch/PostgreSQL already on the machine (testing).

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN_DIR=$REPO/.run
TOOLS=$REPO/.tools
TOOLS_ROOT=$TOOLS/root
export PIP_DISABLE_PIP_VERSION_CHECK=1

die() { printf '%s: error: %s\n' "${0##*/}" "$*" >&2; exit 1; }
note() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }

# run_quiet DESCRIPTION CMD...: run CMD with its output in a log; show the log only on failure.
run_quiet() {
  local what=$1 log rc=0
  shift
  log=$(mktemp "${TMPDIR:-/tmp}/pw-log.XXXXXX")
  # 9>&-: children (a started postgres!) must not inherit with_lock's lock fd.
  "$@" </dev/null >"$log" 2>&1 9>&- || rc=$?
  if ((rc != 0)); then
    printf '%s: error: %s failed (exit %d); last lines of its output:\n' "${0##*/}" "$what" "$rc" >&2
    tail -n 25 "$log" | sed 's/^/    /' >&2
    rm -f "$log"
    return "$rc"
  fi
  rm -f "$log"
}

# with_lock NAME CMD...: serialise concurrent runs (several people share one checkout).
with_lock() {
  local name=$1
  shift
  mkdir -p "$RUN_DIR/locks"
  if command -v flock >/dev/null 2>&1; then
    (
      flock 9
      "$@"
    ) 9>"$RUN_DIR/locks/$name.lock"
  else
    "$@"
  fi
}

is_root() { [[ $(id -u) -eq 0 ]]; }

# install_mode: prints apt-root, apt-sudo or tools.
install_mode() {
  local want=${PW_INSTALL:-auto}
  case $want in
    tools) echo tools; return ;;
    auto | apt) ;;
    *) die "PW_INSTALL must be auto, apt or tools (got '$want')" ;;
  esac
  if is_root; then
    echo apt-root
  elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    echo apt-sudo
  elif [[ $want == apt ]]; then
    die "PW_INSTALL=apt but not root and no passwordless sudo"
  else
    echo tools
  fi
}

# --- privileged installs ---------------------------------------------------------------

_priv() { if is_root; then "$@"; else sudo -n "$@"; fi; }

# apt-get update at most once an hour across the ensure scripts (stamp in .run/).
apt_update_once() {
  local stamp=$RUN_DIR/apt-update.stamp
  [[ -f $stamp && -z $(find "$stamp" -mmin +60 2>/dev/null) ]] && return 0
  note "apt-get update"
  run_quiet "apt-get update" _priv apt-get update -q
  mkdir -p "$RUN_DIR"
  touch "$stamp"
}

apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* by hand"
  # Said before anything changes on the machine: what, how, and how to avoid it.
  if is_root; then
    note "installing system packages (apt-get, as root): $* (PW_INSTALL=tools unpacks them into .tools/ instead)"
  else
    note "installing system packages (sudo apt-get): $* (PW_INSTALL=tools unpacks them into .tools/ instead)"
  fi
  apt_update_once
  run_quiet "apt-get install $*" _priv env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "$@"
}

# --- unprivileged installs into .tools/ ------------------------------------------------
# Packages are fetched with `apt-get download` and unpacked with `dpkg -x` into .tools/root.
# Dependencies already installed on the machine (dpkg) or unpacked earlier are skipped.

TOOLS_APT_OPTS=()
# Machinery that only matters for a system-wide install; never unpacked into .tools.
TOOLS_SKIP=" postgresql-common postgresql-client-common ssl-cert debconf cdebconf debconf-2.0
  adduser init-system-helpers lsb-base sysvinit-utils logrotate cron locales locales-all
  tzdata ucf libc6 libc-bin dpkg perl-base "
# LLVM only serves PostgreSQL's JIT (~100 MB unpacked); the private cluster runs jit=off.
TOOLS_SKIP_RE='^libllvm[0-9]+$'

# tools_skipped NAME: NAME is in TOOLS_SKIP (words, any whitespace) or matches TOOLS_SKIP_RE.
tools_skipped() {
  local w
  for w in $TOOLS_SKIP; do [[ $w == "$1" ]] && return 0; done
  [[ $1 =~ $TOOLS_SKIP_RE ]]
}

_has_candidate() {
  # (no grep -q: with pipefail, apt-cache would die of SIGPIPE and fail the pipeline)
  apt-cache "${TOOLS_APT_OPTS[@]}" policy "$1" 2>/dev/null | grep 'Candidate: [^(]' >/dev/null
}

# tools_apt_prepare PKG: make sure some package list knows PKG (private lists if need be).
tools_apt_prepare() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: cannot fetch $1"
  TOOLS_APT_OPTS=()
  _has_candidate "$1" && return 0
  TOOLS_APT_OPTS=(-o "Dir::State::Lists=$TOOLS/apt/lists" -o "Dir::Cache=$TOOLS/apt/cache"
    -o Debug::NoLocking=1)
  _has_candidate "$1" && return 0
  mkdir -p "$TOOLS/apt/lists/partial" "$TOOLS/apt/cache/archives/partial"
  note "apt-get update into .tools/apt (no root needed)"
  run_quiet "apt-get update (private package lists)" apt-get "${TOOLS_APT_OPTS[@]}" update -q
  _has_candidate "$1" || die "no Debian package '$1' in the configured apt sources"
}

declare -gA _HAVE=()
_load_have() {
  local name status provides p
  _HAVE=()
  while IFS=$'\t' read -r name status provides; do
    [[ $status == installed ]] || continue
    _HAVE[$name]=1
    # Provides: "perlapi-5.36.0, perl-xxx (= 1.2)"
    for p in ${provides//,/ }; do
      [[ $p == \(* || $p == *\) || $p == '=' ]] && continue
      _HAVE[$p]=1
    done
  done < <(dpkg-query -W -f='${Package}\t${db:Status-Status}\t${Provides}\n' 2>/dev/null)
  if [[ -f $TOOLS/unpacked.list ]]; then
    while read -r name; do [[ -n $name ]] && _HAVE[$name]=1; done <"$TOOLS/unpacked.list"
  fi
}

# _dep_groups PKG...: one line per dependency group of each PKG; alternatives separated
# by spaces, each "name" or "<virtual>", with providers appended as "=p1,p2".
_dep_groups() {
  apt-cache "${TOOLS_APT_OPTS[@]}" depends --no-recommends --no-suggests --no-conflicts \
    --no-breaks --no-replaces --no-enhances "$@" 2>/dev/null | awk '
    function flush() { if (grp != "") print grp; grp = "" }
    /^[^ ]/ { flush(); cont = 0; next }
    /^ [ |](Pre)?Depends:/ {
      alt = $2
      if (cont) grp = grp " " alt; else { flush(); grp = alt }
      cont = ($1 ~ /^\|/); next
    }
    /^    [^ ]/ { sub(/^ +/, ""); n = split(grp, a, " ");
      a[n] = a[n] (a[n] ~ /=/ ? "," : "=") $0; grp = a[1]; for (i = 2; i <= n; i++) grp = grp " " a[i]; next }
    END { flush() }'
}

# tools_resolve PKG...: prints PKG... plus every missing dependency, recursively.
tools_resolve() {
  local -A want=() seen=()
  local -a queue=("$@") next order=()
  local p grp alt name provs pick satisfied
  _load_have
  for p in "$@"; do
    seen[$p]=1
    grep -qx -- "$p" "$TOOLS/unpacked.list" 2>/dev/null || order+=("$p")
  done
  while ((${#queue[@]})); do
    next=()
    while read -r grp; do
      satisfied=0 pick=
      for alt in $grp; do
        name=${alt%%=*} provs=
        [[ $alt == *=* ]] && provs=${alt#*=}
        name=${name#<}; name=${name%>}; name=${name%:any}
        if [[ -n ${_HAVE[$name]:-} || -n ${seen[$name]:-} ]]; then satisfied=1; break; fi
        for p in ${provs//,/ }; do
          if [[ -n ${_HAVE[$p]:-} || -n ${seen[$p]:-} ]]; then satisfied=1; break 2; fi
        done
        if [[ -z $pick ]]; then
          if [[ $alt != \<* ]] && _has_candidate "$name"; then pick=$name
          elif [[ -n $provs ]]; then pick=${provs%%,*}
          fi
        fi
      done
      ((satisfied)) && continue
      [[ -z $pick ]] && { note "warning: cannot satisfy dependency '$grp'"; continue; }
      tools_skipped "$pick" && continue
      seen[$pick]=1
      order+=("$pick")
      next+=("$pick")
    done < <(_dep_groups "${queue[@]}")
    queue=("${next[@]}")
  done
  printf '%s\n' "${order[@]}"
}

# tools_unpack PKG...: download PKG... and their missing dependencies into .tools/root.
tools_unpack() {
  local -a pkgs
  local deb p
  command -v dpkg >/dev/null 2>&1 || die "dpkg not found: cannot unpack $*"
  tools_apt_prepare "$1"
  mapfile -t pkgs < <(tools_resolve "$@")
  ((${#pkgs[@]})) || return 0
  note "fetching into .tools (no root): ${pkgs[*]}"
  mkdir -p "$TOOLS/debs" "$TOOLS_ROOT"
  (cd "$TOOLS/debs" && run_quiet "apt-get download ${pkgs[*]}" \
    apt-get "${TOOLS_APT_OPTS[@]}" download "${pkgs[@]}") || exit 1
  for p in "${pkgs[@]}"; do
    deb=$(ls -t "$TOOLS/debs/${p}_"*.deb 2>/dev/null | head -n 1) ||
      true
    [[ -n $deb ]] || die "apt-get download gave no .deb for $p"
    dpkg -x "$deb" "$TOOLS_ROOT" || die "dpkg -x $deb failed"
    echo "$p" >>"$TOOLS/unpacked.list"
    rm -f "$deb"
  done
  # Absolute symlinks inside the packages point at /usr/...: re-point them into .tools/root.
  local link target
  while IFS= read -r link; do
    target=$(readlink "$link")
    [[ -e $TOOLS_ROOT$target ]] && ln -sfn "$TOOLS_ROOT$target" "$link"
  done < <(find "$TOOLS_ROOT" -type l -lname '/*' 2>/dev/null)
  tools_write_env
}

# .tools/env.sh: environment that makes the unpacked programs and libraries work.
tools_write_env() {
  local perl_dirs=
  if command -v perl >/dev/null 2>&1; then
    perl_dirs=$(perl -MConfig -e 'print join " ", @Config{qw(vendorlib vendorarch privlib archlib)}')
  fi
  mkdir -p "$TOOLS/bin"
  cat >"$TOOLS/env.sh" <<EOF
# Generated by scripts/lib.sh: environment for programs unpacked into .tools/root.
_pw_t=\$(cd "\$(dirname "\${BASH_SOURCE[0]:-\$0}")" && pwd)/root
# The other unpacked programs first on PATH: sqitch runs \`psql\` by name.
case ":\$PATH:" in *":\${_pw_t%/root}/bin:"*) ;; *) export PATH=\${_pw_t%/root}/bin:\$PATH ;; esac
_pw_ld=
for _pw_d in "\$_pw_t"/usr/lib/*-linux-gnu* "\$_pw_t"/lib/*-linux-gnu* "\$_pw_t"/usr/lib; do
  [ -d "\$_pw_d" ] && _pw_ld=\$_pw_ld\${_pw_ld:+:}\$_pw_d
done
export LD_LIBRARY_PATH=\$_pw_ld\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
_pw_pl=
for _pw_d in $perl_dirs; do
  [ -d "\$_pw_t\$_pw_d" ] && _pw_pl=\$_pw_pl\${_pw_pl:+:}\$_pw_t\$_pw_d
done
export PERL5LIB=\$_pw_pl\${PERL5LIB:+:\$PERL5LIB}
unset _pw_d _pw_ld _pw_pl _pw_t
EOF
}

# tools_wrap NAME TARGET: .tools/bin/NAME runs TARGET with .tools/env.sh (TARGET may be
# relative to .tools/root, e.g. usr/bin/sqitch). INTERP (optional 3rd arg) runs it.
tools_wrap() {
  local name=$1 target=$2 interp=${3:-}
  mkdir -p "$TOOLS/bin"
  [[ -f $TOOLS/env.sh ]] || tools_write_env
  cat >"$TOOLS/bin/$name.tmp" <<EOF
#!/usr/bin/env bash
# Generated by scripts/lib.sh: runs $target from .tools/root with its libraries.
_tools=\$(cd "\$(dirname "\${BASH_SOURCE[0]}")/.." && pwd)
. "\$_tools/env.sh"
exec $interp "\$_tools/root/$target" "\$@"
EOF
  chmod +x "$TOOLS/bin/$name.tmp"
  mv -f "$TOOLS/bin/$name.tmp" "$TOOLS/bin/$name"
}

# --- PostgreSQL client -----------------------------------------------------------------

# pg_bindirs: candidate PostgreSQL bin dirs, newest major first.
pg_bindirs() {
  local d
  for d in /usr/lib/postgresql/*/bin "$TOOLS_ROOT"/usr/lib/postgresql/*/bin; do
    [[ -d $d ]] && printf '%s\t%s\n' "$(basename "$(dirname "$d")")" "$d"
  done | sort -t$'\t' -k1,1nr | cut -f2
}

# tools_pg_wrappers BINDIR: wrappers in .tools/bin for every program of an unpacked BINDIR.
tools_pg_wrappers() {
  local bindir=$1 f
  for f in "$bindir"/*; do
    [[ -x $f && -f $f ]] || continue
    tools_wrap "${f##*/}" "${f#"$TOOLS_ROOT"/}"
  done
}

# find_psql: prints the path of a working psql (or nothing).
find_psql() {
  local p d
  if [[ ${PW_IGNORE_SYSTEM:-} != 1 ]]; then
    if p=$(command -v psql 2>/dev/null) && "$p" --version >/dev/null 2>&1; then
      echo "$p"; return 0
    fi
    for d in $(pg_bindirs); do
      [[ $d == "$TOOLS_ROOT"/* ]] && continue
      [[ -x $d/psql ]] && "$d/psql" --version >/dev/null 2>&1 && { echo "$d/psql"; return 0; }
    done
  fi
  [[ -x $TOOLS/bin/psql ]] && "$TOOLS/bin/psql" --version >/dev/null 2>&1 &&
    { echo "$TOOLS/bin/psql"; return 0; }
  return 1
}

# pg_default_major: the PostgreSQL major version Debian's "postgresql" package points at.
pg_default_major() {
  local m
  m=$(apt-cache "${TOOLS_APT_OPTS[@]}" depends postgresql 2>/dev/null |
    sed -n 's/^ *Depends: postgresql-\([0-9][0-9]*\)$/\1/p' | sed -n 1p)
  [[ -n $m ]] || die "cannot tell which postgresql-NN package to use (apt-cache depends postgresql)"
  echo "$m"
}

# ensure_psql: prints the path of a working psql, installing a client if there is none.
ensure_psql() {
  local p mode major
  p=$(find_psql) && { echo "$p"; return 0; }
  mode=$(install_mode)
  if [[ $mode == tools || ${PW_IGNORE_SYSTEM:-} == 1 ]]; then
    tools_apt_prepare postgresql
    major=$(pg_default_major)
    tools_unpack "postgresql-client-$major" libpq5
    tools_pg_wrappers "$TOOLS_ROOT/usr/lib/postgresql/$major/bin"
  else
    apt_install postgresql-client
  fi
  p=$(find_psql) || die "psql still not usable after installing the PostgreSQL client"
  echo "$p"
}

# shq VALUE: single-quote VALUE for sh.
shq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
