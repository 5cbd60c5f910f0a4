# The `pkgs` the VM tests' nodes are evaluated with when nix/tests/vm-replay.py runs them: every function a
# node calls builds a real store path with the same contents, from this machine's programs instead of
# nixpkgs' (nix 2.8, sandbox off, builders are bash scripts with /usr/bin on PATH). runCommand runs the
# test's own build script; writeText, writeScript, writeTextDir write what the test wrote; makeInitrd packs
# the closure of its contents (exportReferencesGraph, as nixpkgs' does); the kernel and its modules are
# Debian's (from `debianKernel`, a folder with boot/vmlinuz-* and lib/modules/*, unpacked by the replay).
# A program package is a folder of links to the Debian binaries that provide the same commands.
#   vm-nodes.nix --arg replayPkgs 'import ./vm-replay-pkgs.nix { debianKernel = "…"; crictl = "…"; }'
{ debianKernel ? null, crictl ? null, containerd ? null }:
let
  inherit (builtins) concatStringsSep currentSystem derivation removeAttrs;
  shell = name: script: env: derivation ({
    inherit name;
    system = currentSystem;
    builder = "/bin/bash";
    args = [ "-c" ("set -euo pipefail\n" + script) ];
    PATH = "/usr/bin:/bin:/usr/sbin:/sbin";
  } // env);
  # A package of links to the host's programs (`from`: a folder to look in first, for programs unpacked
  # from a newer Debian suite).
  programs = name: commands: { from ? "" }: shell name ''
    mkdir -p $out/bin
    for c in ${concatStringsSep " " commands}; do
      p=""
      if [ -n "${from}" ] && [ -x "${from}/$c" ]; then p="${from}/$c"; else p=$(command -v "$c" || true); fi
      [ -n "$p" ] || { echo "vm-replay-pkgs: $c not found on this machine (package ${name})" >&2; exit 1; }
      ln -s "$(readlink -f "$p")" "$out/bin/$c"
    done
  '' { };
  text = name: content: exe: shell name ''
    printf %s "$content" > $out
    ${if exe then "chmod +x $out" else ""}
  '' { inherit content; };
  kernel = shell "linux" ''
    mkdir -p $out/lib
    cp ${debianKernel}/boot/vmlinuz-* $out/bzImage
    cp -r ${debianKernel}/lib/modules $out/lib/modules
  '' { };
in
{
  curl = programs "curl" [ "curl" ] { };
  dnsutils = programs "dnsutils" [ "dig" "host" "nslookup" ] { };
  python3 = programs "python3" [ "python3" ] { };
  skopeo = programs "skopeo" [ "skopeo" ] { };
  openssl = programs "openssl" [ "openssl" ] { };
  # crictl is not packaged for Debian: the replay's own CRI client (nix/tests/vm-replay-crictl.py) speaks
  # runtime.v1's ImageService to the node's real containerd.
  cri-tools = shell "cri-tools" ''
    mkdir -p $out/bin
    ln -s ${crictl} $out/bin/crictl
  '' { };
  containerd = programs "containerd" [ "containerd" "ctr" "containerd-shim-runc-v2" ] { from = containerd; };

  writeText = name: content: text name content false;
  writeScript = name: content: text name content true;
  writeShellScript = name: content: text name "#!/bin/bash\n${content}" true;
  writeTextDir = path: content: shell (baseNameOf path) ''
    mkdir -p "$out/$(dirname "$path")"
    printf %s "$content" > "$out/$path"
  '' { inherit path content; };

  # The test's own script, with the packages of nativeBuildInputs on PATH.
  runCommand = name: env: script: shell name ''
    export PATH="${concatStringsSep ":" (map (p: "${p}/bin") (env.nativeBuildInputs or [ ]))}:$PATH"
    cd "$(mktemp -d)"
    ${script}
  '' (removeAttrs env [ "nativeBuildInputs" ]);

  linuxPackages.kernel = kernel;

  # The kernel's modules named (and what they need, by modinfo), uncompressed, with a modules.dep for
  # busybox's modprobe: $out/lib/modules/<version>/.
  makeModulesClosure = { kernel, rootModules, firmware ? [ ] }: shell "modules" ''
    src=$(echo ${kernel}/lib/modules/*); version=$(basename "$src")
    dst=$out/lib/modules/$version; mkdir -p "$dst"
    todo="${concatStringsSep " " rootModules}"; seen=" "
    while [ -n "$todo" ]; do
      set -- $todo; m=$1; shift; todo="$*"
      case "$seen" in *" $m "*) continue ;; esac
      seen="$seen$m "
      f=$(find "$src/kernel" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -1)
      if [ -z "$f" ]; then
        grep -qE "/$m\.ko" "$src/modules.builtin" && continue
        echo "module $m not found" >&2; exit 1
      fi
      rel=''${f#$src/}; rel=''${rel%.xz}; rel=''${rel%.zst}
      mkdir -p "$dst/$(dirname "$rel")"
      case "$f" in
        *.xz) xz -dc "$f" > "$dst/$rel" ;;
        *.zst) zstd -qdc "$f" > "$dst/$rel" ;;
        *) cp "$f" "$dst/$rel" ;;
      esac
      for d in $(modinfo -F depends "$dst/$rel" | tr , ' '); do todo="$todo $d"; done
    done
    cp "$src/modules.builtin" "$src/modules.order" "$dst/" 2>/dev/null || true
    depmod -b "$out" "$version"
  '' { };

  # The closure of every object (exportReferencesGraph) copied in, each `symlink` pointing at its object.
  makeInitrd = { contents, compressor ? "gzip" }: shell "initrd" ''
    root=$(mktemp -d)
    for f in closure-*; do
      grep -E '^/nix/store/[^/]+$' "$f" | grep -v '\.drv$' | while read -r p; do
        [ -e "$p" ] || continue
        mkdir -p "$root/nix/store"; [ -e "$root$p" ] || cp -a "$p" "$root$p"
      done
    done
    ${concatStringsSep "\n" (map (c: ''
      mkdir -p "$root$(dirname "${c.symlink}")"; ln -sfn "${c.object}" "$root${c.symlink}"
    '') contents)}
    mkdir -p $out
    (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1 > $out/initrd)
  '' {
    exportReferencesGraph = builtins.concatLists
      (builtins.genList (i: [ "closure-${toString i}" (builtins.elemAt contents i).object ]) (builtins.length contents));
  };

  pkgsStatic.busybox = shell "busybox" ''
    mkdir -p $out/bin
    cp /bin/busybox $out/bin/busybox
    for a in $($out/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$out/bin/$a"; done
  '' { };
}
