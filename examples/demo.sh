#!/usr/bin/env bash
# Build kxen and boot Debian's own kernel (the installed linux-image-amd64,
# unmodified) as a classic PV guest through kxl: its boot on hvc0, a shell,
# a few commands typed for you (uname, the disk, the network), then a
# clean power-off. With a terminal on stdin you are left in the guest's
# shell instead (Ctrl-] detaches, `kxl destroy debian` ends it).
#
# Everything the guest runs comes from apt: the kernel and its modules,
# busybox-static for the root file system and the initramfs, e2fsprogs to
# make the ext4 image. kxend runs in a network namespace of its own, so the
# guest's bridge and its peer never touch the host's network.
# examples/demo-testguest.sh is the other demo: the kxen test guest
# checking every hypercall it can make.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=examples/prereqs.sh
. examples/prereqs.sh
kxen_install_missing "the demo" "${KXEN_DEMO_PACKAGES[@]}"
cargo build --release --workspace

release=$(ls /boot/vmlinuz-*-amd64 | sed 's|/boot/vmlinuz-||' | sort -V | tail -1)
[ -d "/lib/modules/$release" ] || { echo "demo: no modules for $release" >&2; exit 1; }
work=$(mktemp -d /tmp/kxen-demo.XXXXXX)
ns=kxen-demo-$$
export KXEN_STATE_DIR="$work/state" KXEN_RUN_DIR="$work/run"
mkdir -p "$KXEN_STATE_DIR" "$KXEN_RUN_DIR"
cleanup() {
    target/release/kxl destroy debian >/dev/null 2>&1 || true
    kill "$(cat "$KXEN_RUN_DIR/kxend.pid" 2>/dev/null)" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
# A signal ends the script through exit, so the cleanup runs.
trap 'exit 130' INT TERM HUP

# A busybox tree: root file system and initramfs share the layout.
busybox_tree() {
    mkdir -p "$1"/{bin,sbin,etc/init.d,proc,sys,dev,tmp,root,newroot}
    cp /bin/busybox "$1/bin/busybox"
    # Relative links: `busybox --install -s` would point them at this
    # host's path.
    local applet
    for applet in $(/bin/busybox --list); do
        [ -e "$1/bin/$applet" ] || ln -s busybox "$1/bin/$applet"
    done
    # Linux's orderly power-off (xenbus control/shutdown) runs /sbin/poweroff.
    for applet in init poweroff reboot halt; do
        ln -sf ../bin/busybox "$1/sbin/$applet"
    done
}

echo "demo: Debian kernel $release; building the root image and initramfs in $work"
busybox_tree "$work/root"
cat > "$work/root/etc/inittab" <<'TAB'
::sysinit:/etc/init.d/rcS
hvc0::respawn:/bin/sh
::shutdown:/bin/umount -a -r
TAB
cat > "$work/root/etc/init.d/rcS" <<'RCS'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
ip link set lo up
ip link set eth0 up
ip addr add 10.99.0.2/24 dev eth0
echo "Debian's kernel as a kxen PV guest: type commands, Ctrl-] detaches"
RCS
chmod 755 "$work/root/etc/init.d/rcS"
mkfs.ext4 -q -F -L debian-demo -d "$work/root" "$work/root.ext4" 64M

busybox_tree "$work/initrd"
mods=(kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/crypto/crc32c_generic.ko
      kernel/fs/jbd2/jbd2.ko kernel/fs/ext4/ext4.ko
      kernel/drivers/block/xen-blkfront.ko kernel/drivers/net/xen-netfront.ko)
mkdir -p "$work/initrd/lib/modules"
{
    printf '#!/bin/sh\nmount -t proc proc /proc\nmount -t sysfs sysfs /sys\nmount -t devtmpfs devtmpfs /dev\n'
    for m in "${mods[@]}"; do
        cp "/lib/modules/$release/$m" "$work/initrd/lib/modules/"
        echo "insmod /lib/modules/$(basename "$m")"
    done
    printf 'n=0; while [ ! -b /dev/xvda ] && [ $n -lt 600 ]; do n=$((n + 1)); usleep 100000; done\n'
    printf 'mount -t ext4 /dev/xvda /newroot || exec sh\nmount --move /dev /newroot/dev\numount /sys /proc\n'
    printf 'exec switch_root /newroot /sbin/init\n'
} > "$work/initrd/init"
chmod 755 "$work/initrd/init"
(cd "$work/initrd" && find . | busybox cpio -o -H newc 2>/dev/null) > "$work/initrd.cpio"

# kxend in its own network namespace, with the peer's address on the
# bridge it makes for the guest's vif.
ip netns add "$ns"
ip netns exec "$ns" target/release/kxend --foreground 2>"$work/kxend.log" &
for _ in $(seq 200); do [ -S "$KXEN_RUN_DIR/kxend.sock" ] && break; sleep 0.05; done
[ -S "$KXEN_RUN_DIR/kxend.sock" ] || { echo "demo: kxend did not start: $(cat "$work/kxend.log")" >&2; exit 1; }
cat > "$work/debian.cfg" <<CFG
name = "debian"
type = "pv"
kernel = "/boot/vmlinuz-$release"
ramdisk = "$work/initrd.cpio"
extra = "console=hvc0"
memory = 512
vcpus = 2
disk = [ '$work/root.ext4,raw,xvda,rw' ]
vif = [ 'mac=00:16:3e:00:00:99,bridge=kxdemo0' ]
on_poweroff = "destroy"
CFG
target/release/kxl create "$work/debian.cfg"
log="$KXEN_STATE_DIR/console/guest-debian.log"
# wait_for TEXT SECONDS: until the console log holds TEXT.
wait_for() {
    local deadline=$((SECONDS + $2))
    until grep -q "$1" "$log" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || { echo "demo: no \"$1\" on the console after $2 s" >&2; exit 1; }
        target/release/kxl domid debian >/dev/null 2>&1 || { echo "demo: the guest is gone (its console log: $log)" >&2; exit 1; }
        sleep 0.1
    done
}
# Follow the console while the demo types.
tail -n +1 -F "$log" 2>/dev/null &
follow=$!
wait_for "type commands" 600
ip netns exec "$ns" ip addr add 10.99.0.1/24 dev kxdemo0
ip netns exec "$ns" ip link set kxdemo0 up
n=0
type_line() { printf '%s\r\035' "$1" | target/release/kxl console debian >/dev/null; }
for cmd in "uname -a" "cat /proc/cmdline" "df -h /" "cat /sys/block/xvda/size" \
           "ip addr show eth0" "ping -c 2 10.99.0.1"; do
    type_line "$cmd; echo demo-done-$((++n))"
    wait_for "^demo-done-$n" 60
done
kill "$follow" 2>/dev/null || true
if [ -t 0 ]; then
    echo
    echo "demo: the guest's shell is yours (Ctrl-] detaches; kxl destroy debian ends it)"
    target/release/kxl console debian
    target/release/kxl destroy debian 2>/dev/null || true
else
    tail -n +1 -F "$log" 2>/dev/null &
    follow=$!
    target/release/kxl shutdown -w debian
    kill "$follow" 2>/dev/null || true
    echo
    echo "demo: the guest powered off cleanly"
fi
