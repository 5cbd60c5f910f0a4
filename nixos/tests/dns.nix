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
    # Type=notify: the unit is active only once every listener is bound, so DNS answers without waiting.
    cache.wait_for_unit("image-cache.service")
    client.succeed("dig +short +tcp @${c.addrs.cache} images.test A | grep -x ${c.addrs.cache}")
    client.succeed("dig +short @${c.addrs.cache} images.test A | grep -x ${c.addrs.cache}")
    client.succeed("dig @${c.addrs.cache} images.test MX | grep -q 'status: NOERROR'")
    client.succeed("dig +short @${c.addrs.cache} www.fwd.test A | grep -x 192.0.2.7")
    client.succeed("dig @${c.addrs.cache} nosuch.example A | grep -q 'status: NXDOMAIN'")
    cache.succeed("curl -sf http://127.0.0.1/metrics | grep 'image_cache_dns_queries_total{result=\"intercepted\"}'")
    # The unit is what the module promises, seen from what the service does (not from systemctl's text):
    # WatchdogSec hands it a watchdog, which a worker of its own pets;
    cache.succeed("curl -sf http://127.0.0.1/admin/status | grep -Eq '\"name\":\"systemd watchdog\",\"state\":\"(idle|busy)\"'")
    # DynamicUser keeps its state in /var/lib/private, owned by the unit's own unprivileged user.
    cache.succeed("test \"$(readlink /var/lib/image-cache)\" = private/image-cache")
    cache.succeed("test \"$(stat -c %u /var/lib/private/image-cache)\" -ne 0")
  '';
}
