#!/usr/bin/env bash
# Tests the TypeScript client on a bare Debian machine: installs Chromium
# (apt) and the npm packages (npm ci, from package-lock.json), checks that
# src/gen/ is what gen.sh makes from proto/, type-checks and builds the
# package, runs the Vitest unit tests, then against a real presenced
# ($PRESENCED_BIN, started and stopped here) the Vitest e2e tests (Node gRPC,
# Chromium, many tabs, FacePile screenshots, the package installed from its
# folder and from `npm pack`) and the React Native entry under Jest.
# Exits non-zero on any failure; the last line sums up every test run.
#
#   PRESENCED_BIN=/path/to/presenced clients/typescript/test.sh
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/../../scripts/lib.sh"
# A relative PRESENCED_BIN is relative to where the script was called from.
case $PRESENCED_BIN in /*) ;; *) PRESENCED_BIN=$PWD/$PRESENCED_BIN ;; esac
cd "$HERE"
started=$(date +%s)
# Plain output in logs (Vitest colours it even when it is not a terminal).
[ -t 1 ] || export NO_COLOR=1
ARTIFACTS=$REPO_ROOT/test-artifacts/typescript
export TEST_ARTIFACTS=$ARTIFACTS
mkdir -p "$ARTIFACTS"

node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' || {
    echo "typescript: needs Node.js >= 20.19 (found $(node --version 2>/dev/null || echo none))" >&2
    exit 1
}
[ -x "$PRESENCED_BIN" ] || {
    echo "typescript: no presenced binary at $PRESENCED_BIN (build it with cargo build, or set PRESENCED_BIN)" >&2
    exit 1
}

need_apt chromium openssl
log "npm ci"
timeout 900 npm ci --no-audit --no-fund --loglevel=error

log "gen.sh: src/gen/ must match proto/"
./gen.sh
if ! git diff --exit-code --stat -- src/gen || [ -n "$(git status --porcelain -- src/gen)" ]; then
    echo "typescript: src/gen/ differs from what gen.sh makes from proto/: run clients/typescript/gen.sh and commit" >&2
    exit 1
fi

log "type-check (package, tests, both example apps) and build"
node_modules/.bin/tsc -p tsconfig.json --noEmit
node_modules/.bin/tsc -p example-react-native/tsconfig.json --noEmit
node build.mjs
# The built package imports by its public names, as an app would.
node --input-type=module -e '
for (const entry of ["@presenced/client", "@presenced/client/node", "@presenced/client/react", "@presenced/client/gen"]) await import(entry);
'
# The React Native entry imports react-native (Flow source, not loadable by
# Node): Jest runs it below; here, that the name resolves to what was built.
node --input-type=module -e '
const { existsSync } = await import("node:fs");
const path = new URL(import.meta.resolve("@presenced/client/react-native")).pathname;
if (!path.endsWith("/dist/react-native.js") || !existsSync(path)) throw new Error("react-native entry: " + path);
'

failures=0
run_vitest() { # NAME CONFIG TIMEOUT
    local status=0
    timeout --kill-after=10 "$3" node_modules/.bin/vitest run --config "$2" \
        --reporter=default --reporter=json --outputFile.json="$ARTIFACTS/$1.json" || status=$?
    [ "$status" = 0 ] || { echo "typescript: $1 tests failed (exit $status)" >&2; failures=$((failures + 1)); }
}

log "unit tests (Vitest)"
run_vitest unit vitest.config.ts 300

port=$(free_port)
log "presenced on 127.0.0.1:$port"
"$PRESENCED_BIN" --listen "127.0.0.1:$port" >"$ARTIFACTS/presenced.log" 2>&1 &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true' EXIT
for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$ARTIFACTS/presenced.log" >&2; echo "typescript: presenced exited" >&2; exit 1; }
    sleep 0.1
done
export PRESENCED_URL="http://127.0.0.1:$port"

log "Node gRPC, Chromium, tabs, FacePile and package e2e tests (Vitest, playwright-core, /usr/bin/chromium)"
run_vitest e2e vitest.e2e.config.ts 600

log "React Native entry (Jest, react-native preset)"
status=0
timeout --kill-after=10 300 node_modules/.bin/jest --config jest.config.cjs --ci \
    --json --outputFile="$ARTIFACTS/react-native.json" || status=$?
[ "$status" = 0 ] || { echo "typescript: react-native tests failed (exit $status)" >&2; failures=$((failures + 1)); }

# One closing line over every run, from the Vitest and Jest JSON reports
# (same fields).
node -e '
const fs = require("fs");
let passed = 0, failed = 0, skipped = 0;
for (const name of ["unit", "e2e", "react-native"]) {
  const file = process.argv[1] + "/" + name + ".json";
  if (!fs.existsSync(file)) { failed++; continue; }
  const r = JSON.parse(fs.readFileSync(file, "utf8"));
  passed += r.numPassedTests; failed += r.numFailedTests;
  if (!r.success && r.numFailedTests === 0) failed++; // a suite failed outside its tests
  skipped += r.numPendingTests + (r.numTodoTests || 0);
  if (r.numTotalTests === 0) failed++;
}
console.log(`\nFacePile screenshots: ${process.argv[1]}/facepile-{light,dark,many-offline,overflow}.png`);
console.log(`typescript: ${passed} passed, ${failed} failed` + (skipped ? `, ${skipped} skipped` : ""));
process.exit(failed || skipped ? 1 : 0);
' "$ARTIFACTS" || failures=$((failures + 1))
log "typescript: done in $(( $(date +%s) - started )) s"
[ "$failures" = 0 ]
