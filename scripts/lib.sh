# Shared helpers for the scripts under scripts/ and clients/*/test.sh.
# Source it: `. "$(git rev-parse --show-toplevel)/scripts/lib.sh"`.

REPO_ROOT=${REPO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export REPO_ROOT
# The server binary the client and browser tests start. scripts/test builds it.
export PRESENCED_BIN=${PRESENCED_BIN:-$REPO_ROOT/target/debug/presenced}

log() { printf '\n==> %s\n' "$*" >&2; }

# need_apt PKG... installs the Debian packages that are not installed yet,
# running `apt-get update` at most once per boot.
need_apt() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local stamp=/tmp/.presenced-apt-updated
    if [ ! -f "$stamp" ]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq && touch "$stamp"
    fi
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# free_port prints a TCP port that was free on 127.0.0.1 a moment ago, below
# Linux's ephemeral range (32768 and up) so that no outgoing connection is
# given it before the server binds it.
free_port() {
    python3 - <<'PY'
import random, socket
for _ in range(1000):
    port = random.randrange(20000, 32000)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(port)
        break
else:
    raise SystemExit("no free port in 20000-31999 on 127.0.0.1")
PY
}
