# For Kubernetes/containerd nodes: point containerd at the image-cache nodes of the partition. Writes
# /etc/containerd/certs.d/<registry>/hosts.toml (every cache node in order with pull+resolve, so losing one
# sends containerd to the next; the registry itself stays the last fallback, so pulls keep working when
# every cache node is down) and sets containerd's config_path.
#
# Where config_path goes depends on the version of the config *file*, not of the binary: NixOS writes a
# version 2 file, whose `plugins."io.containerd.grpc.v1.cri".registry.config_path` containerd 1.x reads
# and containerd 2.x migrates to its CRI images plugin; a version 3 file (set by the user) needs the key
# under `io.containerd.cri.v1.images`.
{ config, lib, ... }:
let
  inherit (lib) mkOption mkIf types;
  cfg = config.services.imageCache.containerdMirror;
  render = import ./render.nix;
  certsDir = "/etc/containerd/certs.d";
  plugin = render.containerdRegistryPlugin (config.virtualisation.containerd.settings.version or 2);
  # mkIf on each plugin table, not around `settings`: the condition reads the settings being defined.
  pointAt = name: mkIf (plugin == name) { registry.config_path = certsDir; };
in
{
  options.services.imageCache.containerdMirror = {
    enable = lib.mkEnableOption "pulling container images through an image-cache mirror";
    mirrors = mkOption {
      type = types.nonEmptyListOf (types.strMatching "https?://[^/?#]+/?");
      example = [ "http://10.0.0.1" "http://10.0.0.2" "http://10.0.0.3" ];
      description = "Base URLs of the partition's image-cache nodes, in the order containerd tries them.";
    };
    registries = mkOption {
      type = types.listOf types.str;
      default = [ "_default" ];
      example = [ "docker.io" "ghcr.io" ];
      description = "Registries to send through the mirror; `_default` means every registry.";
    };
    dialTimeout = mkOption {
      type = types.str;
      default = "5s";
      description = "How long containerd (>= 2.0) waits for the mirror before it falls back to the registry.";
    };
  };

  config = mkIf cfg.enable {
    assertions = render.containerdMirrorAssertions { containerdEnabled = config.virtualisation.containerd.enable; };
    environment.etc = lib.listToAttrs (map
      (r: lib.nameValuePair "${lib.removePrefix "/etc/" certsDir}/${r}/hosts.toml" {
        text = render.hostsToml {
          mirrors = map (lib.removeSuffix "/") cfg.mirrors;
          inherit (cfg) dialTimeout;
        };
      })
      cfg.registries);
    virtualisation.containerd.settings.plugins = {
      "io.containerd.grpc.v1.cri" = pointAt "io.containerd.grpc.v1.cri";
      "io.containerd.cri.v1.images" = pointAt "io.containerd.cri.v1.images";
    };
  };
}
