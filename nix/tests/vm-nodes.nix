# The VM tests' node configurations, read without nixpkgs (builtins only, so CI can run it with nix 2.8):
# every definition a node makes must name an option nixpkgs declares (nix/tests/nixos-facts.json, or one
# of this flake's modules the node imports), and simple values must have the declared type. Prints, per
# test: its nodes' errors and the facts tests/vm-scripts.py checks the test script against, and the
# script itself.
#   nix-instantiate --eval --strict --json --read-write-mode nix/tests/vm-nodes.nix --arg dir ./nixos/tests
{ dir }:
let
  inherit (builtins)
    attrNames concatMap elem filter foldl' functionArgs genList head intersectAttrs isAttrs isBool
    isFunction isInt isList isPath isString length listToAttrs mapAttrs match readDir removeAttrs
    split stringLength substring tail typeOf;

  facts = builtins.fromJSON (builtins.readFile ./nixos-facts.json);
  splitPath = s: filter isString (split "[.]" s);
  declared = map (k: { path = splitPath k; type = facts.options.${k}; }) (attrNames facts.options);

  # Options of this flake's modules: the node may define anything below them once it imports the module.
  ownModules = {
    default = [ [ "services" "imageCache" ] ];
    containerd-mirror = [ [ "services" "imageCache" "containerdMirror" ] ];
  };
  fakeSelf.nixosModules = mapAttrs (name: _: { _imageCacheModule = name; }) ownModules;

  # What the node modules may call; anything else fails the evaluation, visibly.
  property = type: extra: content: { _type = type; inherit content; } // extra;
  lib = {
    mkForce = property "override" { priority = 50; };
    mkDefault = property "override" { priority = 1000; };
    mkOverride = priority: property "override" { inherit priority; };
    mkIf = condition: property "if" { inherit condition; };
    mkMerge = contents: { _type = "merge"; inherit contents; };
    mkBefore = property "order" { };
    mkAfter = property "order" { };
  };
  fakeDrv = name: { type = "derivation"; inherit name; outPath = "/nix/store/00000000000000000000000000000000-${name}"; };
  pkgs = listToAttrs (map (n: { name = n; value = fakeDrv n; })
    [ "curl" "dnsutils" "python3" "skopeo" "cri-tools" "openssl" "containerd" ]) // {
    writeText = n: _: fakeDrv n;
    writeTextDir = n: _: fakeDrv n;
    writeScript = n: _: fakeDrv n;
    runCommand = n: _: _: fakeDrv n;
    makeModulesClosure = _: fakeDrv "modules";
    makeInitrd = _: fakeDrv "initrd";
    linuxPackages.kernel = fakeDrv "kernel";
    pkgsStatic.busybox = fakeDrv "busybox";
  };

  # A module (function, path or attribute set) → { defs = [ config attrsets ]; own = [ module names ]; }.
  collect = args: m:
    let
      m1 = if isPath m then import m else m;
      m2 = if isFunction m1 then m1 (intersectAttrs (functionArgs m1) args) else m1;
      body = if m2 ? config || m2 ? options then m2.config or { }
        else removeAttrs m2 [ "imports" "key" "_file" "disabledModules" "meta" ];
      inner = map (collect args) (m2.imports or [ ]);
    in
    if m2 ? _imageCacheModule then { defs = [ ]; own = [ m2._imageCacheModule ]; }
    else {
      defs = [ body ] ++ concatMap (i: i.defs) inner;
      own = concatMap (i: i.own) inner;
    };

  segMatches = pattern: seg: pattern == seg || pattern == "<name>" || pattern == "*";
  prefixOf = pat: path:
    length pat <= length path && foldl' (ok: i: ok && segMatches (builtins.elemAt pat i) (builtins.elemAt path i)) true (genList (i: i) (length pat));
  optionAt = path: let hits = filter (d: length d.path == length path && prefixOf d.path path) declared;
    in if hits == [ ] then null else head hits;
  # Declared options strictly below `path` (which may hold concrete names where they declare <name> or *).
  below = path: filter (d: length d.path > length path && prefixOf (take (length path) d.path) path) declared;
  take = n: xs: genList (i: builtins.elemAt xs i) (if n < length xs then n else length xs);
  namespace = path: below path != [ ];

  hasPrefix = p: s: substring 0 (stringLength p) s == p;
  show = path: builtins.concatStringsSep "." path;
  # Values checked against the declared type where it is a simple one; the rest only for existence.
  typeOk = t: v:
    if hasPrefix "null or " t then v == null || typeOk (substring 8 (stringLength t) t) v
    else if t == "boolean" then isBool v
    else if t == "string" || hasPrefix "strings concatenated" t || hasPrefix "(optionally newline-terminated)" t then isString v
    else if t == "signed integer" || hasPrefix "16 bit unsigned" t || hasPrefix "positive integer" t || hasPrefix "unsigned integer, meaning" t then isInt v
    else if hasPrefix "list of " t then isList v && builtins.all (typeOk (substring 8 (stringLength t) t)) v
    else if t == "path" then isPath v || isString v || (isAttrs v && v ? outPath)
    else if hasPrefix "attribute set of" t || hasPrefix "open submodule" t || t == "TOML value" then isAttrs v
    else true;

  # Definitions: path → [ { value, priority } ], with mkIf/mkMerge/mkForce resolved as the module system does.
  walk = own: path: v:
    let
      ownHere = builtins.any (n: builtins.any (p: prefixOf p path) ownModules.${n}) own;
      ownBelow = builtins.any (n: builtins.any (p: length p > length path && prefixOf (take (length path) p) path) ownModules.${n}) own;
      opt = optionAt path;
      subs = below path;
      open = opt != null && hasPrefix "open submodule" opt.type;
      descend = p: x:
        if isList x && subs != [ ] && builtins.any (d: builtins.elemAt d.path (length path) == "*") subs
        then concatMap (e: walk own (p ++ [ "*" ]) e) x
        else if isAttrs x && !(x ? outPath) then concatMap (n: walk own (p ++ [ n ]) x.${n}) (attrNames x)
        else [ ];
    in
    if isAttrs v && v ? _type then
      (if v._type == "merge" then concatMap (walk own path) v.contents
       else if v._type == "if" then (if v.condition then walk own path v.content else [ ])
       else map (d: d // { priority = if v._type == "override" then v.priority else d.priority; }) (walk own path v.content))
    else if ownHere then [ { inherit path; value = v; priority = 100; own = true; } ]
    else if opt != null && subs != [ ] then
      [ { inherit path; value = v; priority = 100; type = opt.type; } ]
      ++ (if open then concatMap (n: if namespace (path ++ [ n ]) || optionAt (path ++ [ n ]) != null then walk own (path ++ [ n ]) v.${n} else [ ]) (if isAttrs v then attrNames v else [ ])
          else descend path v)
    else if opt != null then [ { inherit path; value = v; priority = 100; type = opt.type; } ]
    else if isAttrs v && !(v ? outPath) && (namespace path || ownBelow) then concatMap (n: walk own (path ++ [ n ]) v.${n}) (attrNames v)
    else [ { inherit path; error = "${show path}: no such option in nixpkgs (nix/tests/nixos-facts.json) or in an imported module of this flake"; priority = 100; } ];

  errorsOf = defs: map (d: d.error) (filter (d: d ? error) defs)
    ++ map (d: "${show d.path}: ${typeOf d.value} where nixpkgs declares `${d.type}`")
      (filter (d: d ? type && !(d ? error) && !(typeOk d.type d.value)) defs);

  # The merged value of one option: highest priority wins, lists concatenate, attrsets merge shallowly.
  valueOf = defs: path: default:
    let
      here = filter (d: !(d ? error) && d.path == path) defs;
      best = foldl' (m: d: if d.priority < m then d.priority else m) 10000 here;
      top = map (d: d.value) (filter (d: d.priority == best) here);
    in
    if top == [ ] then default
    else if builtins.all isList top then builtins.concatLists top
    else if builtins.all isAttrs top then foldl' (a: b: a // b) { } top
    else head top;

  node = name: module:
    let
      c = collect { inherit pkgs lib name; config = { }; nodes = { }; modulesPath = "/modules"; } module;
      defs = concatMap (walk c.own [ ]) c.defs;
    in {
      errors = errorsOf defs;
      modules = c.own;
      vlans = valueOf defs [ "virtualisation" "vlans" ] [ 1 ];
      qemuOptions = valueOf defs [ "virtualisation" "qemu" "options" ] [ ];
      qemuNetworkingOptions = valueOf defs [ "virtualisation" "qemu" "networkingOptions" ] null;
      useBootLoader = valueOf defs [ "virtualisation" "useBootLoader" ] false;
      directBoot = valueOf defs [ "virtualisation" "directBoot" "enable" ] null;
      diskImage = valueOf defs [ "virtualisation" "diskImage" ] "default";
      imageCache = (valueOf defs [ "services" "imageCache" ] { }).settings or null;
      dnsmasq = valueOf defs [ "services" "dnsmasq" "settings" ] null;
    };

  entries = readDir dir;
  testFiles = filter (f: entries.${f} == "regular" && f != "common.nix" && f != "settings.nix" && match ".*[.]nix" f != null)
    (attrNames entries);
  test = f:
    let t = import (dir + "/${f}") { self = fakeSelf; };
    in {
      inherit (t) name;
      nodes = mapAttrs node t.nodes;
      testScript = if isFunction t.testScript then t.testScript { nodes = { }; } else t.testScript;
    };
in
listToAttrs (map (f: { name = f; value = test f; }) testFiles)
