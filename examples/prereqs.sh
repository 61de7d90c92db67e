# Sourced by examples/demo.sh and examples/test.sh: installs, with apt,
# the Debian packages a command needs when they are missing, and says in
# one line what it installs. Needs root (or sudo) and Debian's archive.

# The packages the test command needs, and why:
#   iproute2, iputils-ping    the vif tests' namespaces, bridges and peer
#   binutils                  as/ld/objcopy for the assembly test guests
#                             (32-bit PVH, 64-bit HVM, classic PV)
#   xenstore-utils            Debian's xenstore-read/write/ls against kxend
#   xen-utils-4.17            test-xenstore, verify-stream-v2 (the saved
#                             streams), the C xenstored (benchmark), and
#                             pygrub (the bootloader tests)
#   busybox-static, e2fsprogs the Linux guests' root image and initramfs; busybox nc is the
#                             stream peer in linux_pvh's migration
#   linux-image-amd64, xz-utils  Debian's stock kernel (HVM slow test)
#   linux-source-6.1, build-essential, flex, bison, bc, libelf-dev
#                             the patched PVH guest kernel (slow test)
KXEN_TEST_PACKAGES=(
    iproute2 iputils-ping binutils xenstore-utils xen-utils-4.17
    busybox-static e2fsprogs linux-image-amd64 xz-utils
    linux-source-6.1 build-essential flex bison bc libelf-dev
)
# Building and running the demo: a C toolchain for the Rust linker and
# the build scripts; Debian's kernel and its modules, busybox-static and
# e2fsprogs for the PV guest's initramfs and ext4 root; iproute2 for the
# network namespace kxend runs in (the guest pings with busybox's ping).
KXEN_DEMO_PACKAGES=(build-essential linux-image-amd64 busybox-static e2fsprogs iproute2)

# kxen_install_missing WHAT PACKAGE...: install the packages that dpkg does
# not list as installed.
kxen_install_missing() {
    local what=$1
    shift
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    echo "kxen: installing ${missing[*]} (needed by $what)"
    local sudo_cmd=()
    [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get update -qq >/dev/null &&
        "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        { echo "kxen: apt-get install ${missing[*]} failed" >&2; return 1; }
}
