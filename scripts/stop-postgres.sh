#!/usr/bin/env bash
# Stops the private PostgreSQL cluster of this checkout, if one runs (no-op otherwise).
# --remove also deletes its data when that lives outside .run/ (used by `make clean`);
# --if-idle stops it only when no other session uses it.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
. "$(dirname "${BASH_SOURCE[0]}")/pg-private.sh"

[[ -d $RUN_DIR ]] || exit 0
with_lock pg private_stop "$@"
