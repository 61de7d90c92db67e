#!/usr/bin/env bash
# Run every kxen test: unit tests and the end-to-end tests that boot real
# guests under real KVM (needs /dev/kvm), the fuzz targets replayed over a
# fixed corpus, then the slow group: Linux built from guest-kernel-patches/
# booted as a PVH guest (builds the kernel once per machine into
# ~/.cache/kxen; minutes under emulation), and Debian's stock kernel booted
# as an HVM guest with virtio disk and network, and as a PV guest (given
# directly, then booted from its own disk by pygrub).
#
# Installs the Debian packages the tests need when they are missing
# (examples/prereqs.sh lists them). Every test binary runs even when one
# fails; the last line counts all of them (`kxen: N passed, M failed`) and
# the exit status is non-zero on any failure. KXEN_SKIP_SLOW=1 leaves the
# slow group out (it is then reported as skipped, not as passed).
#
# Time budget, worst case on a 2-core machine (CI stops at 90 minutes):
# each step below runs under its own limit, and each slow test fails with
# a message naming its budget before the step's limit kills it.
#   packages (apt, first run)     about 2 min measured
#   fast group, build included   13 min (about 6 min measured from scratch)
#   fuzz replay, build included   4 min
#   PVH guest kernel build       17 min (6 to 11 min measured on 2 cores)
#   Linux PVH slow test          13 min (about 4 min measured)
#   stock HVM slow test          21 min (about 15 min measured)
#   stock PV slow test           10 min (6 min measured on a busy host)
#   pygrub PV slow test           7 min (3 min measured on a busy host)
#   total                        87 min
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=examples/prereqs.sh
. examples/prereqs.sh

start_all=$(date +%s)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
failures=()

# step NAME LIMIT_SECONDS COMMAND...: run one budgeted step, its output
# kept in the log for the closing count.
step() {
    local name=$1 limit=$2 start status
    shift 2
    echo
    echo "== $name (limit $((limit / 60)) min)"
    start=$(date +%s)
    timeout --kill-after=30 "$limit" "$@" 2>&1 | tee -a "$log"
    status=${PIPESTATUS[0]}
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        echo "kxen: $name ran past its $((limit / 60))-minute limit and was stopped" | tee -a "$log"
    fi
    echo "kxen: $name took $(($(date +%s) - start)) s (exit $status)"
    [ "$status" -eq 0 ] || failures+=("$name")
}

kxen_install_missing "the tests" "${KXEN_TEST_PACKAGES[@]}" || exit 1

step "fast group" 780 cargo test --workspace --no-fail-fast -- --test-threads=2
# The fuzz crate is a workspace of its own (cargo-fuzz's layout); sharing
# target/ reuses the workspace's dependencies.
step "fuzz replay" 240 env CARGO_TARGET_DIR="$PWD/target" \
    cargo test --manifest-path fuzz/Cargo.toml --no-fail-fast

if [ "${KXEN_SKIP_SLOW:-0}" = 1 ]; then
    echo "kxen: slow group skipped (KXEN_SKIP_SLOW=1)"
else
    # The kernel is built (or found in the cache) here, under its own
    # limit, so the PVH test's budget covers only the guest.
    step "slow group: PVH guest kernel" 1020 bash -c \
        'guest-kernel-patches/linux/build.sh >/dev/null'
    step "slow group: Linux PVH guest" 780 \
        cargo test -p kxen-tests --test linux_pvh -- --ignored --nocapture --test-threads=1
    step "slow group: stock Debian kernel as an HVM guest" 1380 \
        cargo test -p kxen-tests --test hvm_stock -- --ignored --nocapture --test-threads=1
    step "slow group: stock Debian kernel as a PV guest" 600 \
        cargo test -p kxen-tests --test pv_stock -- --ignored --nocapture --test-threads=1
    step "slow group: stock Debian kernel booted by pygrub as a PV guest" 420 \
        cargo test -p kxen-tests --test pv_pygrub -- --ignored --nocapture --test-threads=1
fi

passed=$(grep -oE '^test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -oE '^test result: [A-Za-z]+\. [0-9]+ passed; [0-9]+ failed' "$log" | awk '{s += $6} END {print s + 0}')
# A test binary that died (signal, abort, build error) prints no result
# line; cargo names it in "error: N targets failed" (or "test failed").
crashed=$(grep -cE '^error: (test failed|[0-9]+ targets? failed|could not compile)' "$log")
if [ "$failed" -eq 0 ] && ((${#failures[@]})); then
    failed=$((crashed > 0 ? crashed : ${#failures[@]}))
fi
echo
if ((${#failures[@]})); then
    echo "kxen: failed steps: ${failures[*]}"
fi
echo "kxen: all steps took $(($(date +%s) - start_all)) s"
echo "kxen: $passed passed, $failed failed"
if ((${#failures[@]})) || [ "$failed" -ne 0 ] || [ "$passed" -eq 0 ]; then
    exit 1
fi
