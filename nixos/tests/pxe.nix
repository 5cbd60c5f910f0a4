# A diskless VM boots over the network: dnsmasq (DHCP + TFTP) hands out the cache node as DNS server
# and an iPXE script; QEMU's iPXE resolves boot.test through the cache's DNS and loads a kernel and an
# initrd through its HTTP cache (filled from the HTTPS origin). The initrd downloads the OS image
# through the cache, checks its md5, prints a marker on the serial console and powers off. A second
# boot is served from the cache.
{ self }:
let
  c = import ./common.nix { inherit self; };
  dhcpAddr = c.ip 6;
in {
  name = "image-cache-pxe";
  nodes = {
    internet = c.internetNode;
    origin = { pkgs, ... }:
      let
        modules = pkgs.makeModulesClosure {
          kernel = pkgs.linuxPackages.kernel;
          firmware = [ ];
          rootModules = [ "virtio_pci" "virtio_net" ];
        };
        init = pkgs.writeScript "init" ''
          #!${pkgs.pkgsStatic.busybox}/bin/sh
          export PATH=${pkgs.pkgsStatic.busybox}/bin
          mkdir -p /proc /sys /dev /etc
          mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
          for m in virtio_pci virtio_net; do modprobe $m; done
          ip link set eth0 up; ip addr add 192.168.1.50/24 dev eth0
          echo "nameserver ${c.addrs.cache}" > /etc/resolv.conf
          wget -q -O /os.img http://images.test/os/img.tar.lz4
          want=$(wget -q -O - http://images.test/os/img.tar.lz4.md5)
          got=$(md5sum /os.img | cut -d' ' -f1)
          if [ "$got" = "$want" ]; then echo "IMAGE-CACHE-PXE-OK $got"; else echo "IMAGE-CACHE-PXE-BAD $got $want"; fi
          poweroff -f
        '';
        initrd = pkgs.makeInitrd {
          contents = [
            { object = init; symlink = "/init"; }
            { object = "${modules}/lib"; symlink = "/lib"; }
          ];
        };
        files = pkgs.runCommand "boot-files" { } ''
          mkdir -p $out/os
          cp ${pkgs.linuxPackages.kernel}/bzImage $out/kernel
          cp ${initrd}/initrd $out/initrd
          head -c 5000000 /dev/urandom > $out/os/img.tar.lz4
          md5sum $out/os/img.tar.lz4 | cut -d' ' -f1 > $out/os/img.tar.lz4.md5
        '';
      in { imports = [ (c.originNode files) ]; };
    dhcp = { pkgs, ... }: {
      imports = [ (c.staticAddress dhcpAddr) ];
      # DHCP, and TFTP whose data flows on ephemeral ports.
      networking.firewall.enable = false;
      services.dnsmasq = {
        enable = true;
        resolveLocalQueries = false;
        settings = {
          port = 0; # DHCP and TFTP only; DNS is the cache's job
          interface = "eth1";
          dhcp-range = "192.168.1.100,192.168.1.150,1h";
          dhcp-option = [ "option:dns-server,${c.addrs.cache}" ];
          enable-tftp = true;
          # `quiet`: the test driver reads the serial console one line a second, so a full kernel log
          # would spend minutes of the timeout before the marker.
          tftp-root = "${pkgs.writeTextDir "boot.ipxe" ''
            #!ipxe
            kernel http://boot.test/kernel console=ttyS0 quiet panic=-1
            initrd http://boot.test/initrd
            boot
          ''}";
          dhcp-boot = "boot.ipxe";
        };
      };
    };
    cache = c.cacheNode { name = "pxe"; addr = c.addrs.cache; };
    # A diskless VM whose firmware boots from the network: no -kernel/-initrd (directBoot off), no disk,
    # and no user-mode NIC; its only NIC is the one the test driver puts on VLAN 1, where QEMU's
    # virtio-net option ROM (iPXE) takes DHCP from `dhcp` and the script from TFTP.
    client = { lib, ... }: {
      virtualisation = {
        directBoot.enable = false;
        diskImage = null;
        qemu.options = [ "-boot" "order=n" ];
        qemu.networkingOptions = lib.mkForce [ ];
      };
    };
  };
  testScript = ''
    servers = [internet, origin, dhcp, cache]
    for m in servers:
        m.start()
    origin.wait_for_unit("nginx.service")
    # The cache resolves the origin through the "internet" resolver: it must answer before the first fill.
    internet.wait_for_unit("dnsmasq.service")
    dhcp.wait_for_unit("dnsmasq.service")
    # Type=notify: active means every listener is bound. DNS listens on the internal address only.
    cache.wait_for_unit("image-cache.service")
    cache.wait_for_open_port(53, "${c.addrs.cache}")

    client.start(allow_reboot=False)
    client.wait_for_console_text("IMAGE-CACHE-PXE-OK", timeout=900)
    client.wait_for_shutdown()
    cache.succeed("curl -sf http://127.0.0.1/metrics | grep -E 'image_cache_requests_total\\{kind=\"file\",result=\"miss\"\\} [3-9]'")
    cache.succeed("curl -sf http://127.0.0.1/metrics | grep -E 'image_cache_dns_queries_total\\{result=\"intercepted\"\\} [1-9]'")

    client.start(allow_reboot=False)
    client.wait_for_console_text("IMAGE-CACHE-PXE-OK", timeout=900)
    client.wait_for_shutdown()
    cache.succeed("curl -sf http://127.0.0.1/metrics | grep -E 'image_cache_requests_total\\{kind=\"file\",result=\"hit\"\\} [3-9]'")
  '';
}
