# Planted defects for the VM-test checker (tests/nix.sh must report each one; see expected.txt): the PXE
# client as first written, a DNS wait on an address the node does not listen on, a misspelt option, a
# driver method that does not exist and a keyword the driver does not take.
{ self }:
let c = import ../../../nixos/tests/common.nix { inherit self; };
in {
  name = "lint-netboot";
  nodes = {
    cache = c.cacheNode { name = "pxe"; addr = c.addrs.cache; };
    dhcp = { services.dnsmasq.enable = true; services.dnsmasq.resolveLocalQuerys = false; };
    client = { lib, ... }: {
      virtualisation = {
        useBootLoader = true;
        diskImage = null;
        qemu.options = [ "-boot" "order=n" ];
        qemu.networkingOptions = lib.mkForce [
          "-netdev vde,id=n1,sock=\"$QEMU_VDE_SOCKET_1\""
          "-device virtio-net-pci,netdev=n1,mac=52:54:00:12:01:50,bootindex=1"
        ];
      };
    };
  };
  testScript = ''
    start_all()
    cache.wait_for_unit("image-cache.service")
    cache.wait_for_open_port(53)
    cache.wait_for_port_open(80)
    client.wait_for_console_text("OK", timout=900)
    wait_all()
  '';
}
