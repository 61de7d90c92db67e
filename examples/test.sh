#!/usr/bin/env bash
# Run every kxen test: unit tests, then the end-to-end tests that boot real
# guests under real KVM. Needs /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace -- --test-threads=2
