# Shared pieces of the VM tests: fixed addresses on the test VLAN, a test CA with a certificate for the
# origin's names, and the cache node built from the module with the settings in ./settings.nix.
{ self }:
rec {
  ip = n: "192.168.1.${toString n}";
  addrs = {
    internet = ip 1; # upstream resolver (dnsmasq) for everything not intercepted
    cache = ip 2;
    cacheB = ip 3;
    origin = ip 4;
    registry = ip 5;
    client = ip 10;
  };

  # A static address on eth1, the interface the test driver puts on VLAN 1.
  staticAddress = addr: { lib, ... }: {
    networking.interfaces.eth1.ipv4.addresses = lib.mkForce [ { address = addr; prefixLength = 24; } ];
    networking.useDHCP = false;
  };

  # The "internet" resolver: answers the origin's and the registry's names, NXDOMAIN for the rest.
  internetNode = { pkgs, ... }: {
    imports = [ (staticAddress addrs.internet) ];
    networking.firewall.allowedUDPPorts = [ 53 ];
    networking.firewall.allowedTCPPorts = [ 53 ];
    services.dnsmasq = {
      enable = true;
      resolveLocalQueries = false;
      settings = {
        no-resolv = true;
        listen-address = addrs.internet;
        bind-interfaces = true;
        address = [
          "/origin.test/${addrs.origin}"
          "/images.test/${addrs.origin}"
          "/boot.test/${addrs.origin}"
          "/registry/${addrs.registry}"
          "/metal-api/${addrs.origin}"
          "/fwd.test/192.0.2.7"
          # Everything else: NXDOMAIN. Without it dnsmasq (no-resolv, no server=) answers REFUSED.
          "/#/"
        ];
      };
    };
  };

  testCa = pkgs: pkgs.runCommand "image-cache-test-ca" { nativeBuildInputs = [ pkgs.openssl ]; } ''
    mkdir -p $out
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=image-cache-test-ca \
      -keyout $out/ca.key -out $out/ca.pem
    openssl req -newkey rsa:2048 -nodes -subj /CN=origin.test -keyout $out/origin.key -out origin.csr
    printf 'subjectAltName=DNS:origin.test,DNS:images.test,DNS:boot.test\n' > ext
    openssl x509 -req -in origin.csr -CA $out/ca.pem -CAkey $out/ca.key -CAcreateserial -days 3650 \
      -extfile ext -out $out/origin.pem
  '';

  # An OS image of `size` random bytes at /os/img.tar.lz4, with its .md5 sidecar.
  osImage = pkgs: size: pkgs.runCommand "files" { } ''
    mkdir -p $out/os
    head -c ${toString size} /dev/urandom > $out/os/img.tar.lz4
    md5sum $out/os/img.tar.lz4 | cut -d' ' -f1 > $out/os/img.tar.lz4.md5
  '';

  # An nginx HTTPS origin holding `files` (a derivation with the tree to serve).
  originNode = files: { pkgs, ... }: {
    imports = [ (staticAddress addrs.origin) ];
    networking.firewall.allowedTCPPorts = [ 80 443 ];
    services.nginx = {
      enable = true;
      virtualHosts."origin.test" = {
        serverAliases = [ "images.test" "boot.test" ];
        onlySSL = false;
        addSSL = true;
        sslCertificate = "${testCa pkgs}/origin.pem";
        sslCertificateKey = "${testCa pkgs}/origin.key";
        root = files;
      };
    };
  };

  # A cache node: the flake's module, the named settings of ./settings.nix, the test CA trusted.
  cacheNode = { name, addr, extra ? { } }: { pkgs, lib, ... }: {
    imports = [ self.nixosModules.default (staticAddress addr) extra ];
    environment.etc."image-cache/test-ca.pem".source = "${testCa pkgs}/ca.pem";
    environment.systemPackages = [ pkgs.curl pkgs.dnsutils ];
    services.imageCache = {
      enable = true;
      openFirewall = true;
      settings = (import ./settings.nix).${name};
    };
  };

  clientNode = { pkgs, ... }: {
    imports = [ (staticAddress addrs.client) ];
    environment.systemPackages = [ pkgs.curl pkgs.dnsutils ];
  };
}
