#!/usr/bin/env bash
# Build the kxen PVH guest kernel from Debian's linux-source-6.1.
#
# Prints the path of the built vmlinux on stdout (progress goes to stderr).
# The result is cached under $KXEN_CACHE_DIR (default ~/.cache/kxen) in a
# directory keyed by a hash of the patches, the config fragment, this
# script and the source package's version, so a machine builds it once and
# any change to the inputs builds it again.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache_root="${KXEN_CACHE_DIR:-$HOME/.cache/kxen}/linux"
fragment="$here/kxen-pvh.config"
log() { echo "kxen-linux: $*" >&2; }

need_pkgs=()
for pkg in linux-source-6.1 build-essential flex bison bc libelf-dev xz-utils; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if ((${#need_pkgs[@]})); then
    log "installing ${need_pkgs[*]}"
    sudo_cmd=""
    [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_pkgs[@]}" >&2
fi

src_version="$(dpkg-query -W -f='${Version}' linux-source-6.1)"
tarball=/usr/src/linux-source-6.1.tar.xz
key="$( { echo "$src_version"; cat "$here"/patches/*.patch "$fragment" "$0"; } | sha256sum | cut -c1-16)"
out="$cache_root/$key"
if [ -f "$out/vmlinux" ]; then
    log "cached: $out/vmlinux (linux-source-6.1 $src_version)"
    echo "$out/vmlinux"
    exit 0
fi

work="$cache_root/build-$key"
rm -rf "$work"
mkdir -p "$work"
log "unpacking linux-source-6.1 $src_version"
tar -xf "$tarball" -C "$work" --strip-components=1
cd "$work"
for p in "$here"/patches/*.patch; do
    log "applying $(basename "$p")"
    patch -p1 --quiet --forward < "$p"
done

log "configuring (tinyconfig + $(basename "$fragment"))"
make -s tinyconfig >&2
scripts/kconfig/merge_config.sh -m .config "$fragment" >/dev/null
make -s olddefconfig >&2
# Every option the fragment asks for must have survived olddefconfig;
# a silently dropped one would give a kernel that boots without a driver.
missing=0
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=n) opt="${line%%=*}"
            if grep -q "^$opt=" .config; then log "wanted $opt off"; missing=1; fi ;;
        CONFIG_*) if ! grep -qx "$line" .config; then log "config lost: $line"; missing=1; fi ;;
    esac
done < "$fragment"
[ "$missing" = 0 ] || { log "config fragment not satisfied"; exit 1; }

log "building vmlinux with $(nproc) jobs"
make -s -j"$(nproc)" vmlinux >&2
mkdir -p "$out"
cp .config "$out/config"
objcopy --strip-debug vmlinux "$out/vmlinux.tmp"
mv "$out/vmlinux.tmp" "$out/vmlinux"
cd /
rm -rf "$work"
log "built $out/vmlinux"
echo "$out/vmlinux"
