# Pure rendering logic of the NixOS module, builtins only, so CI can evaluate and test it with any Nix
# (`nix-instantiate --eval --strict nix/tests/render.nix`) without nixpkgs: settings → TOML, listen
# addresses → firewall ports, secret paths → LoadCredential, and the hardened unit.
let
  inherit (builtins)
    attrNames concatStringsSep filter isAttrs isList isBool isInt isFloat isString
    map match toJSON elemAt length head all any sort lessThan;

  bareKey = k: match "[A-Za-z0-9_-]+" k != null;
  key = k: if bareKey k then k else toJSON k;
  isTable = v: isAttrs v && !(v ? outPath);
  isTableArray = v: isList v && v != [ ] && all isTable v;

  value = v:
    if isBool v then (if v then "true" else "false")
    else if isInt v || isFloat v then toString v
    else if isString v then toJSON v
    else if v ? outPath then toJSON "${v}"
    else if isList v then "[" + concatStringsSep ", " (map value v) + "]"
    else throw "image-cache settings: a ${builtins.typeOf v} cannot be written as TOML";

  # Scalars first, then sub-tables, then arrays of tables: TOML requires keys before sub-tables.
  table = path: attrs:
    let
      names = filter (n: attrs.${n} != null) (attrNames attrs);
      scalars = filter (n: !(isTable attrs.${n}) && !(isTableArray attrs.${n})) names;
      tables = filter (n: isTable attrs.${n}) names;
      arrays = filter (n: isTableArray attrs.${n}) names;
      sub = n: path ++ [ (key n) ];
      header = p: "[" + concatStringsSep "." p + "]\n";
      lines = concatStringsSep "" (map (n: "${key n} = ${value attrs.${n}}\n") scalars);
      tableText = n:
        let inner = table (sub n) attrs.${n};
        in if inner.hasScalars || inner.body == "" then "\n" + header (sub n) + inner.body else inner.body;
      arrayText = n: concatStringsSep "" (map (t: "\n[[" + concatStringsSep "." (sub n) + "]]\n" + (table (sub n) t).body) attrs.${n});
    in {
      hasScalars = scalars != [ ];
      body = lines + concatStringsSep "" (map tableText tables) + concatStringsSep "" (map arrayText arrays);
    };

  # "0.0.0.0:53", "[::]:80", "10.0.0.1:8080" → the port number.
  portOf = addr:
    let m = match ".*:([0-9]+)" addr;
    in if m == null then throw "image-cache: listen address `${addr}` has no port" else builtins.fromJSON (head m);

  unique = xs: builtins.foldl' (acc: x: if builtins.elem x acc then acc else acc ++ [ x ]) [ ] xs;
  get = attrs: path: default:
    builtins.foldl' (acc: k: if isAttrs acc && acc ? ${k} && acc.${k} != null then acc.${k} else default) attrs path;
in
rec {
  # The module writes TOML with nixpkgs' `formats.toml`; this builtins-only writer renders the same
  # settings where nixpkgs cannot be built (CI renders the VM tests' settings with it and runs
  # `image-cache check-config` on the result).
  toTOML = settings: (table [ ] (dropNulls settings)).body;

  # Unset typed options are null; TOML has no null, and an absent key takes the binary's default.
  dropNulls = v:
    if isTable v then builtins.mapAttrs (_: dropNulls) (builtins.removeAttrs v (filter (n: v.${n} == null) (attrNames v)))
    else if isList v then map dropNulls (filter (x: x != null) v)
    else v;

  # `b` over `a`, recursively for attribute sets (lists and scalars are replaced, as in the binary's
  # config loading).
  merge = a: b:
    a // builtins.mapAttrs (n: v: if isTable v && isTable (a.${n} or null) then merge a.${n} v else v) b;

  # The defaults of the module's typed options (nixos/module.nix declares them from here): what the unit
  # listens on when the user's settings leave it out.
  moduleDefaults = {
    http = { listen = [ "0.0.0.0:80" ]; admin_listen = [ ]; };
    dns = { enabled = true; listen = [ "0.0.0.0:53" ]; };
    passthrough = { enabled = true; listen = [ "0.0.0.0:443" ]; };
    sync.enabled = false;
  };

  # The settings as the module's option tree holds them: the user's over the typed options' defaults (a
  # list the user sets replaces the default, as a definition replaces an option's default).
  moduleSettings = settings: merge moduleDefaults settings;

  # What the module writes: the user's settings, the state directory systemd manages, and the config keys
  # of the secrets that are set.
  finalSettings = settings: secrets:
    merge (merge { state_dir = "/var/lib/image-cache"; } settings) (secretSettings secrets);

  # Exactly the ports the settings listen on: HTTP (+ admin) TCP, DNS UDP+TCP, passthrough TCP.
  firewall = settings:
    let
      on = section: get settings [ section "enabled" ] true;
      # Absent keys take the binary's production defaults.
      ports = path: default: map portOf (get settings path default);
      http = ports [ "http" "listen" ] [ "0.0.0.0:80" ] ++ ports [ "http" "admin_listen" ] [ ];
      dns = if on "dns" then ports [ "dns" "listen" ] [ "0.0.0.0:53" ] else [ ];
      passthrough = if on "passthrough" then ports [ "passthrough" "listen" ] [ "0.0.0.0:443" ] else [ ];
    in {
      allowedTCPPorts = sort lessThan (unique (http ++ dns ++ passthrough));
      allowedUDPPorts = sort lessThan (unique dns);
    };

  credentialsDir = "/run/credentials/image-cache.service";

  # name → source path, for the secret files that are set.
  credentials = secrets:
    let set = filter (n: secrets.${n} != null) (attrNames secrets);
    in map (n: "${n}:${toString secrets.${n}}") set;

  # Config keys pointing at the credentials (what the service reads), for the secrets that are set.
  secretSettings = secrets:
    let
      at = n: "${credentialsDir}/${n}";
      has = n: (secrets.${n} or null) != null;
    in
      (if has "hmac" then { sync.hmac_file = at "hmac"; } else { })
      // (if has "token" then { sync.token_file = "/var/lib/image-cache/metal-api-token"; } else { })
      // (if has "registry-credentials" then { registry.credentials_file = at "registry-credentials"; } else { })
      // (if has "admin-token" then { http.admin_token_file = at "admin-token"; } else { });

  # What `image-cache check-config` can check at build time: every secret's config key is kept (the
  # service requires some of them) except the registry credentials file, which check-config reads and
  # which exists only inside the running unit.
  checkableSettings = settings: secrets:
    finalSettings settings (secrets // { "registry-credentials" = null; });

  # The unit's [Service] section: notify + watchdog, a dynamic user with only CAP_NET_BIND_SERVICE, and
  # the hardening list of nixpkgs' hickory-dns module.
  serviceConfig = { exe, configFile, secrets ? { } }: {
    Type = "notify";
    NotifyAccess = "main";
    WatchdogSec = "30s";
    Restart = "on-failure";
    RestartSec = "2s";
    ExecStart = "${exe} serve --config ${configFile}";
    DynamicUser = true;
    StateDirectory = "image-cache";
    StateDirectoryMode = "0750";
    WorkingDirectory = "/var/lib/image-cache";
    LoadCredential = credentials secrets;
    AmbientCapabilities = [ "CAP_NET_BIND_SERVICE" ];
    CapabilityBoundingSet = [ "CAP_NET_BIND_SERVICE" ];
    LimitNOFILE = 65536;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    NoNewPrivileges = true;
    PrivateDevices = true;
    PrivateTmp = true;
    ProtectClock = true;
    ProtectControlGroups = true;
    ProtectHome = true;
    ProtectHostname = true;
    ProtectKernelLogs = true;
    ProtectKernelModules = true;
    ProtectKernelTunables = true;
    ProtectProc = "invisible";
    ProtectSystem = "strict";
    RemoveIPC = true;
    RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" "AF_NETLINK" ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" "~@privileged" "~@resources" ];
    UMask = "0027";
  };

  # A v2 metal-api token is refreshed by the service and written back: the read-only credential seeds a
  # writable copy in the state directory once.
  tokenSeed = ''
    if [ -n "''${CREDENTIALS_DIRECTORY:-}" ] && [ -f "$CREDENTIALS_DIRECTORY/token" ] \
       && [ ! -s /var/lib/image-cache/metal-api-token ]; then
      install -m 0600 "$CREDENTIALS_DIRECTORY/token" /var/lib/image-cache/metal-api-token
    fi
  '';

  # containerd's hosts.toml for the partition's cache nodes: the same file `image-cache containerd-hosts`
  # prints (every node in order with pull and resolve, so losing one sends containerd to the next; `server`,
  # when given, is the registry itself as the last fallback).
  hostsToml = { mirrors, server ? null, dialTimeout ? "5s" }:
    (if server == null then "" else "server = ${toJSON server}\n")
    + concatStringsSep "" (map
      (m: "\n[host.${toJSON m}]\n  capabilities = [\"pull\", \"resolve\"]\n  dial_timeout = ${toJSON dialTimeout}\n")
      mirrors);

  # The CRI plugin whose `registry.config_path` names the hosts.toml folder, by containerd config file
  # version: 2 (what NixOS writes) is read by containerd 1.x and migrated by 2.x; 3 is containerd 2.x's own.
  containerdRegistryPlugin = version:
    if version == 2 then "io.containerd.grpc.v1.cri"
    else if version == 3 then "io.containerd.cri.v1.images"
    else throw "services.imageCache.containerdMirror: containerd config version ${toString version} is not 2 or 3";

  # containerd settings of that version pointing the CRI at `dir` (what the mirror module adds).
  containerdSettings = { version, dir }: {
    inherit version;
    plugins.${containerdRegistryPlugin version}.registry.config_path = dir;
  };

  # Impossible combinations, as { assertion; message; } for the module. `host`: what else the system
  # runs that matters (`resolvedStub`: systemd-resolved's stub listener holds 127.0.0.53:53).
  assertions = settings: secrets: host:
    let
      dnsOn = get settings [ "dns" "enabled" ] true;
      dnsListen = get settings [ "dns" "listen" ] [ "0.0.0.0:53" ];
      wildcard = a: match "(0[.]0[.]0[.]0|[[]::[]]):[0-9]+" a != null;
      syncOn = get settings [ "sync" "enabled" ] false;
      api = get settings [ "sync" "api" ] "v1";
      has = n: (secrets.${n} or null) != null;
    in [
      {
        assertion = !(dnsOn && dnsListen != [ ] && all wildcard dnsListen) || get settings [ "nodes" "self" ] null != null;
        message = "services.imageCache: DNS listens only on wildcard addresses, so set services.imageCache.settings.nodes.self to this node's internal address (DNS answers carry it).";
      }
      {
        assertion = !(syncOn && api == "v1") || has "hmac";
        message = "services.imageCache: sync with metal-api v1 needs services.imageCache.hmacFile (the view HMAC key).";
      }
      {
        assertion = !(syncOn && api == "v2") || has "token";
        message = "services.imageCache: sync with metal-api v2 needs services.imageCache.tokenFile.";
      }
      {
        assertion = !((host.resolvedStub or false) && dnsOn && any (a: match "(0[.]0[.]0[.]0|[[]::[]]):53" a != null) dnsListen);
        message = "services.imageCache: DNS would listen on a wildcard address on port 53, where systemd-resolved's stub listener (127.0.0.53:53) already is: list this node's own addresses in services.imageCache.settings.dns.listen (e.g. [ \"10.0.0.1:53\" ]), or disable services.resolved.";
      }
    ];

  # The containerd-mirror module writes hosts.toml files for NixOS's containerd; without it they do nothing.
  containerdMirrorAssertions = { containerdEnabled }: [
    {
      assertion = containerdEnabled;
      message = "services.imageCache.containerdMirror: virtualisation.containerd.enable is off, so nothing reads the hosts.toml files this writes (k3s and RKE2 run a containerd of their own: point their registries.yaml at the cache nodes instead).";
    }
  ];
}
