#!/usr/bin/env bash
# Every test: formatting, lints, unit tests, config fixtures and the end-to-end lab tests on
# real OVS in network namespaces. Needs root (namespaces); installs its packages itself.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked -- --test-threads=2
