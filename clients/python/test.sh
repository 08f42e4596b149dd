#!/usr/bin/env bash
# Tests of the Python client against a real presenced ($PRESENCED_BIN), at
# both ends of the versions it supports. Each round installs the client as
# README.md says (`pip install ./clients/python`, from the repository root)
# into a fresh venv, pinned by a constraints file:
#
#   newest    grpcio and protobuf of scripts/tools/requirements.txt
#   minimum   scripts/tools/requirements-min.txt, which must be the floors of
#             pyproject.toml's dependencies (checked first)
#
# then checks that pip installed exactly those versions and runs pytest
# (the example, mypy --strict on the stubs, every RPC). Bounded: 15 minutes.
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"
. "$REPO_ROOT/scripts/tools/env.sh"
bound_time 900 "$0" "$@"

PRESENCED_BIN=$(realpath -m "$PRESENCED_BIN")
export PRESENCED_BIN
CLIENT="$REPO_ROOT/clients/python"
python3 -m venv --help >/dev/null 2>&1 || need_apt python3-venv

# pin FILE NAME: the version FILE pins NAME to.
pin() { sed -n "s/^$2==\([^ ]*\).*/\1/p" "$1"; }

log "pyproject.toml floors = scripts/tools/requirements-min.txt"
floors=$(python3 - "$CLIENT/pyproject.toml" <<'PY'
import re, sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
for dep in deps:
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][^,]*)(,.*)?", dep)
    if not m:
        raise SystemExit(f"pyproject.toml: dependency {dep!r} has no >= floor")
    print(f"{m[1]}=={m[2]}")
PY
)
expected=$(grep -E '^[A-Za-z0-9_.-]+==' "$TOOLS_DIR/requirements-min.txt")
if [ "$(sort <<<"$floors")" != "$(sort <<<"$expected")" ]; then
    echo "pyproject.toml floors:" $floors >&2
    echo "requirements-min.txt: " $expected >&2
    echo "they differ: test the floor you declare" >&2
    exit 1
fi

round() { # NAME CONSTRAINTS
    local name=$1 constraints=$2 venv="$CLIENT/.venv-$1" want have
    log "[$name] fresh venv; pip install ./clients/python -c ${constraints#"$REPO_ROOT"/}"
    rm -rf "$venv"
    python3 -m venv "$venv"
    # The README's install step, from the repository root.
    (cd "$REPO_ROOT" && "$venv/bin/pip" install -q --disable-pip-version-check ./clients/python -c "$constraints")
    # Test tools at the tools' pins; none of them depends on grpcio or protobuf.
    "$venv/bin/pip" install -q --disable-pip-version-check -c "$TOOLS_DIR/requirements.txt" \
        pytest mypy types-protobuf types-grpcio
    "$venv/bin/pip" check
    want="grpcio==$(pin "$constraints" grpcio) protobuf==$(pin "$constraints" protobuf)"
    have=$("$venv/bin/python" -c 'import grpc, google.protobuf as p; print(f"grpcio=={grpc.__version__} protobuf=={p.__version__}")')
    [ "$have" = "$want" ] || { echo "[$name] installed $have, expected $want" >&2; return 1; }
    # The tests must import the installed package, not the source tree.
    (cd "$CLIENT" && "$venv/bin/python" -c 'import sys, presenced.v1 as m; sys.exit(not m.__file__.startswith(sys.prefix))') ||
        { echo "[$name] presenced.v1 is not imported from $venv" >&2; return 1; }
    log "[$name] pytest clients/python/tests with $have (presenced: $PRESENCED_BIN)"
    (cd "$CLIENT" && "$venv/bin/python" -m pytest -p no:cacheprovider -q -ra tests)
}

round newest "$TOOLS_DIR/requirements.txt"
round minimum "$TOOLS_DIR/requirements-min.txt"
