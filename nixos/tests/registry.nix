# containerd pulls through the mirror (nixos/containerd-mirror.nix on the client) from a docker-registry
# node, then again with the registry stopped; the client cannot resolve the registry's name itself. The
# first pull goes through the CRI (crictl), which finds the mirror only through the config_path the
# module sets; the second, after the registry stopped and the content left containerd's store, through
# `ctr --hosts-dir` pointed at the module's own directory: every blob then comes from the cache alone.
{ self }:
let c = import ./common.nix { inherit self; };
in {
  name = "image-cache-registry";
  nodes = {
    registry = { pkgs, ... }: {
      imports = [ (c.staticAddress c.addrs.registry) ];
      services.dockerRegistry = { enable = true; listenAddress = "0.0.0.0"; port = 5000; openFirewall = true; };
      environment.systemPackages = [ pkgs.skopeo pkgs.python3 ];
      environment.etc."containers/policy.json".text = ''{"default":[{"type":"insecureAcceptAnything"}]}'';
    };
    cache = c.cacheNode { name = "registry"; addr = c.addrs.cache; };
    client = { pkgs, ... }: {
      imports = [ c.clientNode self.nixosModules.containerd-mirror ];
      environment.systemPackages = [ pkgs.cri-tools ];
      virtualisation.containerd.enable = true;
      services.imageCache.containerdMirror = { enable = true; mirrors = [ "http://${c.addrs.cache}:5000" ]; };
    };
  };
  testScript = ''
    start_all()
    registry.wait_for_unit("docker-registry.service")
    registry.wait_for_open_port(5000)
    index = registry.succeed("python3 ${../../tests/e2e/oci-image.py} /tmp/img 1 1 4096 256").strip()
    registry.succeed("skopeo copy --all --dest-tls-verify=false oci:/tmp/img:1 docker://127.0.0.1:5000/test/app:1")
    cache.wait_for_unit("image-cache.service")
    client.wait_for_unit("containerd.service")
    client.succeed("grep -q 'http://${c.addrs.cache}:5000' /etc/containerd/certs.d/_default/hosts.toml")
    # The CRI finds the mirror only through the config_path the module sets, and the client cannot resolve
    # registry.test itself: this pull works through the cache or not at all.
    crictl = "crictl --runtime-endpoint unix:///run/containerd/containerd.sock --image-endpoint unix:///run/containerd/containerd.sock"
    client.succeed(f"{crictl} pull registry.test:5000/test/app:1")
    assert index in client.succeed("ctr -n k8s.io images ls"), "CRI pull: digest differs from the pushed index"
    cache.succeed("curl -sf http://127.0.0.1:5000/metrics | grep -E 'image_cache_registry_requests_total\\{registry=\"registry.test:5000\",kind=\"blob\",result=\"miss\"\\} [1-9]'")
    registry.succeed("systemctl stop docker-registry")
    # The CRI pull left every blob in containerd's content store, which its namespaces share: remove it, so
    # the next pull fetches every blob again, from the cache alone.
    client.succeed("ctr -n k8s.io images ls -q | xargs ctr -n k8s.io images rm --sync")
    # --skip-metadata: containerd 2.x's ctr otherwise also fetches the other platforms' manifests, which
    # the CRI's pull (linux/amd64 only) never asked the cache for.
    client.succeed("ctr images pull --skip-metadata --hosts-dir /etc/containerd/certs.d registry.test:5000/test/app:1")
    assert index in client.succeed("ctr images ls"), "ctr pull: digest differs from the pushed index"
    cache.succeed("curl -sf http://127.0.0.1:5000/metrics | grep -E 'image_cache_registry_requests_total\\{registry=\"registry.test:5000\",kind=\"blob\",result=\"hit\"\\} [1-9]'")
  '';
}
