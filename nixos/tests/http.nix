# A client downloads through the cache (cold, then warm: the origin sends the image once), then the origin
# stops and the file is still served, stale, from the store on its own disk.
{ self }:
let c = import ./common.nix { inherit self; };
in {
  name = "image-cache-http";
  nodes = {
    internet = c.internetNode;
    origin = { pkgs, ... }: {
      imports = [ (c.originNode (c.osImage pkgs 20000000)) ];
      services.nginx.appendHttpConfig = "access_log /var/log/nginx/files.log;";
    };
    # The store on a disk of its own, as production caches are: with DynamicUser the state directory is
    # /var/lib/private/image-cache, so that is where the disk is mounted.
    cache = c.cacheNode {
      name = "http";
      addr = c.addrs.cache;
      extra = {
        virtualisation.emptyDiskImages = [ 256 ];
        fileSystems."/var/lib/private/image-cache" = { device = "/dev/vdb"; fsType = "ext4"; autoFormat = true; };
      };
    };
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
    # The warm copy came from the cache, whether the fill had been committed yet (a hit) or was still being
    # fsynced (it joined the fill): the origin sent the image's body once.
    sent = origin.succeed("grep -c '\"GET /os/img.tar.lz4 HTTP/1.1\" 200' /var/log/nginx/files.log").strip()
    assert sent == "1", f"origin sent the image {sent} times"
    # The objects are on the store's own disk.
    cache.succeed("findmnt -n -o TARGET --target /var/lib/private/image-cache/blobs | grep -x /var/lib/private/image-cache")
    cache.succeed("find /var/lib/private/image-cache/blobs -type f -size +10M | grep -q .")
    origin.succeed("systemctl stop nginx")
    cache.sleep(2)  # past revalidate_after (1 s): the next request asks the origin first
    client.succeed("curl -sf http://images.test/os/img.tar.lz4 -o /tmp/offline")
    assert client.succeed("md5sum /tmp/offline | cut -d' ' -f1").strip() == md5
    # The origin gone, the stored copy is served (stale), never an error.
    cache.succeed("curl -sf http://127.0.0.1/metrics | grep -E 'image_cache_requests_total\\{kind=\"file\",result=\"stale\"\\} [1-9]'")
  '';
}
