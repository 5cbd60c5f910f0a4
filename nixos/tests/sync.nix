# The cache node syncs from a metal-api stub that checks metal-stack's v1 HMAC signature, downloads the
# listed image (verified against its .md5) and serves it as a hit.
{ self }:
let
  c = import ./common.nix { inherit self; };
  key = "test-view-key";
in {
  name = "image-cache-sync";
  nodes = {
    internet = c.internetNode;
    origin = { pkgs, lib, ... }: {
      imports = [ (c.originNode (c.osImage pkgs 3000000)) ];
      # HTTPS only: a sync that downloaded the listed http:// URL as it stands would find nothing here.
      services.nginx.virtualHosts."origin.test" = { addSSL = lib.mkForce false; onlySSL = lib.mkForce true; };
      networking.firewall.allowedTCPPorts = [ 8080 ];
      systemd.services.metal-api-stub = {
        wantedBy = [ "multi-user.target" ];
        serviceConfig.ExecStart = "${pkgs.python3}/bin/python3 ${pkgs.writeText "stub.py" ''
          import hashlib, hmac, http.server, json
          KEY = b"${key}"
          class H(http.server.BaseHTTPRequestHandler):
              def do_GET(self):
                  d, s = self.headers.get("X-Date", ""), self.headers.get("X-Data-Salt", "")
                  want = "Metal-View " + hmac.new(KEY, (d + "GET" + s).encode(), hashlib.sha256).hexdigest()
                  if self.headers.get("Authorization") != want:
                      print("HMAC-REJECTED", flush=True)
                      self.send_response(401); self.end_headers(); return
                  print("HMAC-OK", self.path, flush=True)
                  body = {"/metal/v1/image": [{"id": "debian-13.0.20260101", "url": "http://images.test/os/img.tar.lz4"}],
                          "/metal/v1/partition": []}.get(self.path)
                  if body is None:
                      self.send_response(404); self.end_headers(); return
                  data = json.dumps(body).encode()
                  self.send_response(200); self.send_header("Content-Type", "application/json")
                  self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
          http.server.HTTPServer(("0.0.0.0", 8080), H).serve_forever()
        ''}";
      };
    };
    cache = c.cacheNode {
      name = "sync";
      addr = c.addrs.cache;
      extra = {
        environment.etc."image-cache-test/hmac".text = key;
        services.imageCache.hmacFile = "/etc/image-cache-test/hmac";
      };
    };
  };
  testScript = ''
    start_all()
    origin.wait_for_unit("nginx.service")
    # The cache resolves the origin through the "internet" resolver: it must answer before the first fill.
    internet.wait_for_unit("dnsmasq.service")
    origin.wait_for_unit("metal-api-stub.service")
    origin.wait_for_open_port(8080)
    cache.wait_for_unit("image-cache.service")
    # The key reaches the service as a credential: the config names the credential file, the key itself is
    # nowhere in the config (the stub's HMAC-OK below proves the service signed with it).
    cache.succeed("grep -x 'hmac_file = \"/run/credentials/image-cache.service/hmac\"' /etc/image-cache/config.toml")
    cache.fail("grep -rq test-view-key /etc/image-cache/")
    # The start-up run may still hold the sync (409): either way a run must succeed.
    cache.succeed("curl -s -X POST 'http://127.0.0.1/admin/sync?wait=true' || true")
    cache.wait_until_succeeds("curl -sf http://127.0.0.1/metrics | grep -E 'image_cache_sync_runs_total\\{result=\"success\"\\} [1-9]'")
    origin.succeed("journalctl -u metal-api-stub | grep -q 'HMAC-OK /metal/v1/image'")
    origin.fail("journalctl -u metal-api-stub | grep -q HMAC-REJECTED")
    origin.fail("curl -sf -H 'Host: images.test' http://127.0.0.1/os/img.tar.lz4.md5")
    md5 = origin.succeed("curl -sfk --resolve images.test:443:127.0.0.1 https://images.test/os/img.tar.lz4.md5").strip()
    got = cache.succeed("curl -sf -H 'Host: images.test' http://127.0.0.1/os/img.tar.lz4 | md5sum | cut -d' ' -f1").strip()
    assert got == md5, f"{got} != {md5}"
    cache.succeed("curl -sf http://127.0.0.1/metrics | grep -E 'image_cache_requests_total\\{kind=\"file\",result=\"hit\"\\} [1-9]'")
  '';
}
