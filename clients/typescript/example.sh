#!/usr/bin/env bash
# The example app against a local presenced, in one command (from anywhere):
#
#   clients/typescript/example.sh
#
# Installs the npm packages if needed, starts presenced on 127.0.0.1:50051
# ($PRESENCED_BIN if set, else target/release/presenced: the binary the
# README's first command, `cargo run --release`, builds; `cargo build
# --release` makes sure it is current, a no-op when it is), then the Vite
# dev server on http://127.0.0.1:5173. Ctrl-C stops both. The port is checked
# before anything is built.
#   PRESENCED_URL=http://host:port   use a presenced that is already running
#   PRESENCED_PORT, EXAMPLE_PORT     other ports
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
given_bin=${PRESENCED_BIN:-}
. "$HERE/../../scripts/lib.sh"
# A relative PRESENCED_BIN is relative to where the script was called from.
case $PRESENCED_BIN in /*) ;; *) PRESENCED_BIN=$PWD/$PRESENCED_BIN ;; esac
cd "$HERE"

[ -x node_modules/.bin/vite ] || { log "npm ci"; npm ci --no-audit --no-fund --loglevel=error; }

server_pid=
stop_server() { [ -z "$server_pid" ] || { kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; }; }
trap stop_server EXIT
trap 'exit 130' INT TERM

if [ -z "${PRESENCED_URL:-}" ]; then
    port=${PRESENCED_PORT:-50051}
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "example: 127.0.0.1:$port is taken. Is presenced already running there? Then:" >&2
        echo "  PRESENCED_URL=http://127.0.0.1:$port $0" >&2
        exit 1
    fi
    if [ -z "$given_bin" ]; then
        PRESENCED_BIN=$REPO_ROOT/target/release/presenced
        if command -v cargo >/dev/null; then
            log "cargo build --release --bin presenced (what \`cargo run --release\` builds; a no-op when it is current)"
            (cd "$REPO_ROOT" && cargo build --release --quiet --bin presenced)
        elif [ ! -x "$PRESENCED_BIN" ]; then
            echo "example: no cargo and no $PRESENCED_BIN; set PRESENCED_BIN or PRESENCED_URL" >&2
            exit 1
        fi
    fi
    log "presenced on 127.0.0.1:$port"
    "$PRESENCED_BIN" --listen "127.0.0.1:$port" &
    server_pid=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        kill -0 "$server_pid" 2>/dev/null || { echo "example: presenced exited" >&2; exit 1; }
        sleep 0.1
    done
    PRESENCED_URL=http://127.0.0.1:$port
fi

app_port=${EXAMPLE_PORT:-5173}
log "example app: open two windows, e.g.
    http://127.0.0.1:$app_port/?user=ada
    http://127.0.0.1:$app_port/?user=grace
  then close or hide one of them (presenced: $PRESENCED_URL)"
VITE_PRESENCED_URL=$PRESENCED_URL node_modules/.bin/vite --config example/vite.config.ts --port "$app_port"
