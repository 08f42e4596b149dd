#!/usr/bin/env bash
# Tests of the Go client along clients/go/README.md's offline route (Debian
# 12's packages, GOPATH mode; there is no module proxy here), with a real
# presenced ($PRESENCED_BIN):
#
#   1. installs the packages of the README's apt-get line;
#   2. runs the README's offline shell block as written, in a scratch HOME,
#      with 127.0.0.1:50051 pointed at a test server, until the example prints
#      the room; then Ctrl-C, and it must stop cleanly;
#   3. in the environment that block sets up: gofmt, go vet, go test (the
#      stubs, and the example in-process and as a built binary).
#
# Bounded: 15 minutes.
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"
. "$REPO_ROOT/scripts/tools/env.sh"
bound_time 900 "$0" "$@"

PRESENCED_BIN=$(realpath -m "$PRESENCED_BIN")
export PRESENCED_BIN
README="$REPO_ROOT/clients/go/README.md"

# block N: the N-th fenced sh block between the README's go-offline markers.
block() {
    awk -v want="$1" '
        /<!-- go-offline:begin/ { on = 1; next }
        /<!-- go-offline:end/ { on = 0 }
        on && /^```sh$/ { n++; inblock = 1; next }
        inblock && /^```$/ { inblock = 0; next }
        inblock && n == want { print }
    ' "$README"
}
install=$(block 1)
steps=$(block 2)
[ -n "$install" ] && [ -n "$steps" ] || { echo "no go-offline blocks in $README" >&2; exit 1; }

log "README step 1: $install"
[[ "$install" =~ ^apt-get\ install\ ([a-z0-9. -]+)$ ]] || { echo "unexpected install line: $install" >&2; exit 1; }
# shellcheck disable=SC2086 # the package list
need_apt ${BASH_REMATCH[1]}

# The block must end with the example's `go run`; the lines before it set up
# the environment the checks below run in.
run_line=$(tail -n1 <<<"$steps")
setup=$(sed '$d' <<<"$steps")
[[ "$run_line" == "go run ./cmd/presence-example "* ]] || { echo "the block must end with go run: $run_line" >&2; exit 1; }

work=$(mktemp -d)
cleanup() {
    if [ -n "${example_pid:-}" ]; then kill -KILL -- "-$example_pid" 2>/dev/null || true; fi
    if [ -n "${PRESENCED_PID:-}" ]; then kill "$PRESENCED_PID" 2>/dev/null || true; wait "$PRESENCED_PID" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
port=$(free_port)
start_presenced "$port" "$work/presenced.log"
# A scratch HOME holds the README's ~/go; the build cache stays warm outside it.
export HOME="$work/home" GOCACHE="$REPO_ROOT/.gopath/cache"
mkdir -p "$HOME"

log "README step 2, as written (server: 127.0.0.1:$port):"
printf '%s\n' "$steps" | sed 's/^/    /' >&2
cd "$REPO_ROOT"
# Its own process group (setsid), so Ctrl-C reaches go run and the example.
setsid bash -euo pipefail -c "${steps//127.0.0.1:50051/127.0.0.1:$port}" >"$work/example.out" 2>"$work/example.err" &
example_pid=$!
want="chat:42: 1 online of 1: alice*"
for _ in $(seq 1200); do # go run compiles first: up to 120 s
    grep -qF "$want" "$work/example.out" && break
    kill -0 "$example_pid" 2>/dev/null || break
    sleep 0.1
done
if ! grep -qF "$want" "$work/example.out"; then
    echo "the example did not print '$want'; stdout:" >&2
    cat "$work/example.out" "$work/example.err" >&2
    exit 1
fi
cat "$work/example.out" >&2
kill -INT -- "-$example_pid"
for _ in $(seq 200); do
    kill -0 "$example_pid" 2>/dev/null || break
    sleep 0.1
done
status=0
if kill -0 "$example_pid" 2>/dev/null; then
    echo "the example did not exit within 20 s of Ctrl-C" >&2
    exit 1
fi
wait "$example_pid" || status=$?
example_pid=
# `go run` itself exits 1 when interrupted, whatever the example did
# (cmd/go/internal/work/exec.go), and says "exit status N" when the example
# failed; the example logs only failures (a failed disconnect). So: status 0
# or 1, and nothing on stderr.
if [ "$status" -gt 1 ] || [ -s "$work/example.err" ]; then
    echo "after Ctrl-C: exit status $status, stderr:" >&2
    cat "$work/example.err" >&2
    exit 1
fi
log "the example printed the room and stopped cleanly on Ctrl-C"

log "README step 2's environment: gofmt, go vet, go test"
bash -euo pipefail -c "$setup
unformatted=\$(gofmt -l cmd)
[ -z \"\$unformatted\" ] || { echo \"gofmt: not formatted: \$unformatted\" >&2; exit 1; }
go vet ./...
go test -count=1 -timeout 300s -v ./..."
