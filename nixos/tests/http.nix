# A client downloads through the cache (cold, then warm), then the origin stops and the file is still
# served from the cache.
{ self }:
let c = import ./common.nix { inherit self; };
in {
  name = "image-cache-http";
  nodes = {
    internet = c.internetNode;
    origin = { pkgs, ... }: {
      imports = [ (c.originNode (c.osImage pkgs 20000000)) ];
    };
    cache = c.cacheNode { name = "http"; addr = c.addrs.cache; };
    client = { pkgs, ... }: {
      imports = [ c.clientNode ];
      networking.nameservers = [ c.addrs.cache ];
    };
  };
  testScript = ''
    start_all()
    origin.wait_for_unit("nginx.service")
    # The cache resolves the origin through the "internet" resolver: it must answer before the first fill.
    internet.wait_for_unit("dnsmasq.service")
    cache.wait_for_unit("image-cache.service")
    client.wait_until_succeeds("dig +short images.test | grep -x ${c.addrs.cache}")
    client.succeed("curl -sf http://images.test/os/img.tar.lz4 -o /tmp/cold")
    client.succeed("curl -sf http://images.test/os/img.tar.lz4 -o /tmp/warm")
    md5 = client.succeed("curl -sf http://images.test/os/img.tar.lz4.md5").strip()
    assert client.succeed("md5sum /tmp/cold | cut -d' ' -f1").strip() == md5
    assert client.succeed("md5sum /tmp/warm | cut -d' ' -f1").strip() == md5
    cache.succeed("curl -sf http://127.0.0.1/metrics | grep -E 'image_cache_requests_total\\{kind=\"file\",result=\"hit\"\\} [1-9]'")
    origin.succeed("systemctl stop nginx")
    client.succeed("curl -sf http://images.test/os/img.tar.lz4 -o /tmp/offline")
    assert client.succeed("md5sum /tmp/offline | cut -d' ' -f1").strip() == md5
  '';
}
