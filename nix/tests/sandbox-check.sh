#!/usr/bin/env bash
# nix/tests/sandbox-check.sh — replays the check phase of nix/package.nix (buildRustPackage's cargoCheckHook) the way
# the Nix build sandbox runs it, with the real cargo and the real tests:
#   - the source is a copy of exactly the package's fileset (git-tracked files under the paths of
#     nix/source-paths.nix) at /build/source; crates come from a vendored directory as importCargoLock makes
#     them (/build/cargo-vendor-dir, source replacement in /build/.cargo/config.toml), `--offline`;
#   - a chroot whose /etc holds only passwd, group and hosts as Nix writes them (no resolv.conf, no
#     nsswitch.conf, no CA bundle), a writable /tmp, a /dev of null, zero, full, random, urandom and tty, a
#     fresh /proc, /bin/sh and nothing else in /bin; no /home, no /root, no /usr/bin;
#   - new network (loopback only, up), mount, PID, UTS (hostname `localhost`) and IPC namespaces;
#   - an unprivileged user: uid 1000 (`nixbld`), gid 100, no capabilities, in a user namespace that maps only
#     itself (so /, /etc and everything not the build's own are read-only to it);
#   - the environment stdenv gives a builder: HOME=/homeless-shelter (absent), TMPDIR=TEMPDIR=TMP=TEMP=
#     NIX_BUILD_TOP=/build, SSL_CERT_FILE=NIX_SSL_CERT_FILE=/no-cert-file.crt, NIX_BUILD_CORES, and a PATH of
#     stdenv's tools (coreutils, findutils, diffutils, sed, grep, awk, tar, gzip, bzip2, xz, make, bash, patch,
#     file, the C compiler and binutils) plus cargo and rustc: no python3, curl, openssl, dig, ip, unshare;
#   - the command of cargoCheckHook (nixpkgs 25.11): cargo test -j N --profile release --offline
#     <cargoTestFlags> -- --test-threads=N <checkFlags>, the flags read from nix/cargo-test.nix, the very file
#     nix/package.nix takes them from.
# Deviations, none of which a test can observe through its own behaviour: `--target <triple>` is left out (it
# only moves the artifacts under target/<triple>/, and keeping target/release lets the replay reuse the
# dependencies the host's release build already compiled); the toolchain and C libraries are bind-mounted
# read-only from the host (Nix bind-mounts them from /nix/store), and the host's /usr/bin is reachable under
# /usr/.host-bin for the tool links (nothing on PATH leads there but the tools listed above).
#
# Usage: nix/tests/sandbox-check.sh [--canary]    (root; exit 0 when every test passes in the sandbox)
#   --canary  instead of the project's tests, a small crate whose tests each need one thing the sandbox
#             withholds (/etc/resolv.conf, a CA bundle, HOME, python3 on PATH, a non-loopback route, root):
#             the replay must report every one of them failed and nothing else (the replay's own check).
# The vendored crates and the sandbox's target directory are kept in target/nix-sandbox/ between runs.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
[ "$(id -u)" = 0 ] || { echo "SKIPPED sandbox replay: needs root (namespaces, chroot)"; exit 0; }
mode=${1:-project}

cache=$repo/target/nix-sandbox
W=$(mktemp -d /tmp/ic-sandbox.XXXXXX)
cleanup() {
  # The mounts live in the replay's own mount namespace and vanish with it; only files remain.
  rm -rf "$W" 2>/dev/null || true
}
[ -n "${KEEP:-}" ] || trap cleanup EXIT
root=$W/root
mkdir -p "$root"/{build,etc,tmp,dev,proc,bin,toolbin,rust,usr/.host-bin} "$cache"
chmod 1777 "$root/tmp"

# --- the source: exactly the fileset, as lib.fileset.toSource + gitTracked give it -------------------------
src=$root/build/source
if [ "$mode" = --canary ]; then
  mkdir -p "$src/src"
  cat >"$src/Cargo.toml" <<'TOML'
[package]
name = "sandbox-canary"
version = "0.1.0"
edition = "2021"
[lib]
path = "src/lib.rs"
TOML
  cat >"$src/src/lib.rs" <<'RUST'
//! Each test needs one thing the Nix build sandbox withholds; the replay must fail exactly these.
#[cfg(test)]
mod tests {
    #[test]
    fn needs_resolv_conf() {
        std::fs::read_to_string("/etc/resolv.conf").unwrap();
    }
    #[test]
    fn needs_a_ca_bundle() {
        let file = std::env::var("SSL_CERT_FILE").unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".into());
        std::fs::read(file).unwrap();
    }
    #[test]
    fn needs_home() {
        assert!(std::path::Path::new(&std::env::var("HOME").unwrap()).is_dir());
    }
    #[test]
    fn needs_python3() {
        std::process::Command::new("python3").arg("-c").arg("pass").status().unwrap();
    }
    #[test]
    fn needs_a_route_out() {
        std::net::UdpSocket::bind("0.0.0.0:0").unwrap().connect("192.0.2.1:53").unwrap();
    }
    #[test]
    fn needs_root() {
        let out = std::process::Command::new("id").arg("-u").output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    }
    #[test]
    fn has_what_the_sandbox_gives() {
        // Loopback, /etc/hosts's localhost, a writable TMPDIR and /tmp: the replay must not withhold these.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        std::net::TcpListener::bind("[::1]:0").unwrap();
        use std::net::ToSocketAddrs;
        assert!(("localhost", 80).to_socket_addrs().unwrap().next().is_some());
        assert_eq!(std::env::temp_dir(), std::path::Path::new("/build"));
        std::fs::write(std::env::temp_dir().join("x"), b"x").unwrap();
        std::fs::write("/tmp/x", b"x").unwrap();
    }
}
RUST
  printf '# This file is automatically @generated by Cargo.\nversion = 4\n\n[[package]]\nname = "sandbox-canary"\nversion = "0.1.0"\n' >"$src/Cargo.lock"
  test_flags=() check_flags=()
  vendor_from=""
else
  mapfile -t paths < <(nix-instantiate --eval --strict --json \
    --expr 'map (p: baseNameOf (toString p)) (import ./nix/source-paths.nix)' 2>/dev/null \
    | python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)))')
  git ls-files -z -- "${paths[@]}" | (
    while IFS= read -r -d '' f; do mkdir -p "$src/$(dirname "$f")"; cp -p "$f" "$src/$f"; done)
  flags=$(nix-instantiate --eval --strict --json nix/cargo-test.nix 2>/dev/null)
  mapfile -t test_flags < <(python3 -c 'import json, sys; print("\n".join(json.loads(sys.argv[1])["cargoTestFlags"]))' "$flags")
  mapfile -t check_flags < <(python3 -c 'import json, sys; print("\n".join(json.loads(sys.argv[1])["checkFlags"]))' "$flags")
  vendor_from=$repo
fi

# --- crates: a vendored directory, as importCargoLock makes one from Cargo.lock -----------------------------
if [ -n "$vendor_from" ]; then
  lock_sum=$(sha256sum Cargo.lock | cut -c1-16)
  if [ ! -f "$cache/vendor-$lock_sum/.done" ]; then
    rm -rf "$cache"/vendor-*
    cargo vendor --locked --versioned-dirs -q "$cache/vendor-$lock_sum" >/dev/null
    chmod -R a+rX,go-w "$cache/vendor-$lock_sum" # world-readable, as a store path is
    touch "$cache/vendor-$lock_sum/.done"
  fi
  vendor=$cache/vendor-$lock_sum
else
  vendor=""
fi
mkdir -p "$root/build/.cargo" "$root/build/cargo-vendor-dir"
cat >"$root/build/.cargo/config.toml" <<'TOML'
[source.crates-io]
replace-with = "vendored-sources"

[source.vendored-sources]
directory = "/build/cargo-vendor-dir"
TOML

# --- the sandbox's target directory, seeded with the host's release dependencies ---------------------------
if [ "$mode" = --canary ]; then target=$W/canary-target; else target=$cache/target; fi
mkdir -p "$target/release" "$src/target"
if [ "$mode" != --canary ] && [ -d target/release/deps ] && [ ! -d "$target/release/deps" ]; then
  # Dependencies keep their artifacts across a different workspace path and a vendored source (cargo keys
  # them by package id, features and profile): only this crate is compiled in the sandbox.
  cp -a target/release/deps target/release/build target/release/.fingerprint "$target/release/"
fi

# --- /etc, /dev, /bin/sh and the tools on PATH ---------------------------------------------------------------
printf 'root:x:0:0:Nix build user:/build:/noshell\nnixbld:x:1000:100:Nix build user:/build:/noshell\nnobody:x:65534:65534:Nobody:/:/noshell\n' >"$root/etc/passwd"
printf 'root:x:0:\nnixbld:!:100:\nnogroup:x:65534:\n' >"$root/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$root/etc/hosts"
chmod 0555 "$root/etc"
for d in null zero full random urandom tty; do touch "$root/dev/$d"; done
mkdir -p "$root/dev/shm" "$root/dev/pts"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"; ln -s /proc/self/fd/1 "$root/dev/stdout"; ln -s /proc/self/fd/2 "$root/dev/stderr"
sh_host=$(command -v busybox || true)
[ -n "$sh_host" ] || sh_host=$(readlink -f /bin/sh)
cp "$sh_host" "$root/bin/sh"
[ "$(basename "$sh_host")" = busybox ] && ln -sf sh "$root/bin/busybox"
tools=()
for pkg in coreutils findutils diffutils sed grep mawk gawk tar gzip bzip2 xz-utils make bash patch file binutils cpp gcc; do
  mapfile -t -O "${#tools[@]}" tools < <(dpkg -L "$pkg" 2>/dev/null | grep -E '^(/usr)?/bin/[^/]+$' || true)
done
for t in "${tools[@]}" /usr/bin/cc /usr/bin/awk /usr/bin/gcc /usr/bin/as /usr/bin/ld /usr/bin/ar; do
  [ -e "$t" ] || continue
  real=$(readlink -f "$t")
  case $real in /usr/bin/*) ln -sf "/usr/.host-bin/${real#/usr/bin/}" "$root/toolbin/$(basename "$t")" ;; esac
done
sysroot=$(rustc --print sysroot)
for t in cargo rustc rustdoc; do ln -sf "/rust/bin/$t" "$root/toolbin/$t"; done
mkdir -p "$root/usr/lib" "$root/usr/lib64" "$root/usr/libexec" "$root/usr/include" "$root/usr/x86_64-linux-gnu" "$root/usr/share/misc"
ln -s usr/lib "$root/lib"; ln -s usr/lib64 "$root/lib64"
cores=$(nproc)
# The build user: a host uid of its own (Nix's nixbld1), uid 1000 inside its user namespace. What it owns
# is /build, its target directory and /tmp; everything else (/, /etc, the bind mounts) belongs to root,
# which its namespace does not map: read-only to it, as in Nix's sandbox.
build_uid=30001 build_gid=30000
chmod 755 "$W" "$root"
chown -R $build_uid:$build_gid "$root/build" "$target"

cat >"$W/check.sh" <<SH
set -euo pipefail
# As root in the replay's own namespaces: the mounts, the loopback, the host name; then the build user.
mount --make-rprivate /
bind() { mount --bind "\$1" "\$2"; mount -o remount,bind,ro "\$2"; }
for d in null zero full random urandom tty; do mount --bind /dev/\$d "$root/dev/\$d"; done
mount -t tmpfs -o mode=1777 shm "$root/dev/shm"
mount -t proc proc "$root/proc"
bind /usr/bin "$root/usr/.host-bin"
for d in lib lib64 libexec include x86_64-linux-gnu share/misc; do if [ -d /usr/\$d ]; then bind /usr/\$d "$root/usr/\$d"; fi; done
bind "$sysroot" "$root/rust"
if [ -n "$vendor" ]; then bind "$vendor" "$root/build/cargo-vendor-dir"; fi
mount --bind "$target" "$src/target"
ip link set lo up 2>/dev/null || busybox ip link set lo up
hostname localhost
domainname '(none)' 2>/dev/null || true
exec setpriv --reuid=$build_uid --regid=$build_gid --clear-groups \\
  unshare --user --map-user=1000 --map-group=100 --root="$root" --wd=/build/source \\
  /toolbin/env -i HOME=/homeless-shelter PATH=/toolbin NIX_BUILD_TOP=/build TMPDIR=/build TEMPDIR=/build \\
    TMP=/build TEMP=/build NIX_BUILD_CORES=$cores NIX_STORE=/nix/store SSL_CERT_FILE=/no-cert-file.crt \\
    NIX_SSL_CERT_FILE=/no-cert-file.crt TERM=xterm-256color SOURCE_DATE_EPOCH=315532800 \\
    /toolbin/bash -c 'set -x; exec cargo test -j $cores --profile release --offline \$0 "\$@"' \\
      ${test_flags[*]:+${test_flags[*]}} -- --test-threads=$cores ${check_flags[*]:+${check_flags[*]}}
SH
echo "sandbox replay: cargo test -j $cores --profile release --offline ${test_flags[*]:-} -- --test-threads=$cores ${check_flags[*]:-}"
set +e
unshare --mount --net --pid --fork --uts --ipc bash "$W/check.sh" >"$W/out.log" 2>&1
rc=$?
set -e

if [ "$mode" = --canary ]; then
  failed=$( (grep -oE '^    tests::[a-z0-9_]+' "$W/out.log" | sed 's/ *tests:://' | sort | tr "\n" " ") || true)
  want="needs_a_ca_bundle needs_a_route_out needs_home needs_python3 needs_resolv_conf needs_root "
  if [ "$failed" = "$want" ]; then
    echo "PASS sandbox replay withholds what Nix's sandbox withholds (resolv.conf, CA bundle, HOME, python3, routes, root) and gives loopback, localhost and /build"
  else
    echo "FAIL sandbox replay canary: failed [$failed], expected [$want]"; tail -40 "$W/out.log"; exit 1
  fi
  exit 0
fi
grep -E '^test result:|^     Running' "$W/out.log" | sed 's/^/  /'
if [ $rc = 0 ]; then
  echo "PASS sandbox replay: nix/package.nix's check phase passes in a replayed Nix build sandbox"
else
  echo "FAIL sandbox replay: nix/package.nix's check phase fails in a replayed Nix build sandbox (exit $rc):"
  grep -E '^(test .* FAILED|failures:|    [a-z_:]+$|---- |error)' "$W/out.log" | head -60
  sed -n '/^failures:$/,/^test result/p' "$W/out.log" | head -150
  exit 1
fi
