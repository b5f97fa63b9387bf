#!/usr/bin/env bash
# Creates .venv with python3 >= 3.11 and installs into it the runtime lock (requirements.lock,
# hash-checked, as the image does) and then the dev tools of requirements-dev.txt, again only
# when a requirements file (or the interpreter) changed since the last successful install.
# Knobs: PYTHON=/path/to/python3 picks the interpreter.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VENV=$REPO/.venv
STAMP=$VENV/.pw-requirements.sha256

py_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }

find_python() {
  local c p
  for c in ${PYTHON:-} python3.13 python3.12 python3.11 python3; do
    p=$(command -v "$c" 2>/dev/null) || continue
    py_ok "$p" && { echo "$p"; return 0; }
  done
  return 1
}

# pip_wheel: path of a pip wheel to bootstrap a venv whose python lacks ensurepip.
pip_wheel() {
  local w
  for w in /usr/share/python-wheels/pip-*.whl "$TOOLS_ROOT"/usr/share/python-wheels/pip-*.whl; do
    [[ -f $w ]] && { echo "$w"; return 0; }
  done
  tools_unpack python3-pip-whl >&2
  for w in "$TOOLS_ROOT"/usr/share/python-wheels/pip-*.whl; do
    [[ -f $w ]] && { echo "$w"; return 0; }
  done
  die "no pip wheel in python3-pip-whl"
}

create_venv() {
  local py=$1 ver mode whl
  rm -rf "$VENV"
  if run_quiet "$py -m venv .venv" "$py" -m venv "$VENV" 2>/dev/null; then return 0; fi
  # Debian/Ubuntu ship venv's ensurepip separately (python3.X-venv).
  ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  "$py" -c 'import ensurepip' >/dev/null 2>&1 && {
    run_quiet "$py -m venv .venv" "$py" -m venv "$VENV"
    return
  }
  mode=$(install_mode)
  if [[ $mode != tools ]]; then
    apt_install "python$ver-venv"
    rm -rf "$VENV"
    run_quiet "$py -m venv .venv" "$py" -m venv "$VENV"
    return
  fi
  note "no ensurepip and no root: bootstrapping pip from Debian's pip wheel"
  rm -rf "$VENV"
  run_quiet "$py -m venv --without-pip .venv" "$py" -m venv --without-pip "$VENV"
  whl=$(pip_wheel)
  run_quiet "pip bootstrap" "$VENV/bin/python" "$whl/pip" install -q --no-index "$whl"
}

req_hash() {
  {
    "$VENV/bin/python" -c 'import sys; print(sys.version)'
    cat "$REPO"/requirements*.txt "$REPO"/requirements.lock
  } | sha256sum | cut -d' ' -f1
}

# install_python: as root (or with sudo -n), install a python3 >= 3.11 from apt.
install_python() {
  [[ $(install_mode) == tools ]] && return 1
  apt_install python3 python3-venv || return 1
  find_python >/dev/null && return 0
  # e.g. Ubuntu 22.04: python3 is 3.10, python3.11 is a separate package.
  apt_install python3.11 python3.11-venv || return 1
}

main() {
  local py want
  if ! py=$(find_python) && ! { install_python && py=$(find_python); }; then
    local found=none
    command -v python3 >/dev/null 2>&1 && found=$(python3 --version 2>&1)
    die "need python3 >= 3.11 (python3 found: $found); install it or set PYTHON=/path/to/python3.11"
  fi
  [[ -f $REPO/requirements-dev.txt ]] || die "requirements-dev.txt not found in $REPO"
  [[ -f $REPO/requirements.lock ]] || die "requirements.lock not found in $REPO: make lock"
  if [[ -x $VENV/bin/python ]] && py_ok "$VENV/bin/python"; then
    want=$(req_hash)
    [[ -f $STAMP && $(cat "$STAMP") == "$want" ]] && return 0
  fi
  if ! { [[ -x $VENV/bin/python ]] && py_ok "$VENV/bin/python" &&
    "$VENV/bin/python" -m pip --version >/dev/null 2>&1; }; then
    [[ -e $VENV ]] && note "recreating broken or outdated .venv"
    create_venv "$py"
  fi
  want=$(req_hash)
  # Two installs: in hash-checking mode pip wants a hash on every line it is given, and the
  # dev tools have none. The runtime set is then already there when they are added.
  note "pip install --require-hashes -r requirements.lock, then -r requirements-dev.txt (into .venv)"
  (cd "$REPO" && run_quiet "pip install --require-hashes -r requirements.lock" \
    "$VENV/bin/python" -m pip install -q --require-hashes -r requirements.lock)
  (cd "$REPO" && run_quiet "pip install -r requirements-dev.txt" \
    "$VENV/bin/python" -m pip install -q -r requirements-dev.txt)
  echo "$want" >"$STAMP"
}

with_lock venv main
