#!/usr/bin/env bash
# Every test: formatting, lints, unit tests, config fixtures and the end-to-end lab tests on
# real OVS in network namespaces. Needs root (namespaces); installs its packages itself.
set -euo pipefail
cd "$(dirname "$0")/.."
# Nothing may rewrite what the tests compare with, and no test may skip: every test that
# cannot run here fails (see require_lab! in tests/src/lib.rs).
unset L2S_BLESS L2S_ALLOW_SKIP
tests/deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked -- --test-threads=2 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s+=$1} END {print s+0}')
if grep -q 'SKIPPED' "$log"; then
    echo "error: some end-to-end tests were SKIPPED (see above)"
    rc=1
fi
echo "total: $passed passed, $failed failed"
exit "$rc"
