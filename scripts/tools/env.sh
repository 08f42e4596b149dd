# Tool set-up shared by scripts/gen-clients, scripts/check-proto and the
# client/grpcurl test scripts. Source it after scripts/lib.sh.
#
# Everything is installed from the package registries by name and pinned
# (requirements.txt, package-lock.json here), so a bare Debian machine and a
# developer's machine generate byte-identical clients.

TOOLS_DIR="$REPO_ROOT/scripts/tools"
VENV="$REPO_ROOT/.venv"
GEN_VENV="$TOOLS_DIR/.venv-gen"

# ensure_venv: $VENV with the pinned Python tools (grpcurl, pytest, mypy, the
# newest grpcio and protobuf the Python client supports). Reinstalls only when
# requirements.txt changed.
ensure_venv() { venv_from "$VENV" "$TOOLS_DIR/requirements.txt"; }

# ensure_gen_venv: $GEN_VENV with the Python code generators (grpcio-tools,
# mypy-protobuf), pinned in requirements-gen.txt. Apart from $VENV because the
# generator is deliberately old (see there) and needs protobuf < 5.
ensure_gen_venv() { venv_from "$GEN_VENV" "$TOOLS_DIR/requirements-gen.txt"; }

# venv_from DIR REQUIREMENTS: a venv at DIR with the pins of REQUIREMENTS;
# reinstalls only when that file changed.
venv_from() {
    local dir=$1 req=$2 want have
    want=$(sha256sum "$req" | cut -d' ' -f1)
    have=$(cat "$dir/.requirements.sha256" 2>/dev/null || true)
    [ "$want" = "$have" ] && [ -x "$dir/bin/python" ] && return 0
    if [ ! -x "$dir/bin/python" ]; then
        log "python venv at $dir"
        python3 -m venv "$dir" 2>/dev/null || {
            need_apt python3-venv
            python3 -m venv "$dir"
        }
    fi
    log "pip install -r ${req#"$REPO_ROOT"/}"
    "$dir/bin/pip" install -q --disable-pip-version-check -r "$req"
    echo "$want" >"$dir/.requirements.sha256"
}

# ensure_buf: buf from npm (@bufbuild/buf, pinned in package-lock.json); sets $BUF.
ensure_buf() {
    BUF="$TOOLS_DIR/node_modules/.bin/buf"
    if [ ! -x "$BUF" ] || ! "$BUF" --version >/dev/null 2>&1; then
        command -v npm >/dev/null || need_apt nodejs npm
        log "npm ci (scripts/tools: @bufbuild/buf)"
        (cd "$TOOLS_DIR" && npm ci --no-audit --no-fund --loglevel=error)
    fi
    export BUF
}

# ensure_go_tools: Go 1.19, protoc and the Go plugins, all from Debian.
# golang-github-golang-protobuf-1-5-dev is named on purpose: grpc-go 1.33's
# codec goes through github.com/golang/protobuf, and only its 1.4+ line (built
# on google.golang.org/protobuf) can marshal what protoc-gen-go 1.28 emits;
# left to itself apt satisfies grpc's dependency with the 1.3 line, and every
# call then panics ("protobuf tag not enough fields").
ensure_go_tools() {
    need_apt golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc \
        golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev
}

# start_presenced PORT LOGFILE: starts $PRESENCED_BIN on 127.0.0.1:PORT, sets
# PRESENCED_PID, and waits (at most 30 s) until the port accepts connections.
start_presenced() {
    local port=$1 logfile=$2
    [ -x "$PRESENCED_BIN" ] || { echo "no presenced binary at $PRESENCED_BIN (set PRESENCED_BIN)" >&2; return 1; }
    "$PRESENCED_BIN" --listen "127.0.0.1:$port" >"$logfile" 2>&1 &
    PRESENCED_PID=$!
    local i
    for i in $(seq 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        kill -0 "$PRESENCED_PID" 2>/dev/null || { echo "presenced exited:" >&2; cat "$logfile" >&2; return 1; }
        sleep 0.1
    done
    echo "presenced did not listen on 127.0.0.1:$port within 30 s" >&2
    return 1
}

# bound_time SECONDS "$0" "$@": re-runs the calling script under `timeout`
# (once), so installs and tests together can never hang CI.
bound_time() {
    local secs=$1
    shift
    [ "${PRESENCED_BOUNDED:-}" = "$1" ] && return 0
    PRESENCED_BOUNDED=$1 exec timeout --kill-after=15 "$secs" "$@"
}
