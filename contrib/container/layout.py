#!/usr/bin/env python3
"""contrib/container/layout.py ROOT OUT TAG ARCH — one OCI image layout from a prepared root: a single
gzip layer (owner root, except /var/lib/image-cache and /tmp; mtime 0, sorted: the same root gives the
same digest), the image config (non-root user, entrypoint, port, volume) and index.json naming TAG."""
import gzip, hashlib, io, json, os, sys, tarfile

root, out, tag, arch = sys.argv[1:5]
UID = 65532
OWNED = {"var/lib/image-cache"}  # the state directory, written by the service
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)


def put(data, media_type):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return {"mediaType": media_type, "digest": "sha256:" + digest, "size": len(data)}


def entries():
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            yield full, os.path.relpath(full, root)


raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
    for full, rel in sorted(entries(), key=lambda e: e[1]):
        info = t.gettarinfo(full, arcname=rel)
        info.mtime = 0
        info.uname = info.gname = ""
        info.uid = info.gid = UID if rel in OWNED else 0
        if rel == "tmp":
            info.mode = 0o1777
        elif rel in OWNED:
            info.mode = 0o700
        if info.isfile():
            with open(full, "rb") as f:
                t.addfile(info, f)
        else:
            t.addfile(info)
tar = raw.getvalue()
layer = put(gzip.compress(tar, compresslevel=6, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip")

config = {
    "architecture": arch,
    "os": "linux",
    "config": {
        "User": "%d:%d" % (UID, UID),
        "Entrypoint": ["/usr/local/bin/image-cache"],
        "Cmd": ["serve", "--config", "/etc/image-cache/config.toml"],
        "Env": ["PATH=/usr/local/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
        "ExposedPorts": {"8080/tcp": {}},
        "Volumes": {"/var/lib/image-cache": {}},
        "WorkingDir": "/var/lib/image-cache",
        "StopSignal": "SIGTERM",
        "Labels": {
            "org.opencontainers.image.title": "image-cache",
            "org.opencontainers.image.version": tag,
            "org.opencontainers.image.description":
                "DNS interception, PXE image cache and pull-through registry mirror",
        },
    },
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
    "history": [{"created_by": "contrib/container/build.sh"}],
}
cdesc = put(json.dumps(config, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json")
manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": cdesc,
    "layers": [layer],
}
mdesc = put(json.dumps(manifest, sort_keys=True).encode(), "application/vnd.oci.image.manifest.v1+json")
mdesc["annotations"] = {"org.opencontainers.image.ref.name": tag}
mdesc["platform"] = {"architecture": arch, "os": "linux"}
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
               "manifests": [mdesc]}, f)
with open(os.path.join(out, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
print(mdesc["digest"])
