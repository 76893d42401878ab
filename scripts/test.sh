#!/usr/bin/env bash
# Every test of trustd: unit, integration (tempdirs, fakes), and end-to-end (the real
# binaries). Tests that need root or system tools install nothing themselves: .ci/run
# installs the Debian packages first; under CI=true a missing tool fails the test.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked
