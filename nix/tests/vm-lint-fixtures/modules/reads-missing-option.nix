# Planted defect: a module reading an option nixpkgs does not declare (the containerd-mirror module's first
# version, whose `or "2.0"` hid the missing option).
{ config, lib, ... }:
{
  config.environment.etc."x".text = if lib.versionAtLeast (config.virtualisation.containerd.package.version or "2.0") "2" then "2" else "1";
}
