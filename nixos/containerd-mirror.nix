# For Kubernetes/containerd nodes: point containerd at the image-cache nodes of the partition. Writes
# /etc/containerd/certs.d/<registry>/hosts.toml (every cache node in order with pull+resolve, so losing one
# sends containerd to the next; the registry itself stays the last fallback, so pulls keep working when
# every cache node is down) and sets containerd's config_path.
{ config, lib, ... }:
let
  inherit (lib) mkOption mkIf types;
  cfg = config.services.imageCache.containerdMirror;
  render = import ./render.nix;
  containerd2 = lib.versionAtLeast (config.virtualisation.containerd.package.version or "2.0") "2";
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
    environment.etc = lib.listToAttrs (map
      (r: lib.nameValuePair "containerd/certs.d/${r}/hosts.toml" {
        text = render.hostsToml {
          mirrors = map (lib.removeSuffix "/") cfg.mirrors;
          inherit (cfg) dialTimeout;
        };
      })
      cfg.registries);
    virtualisation.containerd.settings =
      if containerd2 then {
        plugins."io.containerd.cri.v1.images".registry.config_path = "/etc/containerd/certs.d";
      } else {
        plugins."io.containerd.grpc.v1.cri".registry.config_path = "/etc/containerd/certs.d";
      };
  };
}
