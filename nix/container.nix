# The container image (`nix build .#container`, then `docker load < result` or `skopeo copy
# docker-archive:result …`): the same image contrib/container/build.sh assembles without Nix — the binary,
# the CA bundle, a non-root user (65532), /var/lib/image-cache as a volume it owns, and
# contrib/container/config.toml as the built-in config (0.0.0.0:8080, registry mirror only, names through
# the pod's /etc/resolv.conf).
{
  lib,
  dockerTools,
  cacert,
  image-cache,
}:
dockerTools.buildLayeredImage {
  name = "image-cache";
  tag = image-cache.version;
  contents = [ cacert ];
  fakeRootCommands = ''
    mkdir -p etc/image-cache var/lib/image-cache tmp
    cp ${../contrib/container/config.toml} etc/image-cache/config.toml
    printf 'root:x:0:0:root:/root:/sbin/nologin\nimage-cache:x:65532:65532:image-cache:/var/lib/image-cache:/sbin/nologin\n' > etc/passwd
    printf 'root:x:0:\nimage-cache:x:65532:\n' > etc/group
    chown 65532:65532 var/lib/image-cache
    chmod 0700 var/lib/image-cache
    chmod 1777 tmp
  '';
  enableFakechroot = false;
  config = {
    User = "65532:65532";
    Entrypoint = [ (lib.getExe image-cache) ];
    Cmd = [
      "serve"
      "--config"
      "/etc/image-cache/config.toml"
    ];
    Env = [ "SSL_CERT_FILE=${cacert}/etc/ssl/certs/ca-bundle.crt" ];
    ExposedPorts."8080/tcp" = { };
    Volumes."/var/lib/image-cache" = { };
    WorkingDir = "/var/lib/image-cache";
    StopSignal = "SIGTERM";
    Labels = {
      "org.opencontainers.image.title" = "image-cache";
      "org.opencontainers.image.version" = image-cache.version;
    };
  };
}
