#!/usr/bin/env bash
# Regenerates src/gen/ from ../../proto with buf and protoc-gen-es (versions
# pinned in package-lock.json). Idempotent and deterministic: CI runs it and
# fails on `git diff --exit-code`. Never edit src/gen/ by hand.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if [ ! -x node_modules/.bin/buf ] || [ ! -x node_modules/.bin/protoc-gen-es ]; then
    npm ci --no-audit --no-fund --loglevel=error
fi
node_modules/.bin/buf generate --template buf.gen.yaml
