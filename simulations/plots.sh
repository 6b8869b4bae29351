#!/usr/bin/env bash
# Redraws the README's simulation plots: runs the revocation and lookup scenarios at full size (seed 1)
# and turns their SVG charts into simulations/plots/*.png (librsvg's rsvg-convert,
# installed if missing). Not part of the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/scripts/packages.sh
ensure_packages librsvg2-bin
cargo build --release -p simulations
# Exit status 1 is a missed goal, which still draws.
for scenario in revocation lookup; do
    target/release/simulations "$scenario" --seed "${SEED:-1}" --plots simulations/plots || [ $? -eq 1 ]
done
for svg in simulations/plots/*.svg; do
    rsvg-convert --format png --output "${svg%.svg}.png" "$svg"
    rm "$svg"
done
ls -l simulations/plots
