# The settings of the VM tests' cache nodes, builtins only: the VM tests use them, and CI renders them
# with nixos/render.nix and runs `image-cache check-config` on the result.
{
  dns = {
    nodes.self = "192.168.1.2";
    dns = { listen = [ "0.0.0.0:53" ]; upstreams = [ "192.168.1.1:53" ]; allow = [ "192.168.1.0/24" ]; };
    domains = [ { name = "images.test"; origin = "https://origin.test"; } ];
    passthrough.enabled = false;
  };
  http = {
    nodes.self = "192.168.1.2";
    dns = { listen = [ "192.168.1.2:53" ]; upstreams = [ "192.168.1.1:53" ]; };
    upstream.ca_file = "/etc/image-cache/test-ca.pem";
    domains = [ { name = "images.test"; origin = "https://origin.test"; revalidate_after = "1s"; } ];
    passthrough.enabled = false;
  };
  sync = {
    nodes.self = "192.168.1.2";
    dns = { listen = [ "192.168.1.2:53" ]; upstreams = [ "192.168.1.1:53" ]; };
    # The origin serves HTTPS only: metal-api lists http://images.test/…, which must be fetched from here.
    domains = [ { name = "images.test"; origin = "https://origin.test"; } ];
    upstream.ca_file = "/etc/image-cache/test-ca.pem";
    sync = { enabled = true; api = "v1"; url = "http://metal-api:8080/metal"; schedule = "*/5 * * * *"; jitter = "0s"; };
    passthrough.enabled = false;
  };
  registry = {
    dns.enabled = false;
    passthrough.enabled = false;
    http.listen = [ "0.0.0.0:5000" ];
    # The address, not the node's name: the test driver's /etc/hosts maps node names to the addresses it
    # would have assigned, not to the static ones of common.nix.
    registry = { tag_ttl = "1s"; upstreams."registry.test:5000" = "http://192.168.1.5:5000"; };
    upstream.read_timeout = "10s";
  };
  pxe = {
    nodes.self = "192.168.1.2";
    dns = { listen = [ "192.168.1.2:53" ]; upstreams = [ "192.168.1.1:53" ]; allow = [ "192.168.1.0/24" ]; };
    domains = [
      { name = "boot.test"; origin = "https://origin.test"; }
      { name = "images.test"; origin = "https://origin.test"; }
    ];
    upstream.ca_file = "/etc/image-cache/test-ca.pem";
    passthrough.enabled = false;
  };
  failover-a = {
    nodes = { self = "192.168.1.2"; peers = [ "192.168.1.3" ]; health_interval = "1s"; };
    dns = { listen = [ "192.168.1.2:53" ]; upstreams = [ "192.168.1.1:53" ]; allow = [ "192.168.1.0/24" ]; };
    domains = [ { name = "images.test"; origin = "http://origin.test"; } ];
    passthrough.enabled = false;
  };
  failover-b = {
    nodes = { self = "192.168.1.3"; peers = [ "192.168.1.2" ]; health_interval = "1s"; };
    dns = { listen = [ "192.168.1.3:53" ]; upstreams = [ "192.168.1.1:53" ]; allow = [ "192.168.1.0/24" ]; };
    domains = [ { name = "images.test"; origin = "http://origin.test"; } ];
    passthrough.enabled = false;
  };
}
