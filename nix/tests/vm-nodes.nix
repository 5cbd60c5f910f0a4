# The VM tests' node configurations, read without nixpkgs (builtins only, so CI can run it with nix 2.8):
# every definition a node makes must name an option nixpkgs declares (nix/tests/nixos-facts.json, or one
# of this flake's modules the node imports), and simple values must have the declared type. Prints, per
# test: its nodes' errors and the facts tests/vm-scripts.py checks the test script against, and the
# script itself.
#   nix-instantiate --eval --strict --json --read-write-mode nix/tests/vm-nodes.nix --arg dir ./nixos/tests
# With `replayPkgs` (nix/tests/vm-replay-pkgs.nix) the nodes are evaluated with packages that build for real,
# each node also carries what nix/tests/vm-replay.py needs to run it (services, files, addresses, packages),
# and `drvs` lists the derivations to build first.
{ dir, replayPkgs ? null, only ? null }:
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
  pkgs = if replayPkgs != null then replayPkgs else fakePkgs;
  fakePkgs = listToAttrs (map (n: { name = n; value = fakeDrv n; })
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

  # The merged value of one option: highest priority wins, lists concatenate, attribute sets merge
  # member by member, each member resolved where another module defines it too (a `mkForce` on one
  # member of a set beats the member in the set's plain definition, as in the module system).
  valueOf = defs: path: default:
    let
      here = filter (d: !(d ? error) && d.path == path) defs;
      best = foldl' (m: d: if d.priority < m then d.priority else m) 10000 here;
      top = map (d: d.value) (filter (d: d.priority == best) here);
      isSet = v: isAttrs v && !(v ? outPath) && !(v ? _type);
      # Members some definition reaches below this path (e.g. `virtualHosts.<name>.addSSL`).
      under = n: builtins.any (d: !(d ? error) && length d.path > length path
        && builtins.elemAt d.path (length path) == n && take (length path) d.path == path) defs;
      vals = if top == [ ] then [ default ] else top;
    in
    if top == [ ] && !(isSet default) then default
    else if builtins.all isList vals then builtins.concatLists vals
    else if builtins.all isSet vals then
      mapAttrs (n: v: if under n then valueOf defs (path ++ [ n ]) v else v) (foldl' (a: b: a // b) { } vals)
    else head vals;

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
      # The settings as the module holds them (its typed options' defaults under the node's values).
      imageCache = let ic = valueOf defs [ "services" "imageCache" ] { };
        in if ic ? settings then (import ../../nixos/render.nix).moduleSettings ic.settings else null;
      dnsmasq = valueOf defs [ "services" "dnsmasq" "settings" ] null;
    } // (if replayPkgs == null then { } else replayFacts defs c.own);

  # What the replay runs: each service's definitions as the node makes them (nixpkgs' modules are replayed
  # by vm-replay.py; this flake's by nixos/render.nix, as the module uses it).
  replayFacts = defs: own:
    let
      v = valueOf defs;
      imageCache = v [ "services" "imageCache" ] { };
      mirror = v [ "services" "imageCache" "containerdMirror" ] (imageCache.containerdMirror or { enable = false; });
      render = import ../../nixos/render.nix;
      secrets = {
        hmac = imageCache.hmacFile or null;
        token = imageCache.tokenFile or null;
        "registry-credentials" = imageCache.registryCredentialsFile or null;
        "admin-token" = imageCache.adminTokenFile or null;
      };
      settings = render.moduleSettings (imageCache.settings or { });
      ownEnabled = builtins.elem "default" own && (imageCache.enable or false);
      ctdSettings = v [ "virtualisation" "containerd" "settings" ] { };
      ctdVersion = ctdSettings.version or 2;
    in {
      addresses = v [ "networking" "interfaces" "eth1" "ipv4" "addresses" ] null;
      nameservers = v [ "networking" "nameservers" ] [ ];
      firewall = {
        enable = v [ "networking" "firewall" "enable" ] true;
        tcp = v [ "networking" "firewall" "allowedTCPPorts" ] [ ]
          ++ (if ownEnabled && (imageCache.openFirewall or false) then (render.firewall settings).allowedTCPPorts else [ ])
          ++ (if v [ "services" "dockerRegistry" "openFirewall" ] false then [ (v [ "services" "dockerRegistry" "port" ] 5000) ] else [ ]);
        udp = v [ "networking" "firewall" "allowedUDPPorts" ] [ ]
          ++ (if ownEnabled && (imageCache.openFirewall or false) then (render.firewall settings).allowedUDPPorts else [ ]);
      };
      etc = builtins.mapAttrs (_: e: { text = e.text or null; source = if e ? source then "${e.source}" else null; })
        (v [ "environment" "etc" ] { })
        // (if mirror.enable then listToAttrs (map (r: {
          name = "containerd/certs.d/${r}/hosts.toml";
          value = { text = render.hostsToml { mirrors = map (m: let x = match "(.*[^/])/?" m; in head x) mirror.mirrors; dialTimeout = mirror.dialTimeout or "5s"; }; source = null; };
        }) (mirror.registries or [ "_default" ])) else { });
      systemPackages = map (p: "${p}") (v [ "environment" "systemPackages" ] [ ]);
      units = builtins.mapAttrs (_: u: {
        execStart = u.serviceConfig.ExecStart or null;
        script = u.script or null;
        wantedBy = u.wantedBy or [ ];
      }) (v [ "systemd" "services" ] { });
      dnsmasqOn = v [ "services" "dnsmasq" "enable" ] false;
      dnsmasqResolveLocal = v [ "services" "dnsmasq" "resolveLocalQueries" ] true;
      nginx = if v [ "services" "nginx" "enable" ] false then {
        virtualHosts = builtins.mapAttrs (_: h: h // {
          root = if h ? root then "${h.root}" else null;
          sslCertificate = if h ? sslCertificate then "${h.sslCertificate}" else null;
          sslCertificateKey = if h ? sslCertificateKey then "${h.sslCertificateKey}" else null;
        }) (v [ "services" "nginx" "virtualHosts" ] { });
        appendHttpConfig = v [ "services" "nginx" "appendHttpConfig" ] "";
      } else null;
      dockerRegistry = if v [ "services" "dockerRegistry" "enable" ] false then {
        listenAddress = v [ "services" "dockerRegistry" "listenAddress" ] "127.0.0.1";
        port = v [ "services" "dockerRegistry" "port" ] 5000;
      } else null;
      # The modules' assertions, as a NixOS build would stop on them.
      assertions = (if ownEnabled then map (a: a.message) (filter (a: !a.assertion) (render.assertions settings secrets
          { resolvedStub = v [ "services" "resolved" "enable" ] false; })) else [ ])
        ++ (if mirror.enable then map (a: a.message) (filter (a: !a.assertion) (render.containerdMirrorAssertions
          { containerdEnabled = v [ "virtualisation" "containerd" "enable" ] false; })) else [ ]);
      containerd = if v [ "virtualisation" "containerd" "enable" ] false then {
        settings = if mirror.enable then render.merge ctdSettings
          (render.containerdSettings { version = ctdVersion; dir = "/etc/containerd/certs.d"; }) else ctdSettings;
      } else null;
      imageCacheUnit = if ownEnabled then {
        config = render.toTOML (render.finalSettings settings secrets);
        credentials = render.credentials secrets;
        serviceConfig = render.serviceConfig { exe = "image-cache"; configFile = "/etc/image-cache/config.toml"; inherit secrets; };
      } else null;
      fileSystems = builtins.mapAttrs (_: f: { device = f.device or null; fsType = f.fsType or "auto"; autoFormat = f.autoFormat or false; })
        (v [ "fileSystems" ] { });
      virtualisation = {
        emptyDiskImages = v [ "virtualisation" "emptyDiskImages" ] [ ];
        qemuOptions = v [ "virtualisation" "qemu" "options" ] [ ];
        memorySize = v [ "virtualisation" "memorySize" ] 1024;
      };
    };

  entries = readDir dir;
  testFiles = filter (f: entries.${f} == "regular" && f != "common.nix" && f != "settings.nix" && match ".*[.]nix" f != null
    && (only == null || f == only)) (attrNames entries);
  test = f:
    let t = import (dir + "/${f}") { self = fakeSelf; };
    in {
      inherit (t) name;
      nodes = mapAttrs node t.nodes;
      testScript = if isFunction t.testScript then t.testScript { nodes = { }; } else t.testScript;
    };
  result = listToAttrs (map (f: { name = f; value = test f; }) testFiles);
in
if replayPkgs == null then result
else result // { drvs = attrNames (builtins.getContext (builtins.toJSON result)); }
