#!/usr/bin/env bash
# Builds target/debian/cloudpal_VERSION_ARCH.deb with cargo-deb: pal (release), its manual page,
# bash completions and the systemd unit (installed disabled). On Debian, as root or with the
# build packages present; install it with `apt install ./target/debian/cloudpal_*.deb`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source tests/scripts/packages.sh
ensure_packages build-essential pkg-config dpkg-dev
ensure_rust
command -v cargo-deb >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo-deb" ] || cargo install --locked cargo-deb
cargo build --locked --release -p cli
target/release/pal manpage > target/pal.1
target/release/pal completions bash > target/pal.bash
cargo deb --locked -p cli --no-build
