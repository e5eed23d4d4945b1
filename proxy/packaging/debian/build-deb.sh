#!/bin/sh
# Builds the komugate Debian package from an already-built binary with
# dpkg-deb alone (no debhelper, no cargo-deb): everything it needs is in
# dpkg and binutils, present wherever the binary was linked.
#
#   cargo build --release -p komugate
#   proxy/packaging/debian/build-deb.sh [--binary target/release/komugate] [--out target/debian]
#       [--compression xz|gzip|none]
#
# Prints the path of the .deb. The package: /usr/bin/komugate, the hardened
# unit komugate.service, the komugate system user (sysusers.d), the
# production-shaped /etc/komugate/komugate.toml and a starter
# /etc/komugate/policy.toml (both conffiles), docs and the example policy.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
binary="$repo/target/release/komugate"
out="$repo/target/debian"
compression=xz

while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --compression) compression=$2; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "build-deb.sh: unknown argument $1 (use --binary FILE, --out DIR, --compression xz|gzip|none)" >&2; exit 2 ;;
    esac
done

[ -x "$binary" ] || { echo "build-deb.sh: no executable komugate at $binary; run \`cargo build --release -p komugate\` or pass --binary FILE" >&2; exit 1; }
for tool in dpkg-deb dpkg objdump strip; do
    command -v "$tool" >/dev/null 2>&1 || { echo "build-deb.sh: $tool not found (apt-get install dpkg binutils)" >&2; exit 1; }
done

version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml")
[ -n "$version" ] || { echo "build-deb.sh: no version in [workspace.package] of $repo/Cargo.toml" >&2; exit 1; }
arch=$(dpkg --print-architecture)

# Shared libraries: only the C runtime. A new one must be added to Depends.
# systemd runs the unit and creates the user (systemd-sysusers); procps has
# /bin/kill (ExecReload); init-system-helpers has deb-systemd-helper.
for lib in $(objdump -p "$binary" | awk '$1 == "NEEDED" { print $2 }'); do
    case "$lib" in
        libc.so.6|libm.so.6|libgcc_s.so.1|ld-linux*) ;;
        *) echo "build-deb.sh: $binary needs $lib; add its Debian package to Depends in $0" >&2; exit 1 ;;
    esac
done
glibc=$(objdump -T "$binary" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
[ -n "$glibc" ] || { echo "build-deb.sh: cannot read the glibc versions $binary needs (objdump -T)" >&2; exit 1; }

mkdir -p "$out"
root=$(mktemp -d "$out/root.XXXXXX")
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"
umask 022

install -D -m 0755 "$binary" "$root/usr/bin/komugate"
# Function names stay (backtraces); line tables go (half the size).
strip --strip-debug "$root/usr/bin/komugate"
install -D -m 0644 "$here/komugate.service" "$root/usr/lib/systemd/system/komugate.service"
install -D -m 0644 "$here/sysusers.conf" "$root/usr/lib/sysusers.d/komugate.conf"
install -D -m 0644 "$here/komugate.toml" "$root/etc/komugate/komugate.toml"
install -D -m 0644 "$here/policy.toml" "$root/etc/komugate/policy.toml"
doc="$root/usr/share/doc/komugate"
install -D -m 0644 "$repo/README.md" "$doc/README.md"
install -D -m 0644 "$here/copyright" "$doc/copyright"
for f in SECURITY.md deploy-inspection-ca.md; do
    install -D -m 0644 "$repo/docs/$f" "$doc/$f"
done
mkdir -p "$doc/examples"
cp -R "$repo/examples/." "$doc/examples/"
find "$doc/examples" -type d -exec chmod 0755 {} +
find "$doc/examples" -type f -exec chmod 0644 {} +

mkdir -p "$root/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$here/$script" "$root/DEBIAN/$script"
done
printf '/etc/komugate/komugate.toml\n/etc/komugate/policy.toml\n' > "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: komugate
Version: $version
Architecture: $arch
Maintainer: ${KOMUGATE_DEB_MAINTAINER:-komugate developers <komugate@localhost>}
Installed-Size: $size
Depends: libc6 (>= $glibc), libgcc-s1, systemd, init-system-helpers, procps
Section: net
Priority: optional
Description: secure web gateway / ZTNA edge proxy for school laptops
 komugate decides by device certificate, group and location what each
 laptop may reach, filters by URL category (UT1 / squidGuard lists),
 inspects TLS where the policy says so, pins school systems to a fixed
 egress address and logs every request for a year.
 .
 This package runs it as the hardened systemd service komugate.service.
CONTROL

deb="$out/komugate_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"$compression" --build "$root" "$deb" >/dev/null
echo "$deb"
