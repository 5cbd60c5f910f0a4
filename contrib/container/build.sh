#!/usr/bin/env bash
# contrib/container/build.sh OUT [TAG] — the image-cache container image as an OCI image layout in OUT
# (`podman pull oci:OUT:TAG`, `skopeo copy oci:OUT:TAG docker://…`), without Nix: the release binary
# (built if missing), exactly the shared libraries it links (ldd) and their loader, the CA bundle, a
# non-root user (65532), /var/lib/image-cache as a volume it owns, and contrib/container/config.toml as
# the built-in config (0.0.0.0:8080, registry mirror only, names through /etc/resolv.conf). The flake's
# `packages.container` builds the same image with nixpkgs' dockerTools. TAG defaults to the crate version.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 OUT [TAG]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=$1
tag=${2:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)}
bin=${IMAGE_CACHE_BIN:-$repo/target/release/image-cache}
if [ ! -x "$bin" ]; then
  (cd "$repo" && cargo build --release --locked -q)
fi
ca=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[ -r "$ca" ] || { echo "$0: no CA bundle at $ca (apt-get install ca-certificates, or set CA_BUNDLE)" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
install -D -m 0755 "$bin" "$root/usr/local/bin/image-cache"
# Each library at the path the loader will look for it: the binary's and the loader's own.
ldd "$bin" | awk '/=> \//{print $3} /^\t\/.*ld-linux/{print $1}' | while read -r lib; do
  install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
done
install -D -m 0644 "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
install -D -m 0644 "$here/config.toml" "$root/etc/image-cache/config.toml"
printf 'root:x:0:0:root:/root:/sbin/nologin\nimage-cache:x:65532:65532:image-cache:/var/lib/image-cache:/sbin/nologin\n' \
  >"$root/etc/passwd"
printf 'root:x:0:\nimage-cache:x:65532:\n' >"$root/etc/group"
mkdir -p "$root/var/lib/image-cache" "$root/tmp"

case $(uname -m) in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) arch=$(uname -m) ;;
esac
python3 "$here/layout.py" "$root" "$out" "$tag" "$arch"
echo "$out: image-cache:$tag ($arch), $(du -sh "$out" | cut -f1)"
