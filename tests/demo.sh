#!/usr/bin/env bash
# The demo command (README): on a fresh Debian machine, as root, installs what it needs, builds
# pal, and runs a whole CloudPal network on this machine in network namespaces.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tests/scripts/packages.sh

require_root "the demo"
ensure_packages build-essential pkg-config ca-certificates iproute2 iputils-ping nftables procps dnsmasq-base
ensure_rust
cargo build --locked --release -p cli -p tests --bins
PAL_BIN="$PWD/target/release/pal" exec "$PWD/target/release/demo"
