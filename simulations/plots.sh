#!/usr/bin/env bash
# Redraws the README's simulation plots: runs the revocation scenario at full size (seed 1)
# and turns its SVG chart into simulations/plots/revocation-cdf.png (librsvg's rsvg-convert,
# installed if missing). Not part of the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/scripts/packages.sh
ensure_packages librsvg2-bin
cargo build --release -p simulations
target/release/simulations revocation --seed "${SEED:-1}" --plots simulations/plots
for svg in simulations/plots/*.svg; do
    rsvg-convert --format png --output "${svg%.svg}.png" "$svg"
    rm "$svg"
done
ls -l simulations/plots
