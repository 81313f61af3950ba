#!/usr/bin/env bash
# The 3-site demo lab: installs packages, builds, brings the lab up, shows VNFs pinging across
# sites on both VLANs and each site's plan/status, tears everything down. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/deps.sh
cargo build --release --locked -p l2s-vnf -p l2s-lab
L2S_VNF_BIN="$PWD/target/release/l2s-vnf" exec target/release/l2s-demo
