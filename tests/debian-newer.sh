# shellcheck shell=bash
# Sourced by tests that need a program from a newer Debian suite without installing it system-wide, or
# (debian_kernel) this suite's kernel package unpacked:
# `debian_newer SUITE PACKAGE` downloads the package from the machine's own Debian mirror through a private
# apt configuration, unpacks it with dpkg -x under /var/tmp/ic-debian-newer/SUITE/PACKAGE (kept between
# runs) and prints that folder; it prints nothing and returns 1 when the mirror cannot be reached.
debian_newer() {
  local suite=$1 pkg=$2 root=/var/tmp/ic-debian-newer
  local apt=$root/apt-$suite dir=$root/$suite/$pkg
  if [ -d "$dir/usr" ]; then echo "$dir"; return 0; fi
  local mirror
  mirror=$(grep -rhoE 'https?://[^ ]*debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | grep -v security | head -1 | tr -d ' ')
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$root/dl-$suite"
  echo "deb $mirror $suite main" >"$apt/sources.list"
  local opts=(-o Dir::Etc::sourcelist="$apt/sources.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$apt/lists"
    -o Dir::Cache="$apt/cache" -o APT::Sandbox::User=root)
  timeout 300 apt-get "${opts[@]}" update -qq >/dev/null 2>&1 || return 1
  rm -f "$root/dl-$suite"/*.deb
  (cd "$root/dl-$suite" && timeout 300 apt-get "${opts[@]}" download "$pkg" >/dev/null 2>&1) || return 1
  mkdir -p "$dir" && dpkg -x "$root/dl-$suite"/"$pkg"_*.deb "$dir" && rm -f "$root/dl-$suite"/*.deb && echo "$dir"
}

# `debian_kernel` prints a folder holding this suite's kernel package unpacked (boot/vmlinuz-*,
# lib/modules/*), downloaded with apt-get download and kept under /var/tmp/ic-e2e-kernel between runs;
# returns 1 when it cannot be had.
debian_kernel() {
  local cache=/var/tmp/ic-e2e-kernel pkg
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [ -n "$pkg" ] || return 1
  if [ ! -d "$cache/$pkg/boot" ]; then
    mkdir -p "$cache/dl" && chmod 777 "$cache/dl"
    (cd "$cache/dl" && rm -f ./*.deb && timeout 300 apt-get download "$pkg" >/dev/null 2>&1 &&
      dpkg -x ./*.deb "$cache/$pkg" && rm -f ./*.deb) || return 1
  fi
  echo "$cache/$pkg"
}
