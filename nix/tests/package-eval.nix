# nix/package.nix evaluated with a recording stand-in for nixpkgs' lib.fileset and buildRustPackage (builtins
# only: nix 2.8 cannot evaluate lib.fileset, which needs builtins.readFileType). Checks what nix 2.8 cannot
# build: the source is the git-tracked files (a build in a checkout must not take target/ or other ignored
# output in) under exactly nix/source-paths.nix, and the check phase's flags are nix/cargo-test.nix's.
#   nix-instantiate --eval --strict --json nix/tests/package-eval.nix   → { failures = [ … ]; }
let
  lib = {
    fileset = {
      gitTracked = path: { op = "gitTracked"; path = toString path; };
      intersection = a: b: { op = "intersection"; args = [ a b ]; };
      unions = xs: { op = "unions"; args = map toString xs; };
      toSource = { root, fileset }: { root = toString root; inherit fileset; };
    };
    licenses.mit = "mit";
    platforms.linux = [ "x86_64-linux" ];
  };
  rustPlatform.buildRustPackage = attrs: attrs;
  pkg = import ../package.nix { inherit lib rustPlatform; };
  repo = toString ../..;
  check = name: cond: if cond then [ ] else [ name ];
  tracked = pkg.src.fileset.args or [ ];
in
{
  failures =
    check "the source is rooted at the repository" (pkg.src.root == repo)
    ++ check "the source is an intersection with the git-tracked files"
      (pkg.src.fileset.op == "intersection"
        && builtins.head tracked == (if builtins.pathExists ../../.git then { op = "gitTracked"; path = repo; } else repo))
    ++ check "…of exactly the paths of nix/source-paths.nix"
      (builtins.elemAt tracked 1 == { op = "unions"; args = map toString (import ../source-paths.nix); })
    ++ check "cargoTestFlags and checkFlags come from nix/cargo-test.nix"
      (pkg.cargoTestFlags == (import ../cargo-test.nix).cargoTestFlags && pkg.checkFlags == (import ../cargo-test.nix).checkFlags)
    ++ check "crates come from Cargo.lock" (toString pkg.cargoLock.lockFile == repo + "/Cargo.lock");
}
