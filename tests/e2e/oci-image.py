#!/usr/bin/env python3
"""Writes a two-platform OCI image layout (index → amd64/arm64 manifests, gzip tar layers of random bytes)
for tests/e2e/containerd.sh and bench/registry.sh. Usage: oci-image.py DIR TAG LAYER_KIB..."""
import gzip, hashlib, io, json, os, sys, tarfile

out, tag, sizes = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3:]]
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)

def put(data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, d), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + d, "size": len(data)}

def layer(kib, name):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as t:
        data = os.urandom(kib * 1024)
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        t.addfile(info, io.BytesIO(data))
    tar = raw.getvalue()
    gz = gzip.compress(tar, mtime=0)
    desc = put(gz)
    desc["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
    return desc, "sha256:" + hashlib.sha256(tar).hexdigest()

shared = [layer(k, "f%d" % i) for i, k in enumerate(sizes[:-1])]
manifests = []
for arch in ["amd64", "arm64"]:
    own = layer(sizes[-1], "own-" + arch)
    layers = shared + [own]
    config = json.dumps({"architecture": arch, "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]},
                         "config": {}}).encode()
    cdesc = put(config)
    cdesc["mediaType"] = "application/vnd.oci.image.config.v1+json"
    m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": cdesc, "layers": [l for l, _ in layers]}).encode()
    mdesc = put(m)
    mdesc["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
    mdesc["platform"] = {"architecture": arch, "os": "linux"}
    manifests.append(mdesc)
index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": manifests}).encode()
idesc = put(index)
idesc["mediaType"] = "application/vnd.oci.image.index.v1+json"
idesc["annotations"] = {"org.opencontainers.image.ref.name": tag}
with open(os.path.join(out, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [idesc]}, f)
print(idesc["digest"])
