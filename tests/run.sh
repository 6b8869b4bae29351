#!/usr/bin/env bash
# The test command (README): on a fresh Debian machine, as root, installs what the suite needs,
# builds once in the `ci` profile and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tests/scripts/packages.sh

require_root "the end-to-end tests"
# gcc and make build ring's assembly; iproute2, ping and iperf3 drive the namespace tests.
# dnsmasq is the test internet's resolver; D-Bus and resolved's library run a real
# systemd-resolved (unpacked, never installed) in one test's private mount namespace. curl
# and openssl play the stranger at CloudPal's TCP 443 (tests/fallback.rs).
ensure_packages build-essential pkg-config ca-certificates iproute2 iputils-ping iperf3 nftables util-linux procps dnsmasq-base curl openssl \
    dbus-daemon dbus-system-bus-common libsystemd-shared libssl3
unpack_package systemd-resolved libsystemd-shared target/test-packages/systemd-resolved
ensure_rust

# The sans-IO contract: protocol and membership never depend on a runtime, sockets or TUN.
for crate in protocol membership; do
    if cargo tree --locked -p "$crate" -e normal --prefix none | grep -E '^(tokio|libp2p|tun-rs|tun|mio|socket2|async-std) '; then
        echo "error: $crate must stay sans-IO, but depends on the crates above" >&2
        exit 1
    fi
done

# --all-targets also runs each benchmark once in test mode, so benches cannot rot; the fuzz
# corpora are replayed by ordinary tests in protocol::fuzzing.
cargo test --locked --workspace --profile ci --all-targets
