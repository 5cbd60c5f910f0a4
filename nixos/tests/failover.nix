# Two cache nodes, peers of each other. One stops: DNS answers only the other within the hysteresis
# (3 polls of 1 s) and downloads keep working; it comes back and is listed again. A miss on one node is
# filled from the other without touching the origin.
{ self }:
let c = import ./common.nix { inherit self; };
in {
  name = "image-cache-failover";
  nodes = {
    internet = c.internetNode;
    origin = { pkgs, ... }: {
      imports = [
        (c.originNode (pkgs.runCommand "files" { } ''
          mkdir -p $out/os && head -c 2000000 /dev/urandom > $out/os/a.img && head -c 2000000 /dev/urandom > $out/os/b.img
        ''))
      ];
      services.nginx.appendHttpConfig = "access_log /var/log/nginx/files.log;";
    };
    a = c.cacheNode { name = "failover-a"; addr = c.addrs.cache; };
    b = c.cacheNode { name = "failover-b"; addr = c.addrs.cacheB; };
    client = { pkgs, ... }: {
      imports = [ c.clientNode ];
      networking.nameservers = [ c.addrs.cache c.addrs.cacheB ];
    };
  };
  testScript = ''
    def answers(server):
        return set(client.succeed(f"dig +short @{server} images.test A").split())

    start_all()
    origin.wait_for_unit("nginx.service")
    # The cache resolves the origin through the "internet" resolver: it must answer before the first fill.
    internet.wait_for_unit("dnsmasq.service")
    a.wait_for_unit("image-cache.service")
    b.wait_for_unit("image-cache.service")
    both = {"${c.addrs.cache}", "${c.addrs.cacheB}"}
    client.wait_until_succeeds("test $(dig +short @${c.addrs.cache} images.test A | wc -l) = 2")
    assert answers("${c.addrs.cache}") == both

    # Peer fill: a.img reaches node A from the origin, then node B gets it from A.
    client.succeed("curl -sf -H 'Host: images.test' http://${c.addrs.cache}/os/a.img -o /tmp/a1")
    client.succeed("curl -sf -H 'Host: images.test' http://${c.addrs.cacheB}/os/a.img -o /tmp/a2")
    client.succeed("cmp /tmp/a1 /tmp/a2")
    hits = origin.succeed("grep -c 'GET /os/a.img' /var/log/nginx/files.log").strip()
    assert hits == "1", f"origin saw {hits} GETs of a.img"

    # B stops: only A is answered after the fall time, and downloads still work.
    b.succeed("systemctl stop image-cache")
    client.wait_until_succeeds("test \"$(dig +short @${c.addrs.cache} images.test A)\" = ${c.addrs.cache}", timeout=15)
    client.succeed("curl -sf http://images.test/os/b.img -o /tmp/b")

    # B returns and is listed again after the rise time.
    b.succeed("systemctl start image-cache")
    b.wait_for_unit("image-cache.service")
    client.wait_until_succeeds("test $(dig +short @${c.addrs.cache} images.test A | wc -l) = 2", timeout=15)
  '';
}
