#!/usr/bin/env bash
# The namespace benchmark (not part of the test suite): pal against boringtun-cli,
# wireguard-go, Nebula, tinc and the raw link on the same topology, in one run. As root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tests/scripts/packages.sh
require_root "the benchmark"
ensure_packages build-essential pkg-config ca-certificates iproute2 iputils-ping iperf3 wireguard-go wireguard-tools nebula tinc nftables dnsmasq-base
ensure_rust
command -v boringtun-cli >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/boringtun-cli" ] || cargo install --locked boringtun-cli
cargo build --locked --release -p cli -p tests --bins
if [ -n "${BENCH_DNS:-}" ]; then
    PAL_BIN="$PWD/target/release/pal" exec "$PWD/target/release/bench-dns"
fi
PAL_BIN="$PWD/target/release/pal" exec "$PWD/target/release/bench"
