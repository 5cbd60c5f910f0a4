#!/usr/bin/env python3
"""render.py DIR — prints what `kubectl kustomize DIR` prints for the subset of kustomize that
contrib/kubernetes uses (resources, components, namespace, labels, configMapGenerator without name hashes,
images, strategic-merge patches: maps merged, lists of named items merged by name), as YAML documents.
Anything else in a kustomization is refused, so the manifests cannot quietly grow past what is checked."""
import os, sys
import yaml

KNOWN = {"apiVersion", "kind", "resources", "components", "namespace", "labels", "configMapGenerator",
         "generatorOptions", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "CustomResourceDefinition", "PriorityClass", "StorageClass"}


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def merge(base, patch):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else v
        return out
    named = lambda l: isinstance(l, list) and l and all(isinstance(i, dict) and "name" in i for i in l)
    if named(base) and named(patch):
        out = list(base)
        for item in patch:
            at = next((i for i, b in enumerate(out) if b["name"] == item["name"]), None)
            if at is None:
                out.append(item)
            else:
                out[at] = merge(out[at], item)
        return out
    return patch


def image_name(ref):
    """`registry:5000/team/app:1.0@sha256:…` → `registry:5000/team/app`."""
    ref = ref.split("@")[0]
    head, _, last = ref.rpartition("/")
    return (head + "/" if head else "") + last.split(":")[0]


def set_images(node, images):
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("containers", "initContainers") and isinstance(v, list):
                for c in v:
                    for img in images:
                        if img["name"] == image_name(c.get("image", "")):
                            c["image"] = "%s:%s" % (img.get("newName", img["name"]), img.get("newTag", "latest"))
            else:
                set_images(v, images)
    elif isinstance(node, list):
        for v in node:
            set_images(v, images)


def build(directory, want_kind="Kustomization"):
    k = yaml.safe_load(open(os.path.join(directory, "kustomization.yaml")))
    unknown = set(k) - KNOWN
    if unknown:
        sys.exit("%s: kustomization keys this renderer does not implement: %s" % (directory, sorted(unknown)))
    if k.get("kind") != want_kind:
        sys.exit("%s: a %s is expected here, not a %s" % (directory, want_kind, k.get("kind")))
    docs = []
    for r in k.get("resources", []):
        p = os.path.normpath(os.path.join(directory, r))
        docs += build(p) if os.path.isdir(p) else load_docs(p)
    for g in k.get("configMapGenerator", []):
        if not k.get("generatorOptions", {}).get("disableNameSuffixHash"):
            sys.exit("%s: configMapGenerator with name hashes is not rendered here" % directory)
        data = {}
        for f in g["files"]:
            data[os.path.basename(f)] = open(os.path.join(directory, f)).read()
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": g["name"]}, "data": data})
    for c in k.get("components", []):
        sub = build(os.path.normpath(os.path.join(directory, c)), "Component")
        # A component's patches are applied to what is there; its resources are added.
        docs = sub["apply"](docs) + sub["docs"]
    patches = []
    for p in k.get("patches", []):
        patches += load_docs(os.path.join(directory, p["path"]))

    def apply(ds):
        for patch in patches:
            hits = [i for i, d in enumerate(ds) if d["kind"] == patch["kind"]
                    and d["metadata"]["name"] == patch["metadata"]["name"]]
            if len(hits) != 1:
                sys.exit("%s: a patch of %s/%s matches %d objects" % (directory, patch["kind"], patch["metadata"]["name"], len(hits)))
            ds[hits[0]] = merge(ds[hits[0]], patch)
        return ds

    if want_kind == "Component":
        return {"docs": docs, "apply": apply}
    docs = apply(docs)
    for d in docs:
        for pair in k.get("labels", []):
            d["metadata"].setdefault("labels", {}).update(pair["pairs"])
        if "namespace" in k and d["kind"] not in CLUSTER_SCOPED:
            d["metadata"]["namespace"] = k["namespace"]
    if "images" in k:
        set_images(docs, k["images"])
    return docs


if __name__ == "__main__":
    yaml.safe_dump_all(build(sys.argv[1]), sys.stdout, sort_keys=False, width=120)
