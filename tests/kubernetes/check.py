#!/usr/bin/env python3
"""check.py RENDERED.yaml OVERLAY ALERTS BIN WORKDIR — what the rendered manifests of one overlay must hold,
beyond their schemas: the ConfigMap's config.toml passes `image-cache check-config` with the environment
the StatefulSet gives it; the pods run non-root (the DaemonSet as root only for the node's certs.d) with a
read-only root, no capabilities, no privilege escalation, seccomp RuntimeDefault; every Service selects
the replicas; the peers' name and port agree across config, Service and DaemonSet; the PrometheusRule
holds exactly contrib/prometheus/alerts.yaml's groups; the ServiceMonitor selects one Service.
Prints PASS/FAIL lines; exit 1 on any FAIL."""
import os, subprocess, sys, tomllib
import yaml

rendered, overlay, alerts, binary, work = sys.argv[1:6]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
fails = 0


def check(ok, what):
    global fails
    print(("PASS " if ok else "FAIL ") + overlay + ": " + what)
    fails += 0 if ok else 1


def one(kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return found[0] if len(found) == 1 else None


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


sts = one("StatefulSet", "image-cache")
cm = one("ConfigMap", "image-cache-config")
check(sts is not None and cm is not None, "one StatefulSet and its ConfigMap")
pod = sts["spec"]["template"]
container = pod["spec"]["containers"][0]
config_text = cm["data"]["config.toml"]
config = tomllib.loads(config_text)

# --- the config, as the pod loads it ---------------------------------------------------------------
env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
secrets = os.path.join(work, "secrets-" + overlay)
os.makedirs(secrets, exist_ok=True)
for e in container.get("env", []):
    if "value" in e:
        value = e["value"]
        if value.startswith("/run/secrets/"):
            # The Secret's files, stood in for by local ones of the same kind.
            local = os.path.join(secrets, os.path.basename(value))
            open(local, "w").write('{"auths":{}}' if value.endswith(".json") else "token-for-check\n")
            value = local
        env[e["name"]] = value
    elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP":
        env[e["name"]] = "10.244.1.7"
path = os.path.join(work, overlay + "-config.toml")
open(path, "w").write(config_text)
run = subprocess.run([binary, "check-config", "--config", path], env=env, capture_output=True, text=True)
check(run.returncode == 0, "the ConfigMap's config.toml passes check-config with the pod's environment"
      + ("" if run.returncode == 0 else ": " + run.stderr.strip()[-400:]))
mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
check(mounted.get(config["state_dir"]) == "state" and mounted.get("/etc/image-cache") == "config",
      "state_dir is the PVC and the config is the ConfigMap")
port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
listen = config["http"]["listen"]
check(listen == ["0.0.0.0:%d" % port] and config["nodes"]["peer_port"] == port,
      "http.listen and nodes.peer_port are the container's port")

# --- hardening --------------------------------------------------------------------------------------
def hardened(workload, root_ok):
    spec = workload["spec"]["template"]["spec"]
    psc = spec.get("securityContext", {})
    good = psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
    good &= spec.get("automountServiceAccountToken") is False
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        good &= sc.get("readOnlyRootFilesystem") is True
        good &= sc.get("allowPrivilegeEscalation") is False
        good &= sc.get("capabilities", {}).get("drop") == ["ALL"]
        good &= not sc.get("capabilities", {}).get("add")
        good &= not sc.get("privileged", False)
        good &= "limits" in c.get("resources", {}) and "requests" in c["resources"]
        if not root_ok:
            good &= (psc.get("runAsNonRoot") or sc.get("runAsNonRoot")) is True
            good &= psc.get("runAsUser", sc.get("runAsUser")) not in (None, 0)
    return good

check(hardened(sts, False), "replicas: non-root, read-only root, no capabilities, seccomp, resources")
ds = one("DaemonSet")
if ds:
    check(hardened(ds, True), "DaemonSet: read-only root, no capabilities, seccomp, resources")
    mounts = ds["spec"]["template"]["spec"]["volumes"]
    check(len(mounts) == 1 and mounts[0]["hostPath"]["path"] == "/etc/containerd/certs.d/_default",
          "DaemonSet: only the node's certs.d/_default is mounted")

# --- who finds whom ---------------------------------------------------------------------------------
labels = pod["metadata"]["labels"]
services = [d for d in docs if d["kind"] == "Service"]
check(services and all(selects(s["spec"]["selector"], labels) for s in services),
      "every Service selects the replicas (%d)" % len(services))
headless = one("Service", sts["spec"]["serviceName"])
check(headless is not None and headless["spec"].get("clusterIP") == "None"
      and headless["spec"].get("publishNotReadyAddresses") is True,
      "serviceName is a headless Service publishing replicas before they are ready")
check(config["nodes"].get("peers_from") == sts["spec"]["serviceName"], "nodes.peers_from is that Service")
if ds:
    args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
    frm = args[args.index("--mirrors-from") + 1]
    check(frm == "%s:%d" % (sts["spec"]["serviceName"], port), "DaemonSet --mirrors-from is that Service's port")
pdb = one("PodDisruptionBudget")
check(pdb is not None and selects(pdb["spec"]["selector"]["matchLabels"], labels), "the PDB covers the replicas")
np = one("NetworkPolicy")
check(np is not None and selects(np["spec"]["podSelector"]["matchLabels"], labels)
      and any(p["port"] == port for r in np["spec"]["ingress"] for p in r["ports"]),
      "the NetworkPolicy lets the mirror's port in")

# --- monitoring -------------------------------------------------------------------------------------
rule = one("PrometheusRule")
sm = one("ServiceMonitor")
if rule or sm:
    want = yaml.safe_load(open(alerts))["groups"]
    check(rule is not None and rule["spec"]["groups"] == want, "the PrometheusRule is contrib/prometheus/alerts.yaml")
    chosen = [s for s in services if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
    check(len(chosen) == 1 and chosen[0]["metadata"]["name"] == "image-cache"
          and any(p["name"] == sm["spec"]["endpoints"][0]["port"] for p in chosen[0]["spec"]["ports"]),
          "the ServiceMonitor scrapes one Service, named as the alerts' job")
sys.exit(1 if fails else 0)
