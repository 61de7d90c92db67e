#!/usr/bin/env bash
# Build everything and boot the demo domain: the kxen PV test guest, whose
# PV console (every hypercall check it makes) is shown on this terminal.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
(cd tests/guest && cargo build --release)
exec target/release/kxen-vmm \
    --kernel tests/guest/target/release/kxen-testguest \
    --name demo --domid 1 --memory 64 --vcpus 2 "$@"
