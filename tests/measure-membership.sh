#!/usr/bin/env bash
# Membership timings in a running five-device network (not part of the test suite): join to
# first ping, and revocation propagation, over RUNS runs (default 20). As root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tests/scripts/packages.sh
require_root "the measurement"
ensure_packages build-essential pkg-config ca-certificates iproute2 iputils-ping
ensure_rust
cargo build --locked --profile ci -p cli -p tests --bins
PAL_BIN="$PWD/target/ci/pal" exec "$PWD/target/ci/measure-membership"
