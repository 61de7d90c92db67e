#!/usr/bin/env bash
# The second demo: build everything and boot the kxen test guest the xl way: kxl starts kxend,
# creates the domain from an xl.cfg and attaches to its PV console (the
# kxen test guest checks every hypercall it can make, then powers off and
# the console ends). Ctrl-] detaches early.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=examples/prereqs.sh
. examples/prereqs.sh
kxen_install_missing "the demo" "${KXEN_DEMO_PACKAGES[@]}"
cargo build --release --workspace
(cd tests/guest && cargo build --release)

# A private kxend for the demo, stopped on exit.
export KXEN_STATE_DIR="${KXEN_STATE_DIR:-$(mktemp -d /tmp/kxen-demo-state.XXXXXX)}"
export KXEN_RUN_DIR="${KXEN_RUN_DIR:-$(mktemp -d /tmp/kxen-demo-run.XXXXXX)}"
trap 'kill "$(cat "$KXEN_RUN_DIR/kxend.pid" 2>/dev/null)" 2>/dev/null || true' EXIT

cat > "$KXEN_STATE_DIR/demo.cfg" <<CFG
name = "demo"
type = "pvh"
kernel = "$PWD/tests/guest/target/release/kxen-testguest"
memory = 64
vcpus = 2
on_poweroff = "destroy"
CFG
target/release/kxl create -c "$KXEN_STATE_DIR/demo.cfg"
echo
target/release/kxl dmesg
