#!/usr/bin/env bash
# Run every kxen test: unit tests and the end-to-end tests that boot real
# guests under real KVM (needs /dev/kvm), then the slow group: Linux built
# from guest-kernel-patches/ booted as a PVH guest (builds the kernel once
# per machine into ~/.cache/kxen; minutes under emulation), and Debian's
# stock kernel booted as an HVM guest with virtio disk and network. Ends with one
# total line over all test binaries. KXEN_SKIP_SLOW=1 leaves the slow group
# out (it is then reported as skipped, not as passed).
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace -- --test-threads=2 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

slow_status=0
if [ "${KXEN_SKIP_SLOW:-0}" = 1 ]; then
    echo "kxen: slow group skipped (KXEN_SKIP_SLOW=1)"
else
    echo
    echo "== slow group: Linux PVH guest"
    start=$(date +%s)
    timeout 2700 cargo test -p kxen-tests --test linux_pvh -- --ignored --nocapture --test-threads=1 2>&1 | tee -a "$log"
    slow_status=${PIPESTATUS[0]}
    echo "kxen: slow group (PVH) took $(( $(date +%s) - start )) s"
    echo
    echo "== slow group: stock Debian kernel as an HVM guest"
    start=$(date +%s)
    timeout 2700 cargo test -p kxen-tests --test hvm_stock -- --ignored --nocapture --test-threads=1 2>&1 | tee -a "$log"
    hvm_status=${PIPESTATUS[0]}
    [ "$hvm_status" -eq 0 ] || slow_status=$hvm_status
    echo "kxen: slow group (HVM) took $(( $(date +%s) - start )) s"
fi

passed=$(grep -oE '^test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -oE '; [0-9]+ failed' "$log" | awk '{s += $2} END {print s + 0}')
echo
echo "kxen: $passed passed, $failed failed"
if [ "$status" -ne 0 ] || [ "$slow_status" -ne 0 ] || [ "$failed" -ne 0 ] || [ "$passed" -eq 0 ]; then
    exit 1
fi
