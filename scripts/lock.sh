#!/usr/bin/env bash
# lock.sh: what `make lock` runs. Regenerates requirements.lock, every runtime dependency
# (transitive ones too) pinned and hashed, from the top-level list in requirements.txt.
# pip-tools lives in a throwaway venv, never in .venv. Python 3.11, the image's: a lock
# resolved by another version may pick other markers. Without arguments the pins already in
# requirements.lock are kept where they still fit; LOCK_ARGS=--upgrade (or
# --upgrade-package NAME) moves them.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

PIP_TOOLS=pip-tools==7.6.2
py=${PYTHON:-$(command -v python3.11 || true)}
[[ -n $py ]] || die "python3.11 not found (the image's version); set PYTHON=/path/to/python3.11"
"$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
  die "$py is not Python 3.11, the image's version"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pw-lock.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
run_quiet "python -m venv" "$py" -m venv "$tmp/venv"
run_quiet "pip install $PIP_TOOLS" "$tmp/venv/bin/pip" install -q "$PIP_TOOLS"
# shellcheck disable=SC2086  # LOCK_ARGS is a list of flags
CUSTOM_COMPILE_COMMAND="make lock" "$tmp/venv/bin/pip-compile" --quiet --generate-hashes \
  --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links ${LOCK_ARGS:-} \
  --output-file requirements.lock requirements.txt
note "wrote requirements.lock; commit it with requirements.txt"
