#!/usr/bin/env bash
# Tests of the Go client, offline, in GOPATH mode against Debian's grpc-go 1.33
# and protobuf-go (there is no module proxy here): gofmt, go vet, go build,
# then go test, which starts a real presenced ($PRESENCED_BIN) and runs the
# generated stubs and the example (in-process and as a built binary) against
# it. Bounded: 15 minutes.
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"
. "$REPO_ROOT/scripts/tools/env.sh"
bound_time 900 "$0" "$@"

PRESENCED_BIN=$(realpath -m "$PRESENCED_BIN")
export PRESENCED_BIN
ensure_go_tools
gopath_env
cd "$REPO_ROOT/.gopath/src/presenced/clients/go"

log "gofmt (hand-written code)"
unformatted=$(gofmt -l cmd)
[ -z "$unformatted" ] || { echo "gofmt: not formatted: $unformatted" >&2; exit 1; }
log "go vet ./... && go build ./..."
go vet ./...
go build ./...
log "go test ./cmd/... (presenced: $PRESENCED_BIN)"
exec go test -count=1 -timeout 300s -v ./cmd/...
