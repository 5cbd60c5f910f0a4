# A client resolves through the cache node: intercepted names → the cache, forwarded names → the
# "internet" resolver's answer, refused outside dns.allow is covered by the cargo and e2e tests.
{ self }:
let c = import ./common.nix { inherit self; };
in {
  name = "image-cache-dns";
  nodes = {
    internet = c.internetNode;
    cache = c.cacheNode { name = "dns"; addr = c.addrs.cache; };
    client = c.clientNode;
  };
  testScript = ''
    start_all()
    internet.wait_for_unit("dnsmasq.service")
    cache.wait_for_unit("image-cache.service")
    cache.wait_for_open_port(53)
    client.wait_until_succeeds("dig +short @${c.addrs.cache} images.test A | grep -x ${c.addrs.cache}")
    client.succeed("dig +short +tcp @${c.addrs.cache} images.test A | grep -x ${c.addrs.cache}")
    client.succeed("dig @${c.addrs.cache} images.test MX | grep -q 'status: NOERROR'")
    client.succeed("dig +short @${c.addrs.cache} www.fwd.test A | grep -x 192.0.2.7")
    client.succeed("dig @${c.addrs.cache} nosuch.example A | grep -q 'status: NXDOMAIN'")
    cache.succeed("curl -sf http://127.0.0.1/metrics | grep 'image_cache_dns_queries_total{result=\"intercepted\"}'")
    # The unit is what the module promises.
    cache.succeed("systemctl show -p Type image-cache | grep -x Type=notify")
    cache.succeed("systemctl show -p WatchdogUSec image-cache | grep -x WatchdogUSec=30s")
    cache.succeed("systemctl show -p DynamicUser image-cache | grep -x DynamicUser=yes")
  '';
}
