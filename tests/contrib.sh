#!/usr/bin/env bash
# contrib/: the dashboard parses as JSON and the alert rules pass `promtool check rules` and their unit
# tests (`promtool test rules`). promtool comes with Debian's `prometheus` package; without it the rule
# checks are SKIPPED with a visible line (the metric names are checked by tests/contrib.rs either way).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import json,sys; json.load(open(sys.argv[1]))' contrib/grafana/image-cache.json
echo "PASS contrib/grafana/image-cache.json parses"
if ! command -v promtool >/dev/null; then
    echo "SKIPPED promtool not installed (apt-get install prometheus): alert rules not checked"
    exit 0
fi
promtool check rules contrib/prometheus/alerts.yaml
(cd contrib/prometheus && promtool test rules alerts.test.yaml)
echo "PASS contrib/prometheus/alerts.yaml: promtool check rules and test rules"
