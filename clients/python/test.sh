#!/usr/bin/env bash
# Tests of the Python client against a real presenced ($PRESENCED_BIN):
# installs the pinned tools into .venv, installs this package (non-editable,
# so packaging is tested too), then runs pytest. Bounded: 15 minutes.
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"
. "$REPO_ROOT/scripts/tools/env.sh"
bound_time 900 "$0" "$@"

ensure_venv
PRESENCED_BIN=$(realpath -m "$PRESENCED_BIN")
log "pip install clients/python"
"$VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$REPO_ROOT/clients/python"
"$VENV/bin/pip" check >/dev/null

log "pytest clients/python/tests (presenced: $PRESENCED_BIN)"
cd "$REPO_ROOT/clients/python"
exec "$VENV/bin/python" -m pytest -p no:cacheprovider -q -ra tests
