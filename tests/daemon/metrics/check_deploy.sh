#!/bin/sh
# Checks deploy/ with the tools that understand it:
#   promtool check config / check rules / test rules  (Debian: prometheus)
#   promtool check metrics on the exposition goldens
#   YAML syntax of the Kubernetes and Grafana provisioning files (python3-yaml)
#   systemd-analyze verify of the unit, with ExecStart pointed at /bin/true
#     because tidepoold is not installed here
# Exits 77 (CTest: skipped) when promtool is missing.
set -eu
root=${1:?usage: check_deploy.sh SOURCE_DIR}
deploy="$root/deploy"

if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool not found (Debian package prometheus): skipping" >&2
  exit 77
fi

promtool check config "$deploy/prometheus/prometheus.yml"
promtool check rules "$deploy/prometheus/tidepool-rules.yml"
promtool test rules "$deploy/prometheus/tidepool-rules.test.yml"

for golden in "$root"/tests/daemon/metrics/testdata/*.prom; do
  echo "promtool check metrics $(basename "$golden")"
  promtool check metrics <"$golden"
done

if command -v python3 >/dev/null 2>&1 && python3 -c 'import yaml' 2>/dev/null; then
  python3 - "$deploy" <<'PY'
import glob, json, sys, yaml
deploy = sys.argv[1]
files = sorted(glob.glob(deploy + "/kubernetes/*.yaml") +
               glob.glob(deploy + "/grafana/provisioning/*/*.yml"))
for path in files:
    docs = [d for d in yaml.safe_load_all(open(path)) if d is not None]
    assert docs, path + ": empty"
    print("yaml ok:", path[len(deploy) + 1:])
cm = yaml.safe_load(open(deploy + "/kubernetes/configmap.yaml"))
assert "tidepoold.toml" in cm["data"], "ConfigMap lacks tidepoold.toml"
json.load(open(deploy + "/grafana/dashboards/tidepool.json"))
print("json ok: grafana/dashboards/tidepool.json")
PY
else
  echo "python3-yaml not found: YAML syntax not checked" >&2
fi

if command -v systemd-analyze >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  sed 's|^ExecStart=[^ ]*|ExecStart=/bin/true|' \
    "$deploy/systemd/tidepoold.service" >"$tmp/tidepoold.service"
  # verify prints problems but exits 0 for some of them: fail on any output.
  out=$(systemd-analyze verify "$tmp/tidepoold.service" 2>&1 || echo "exit $?")
  if [ -n "$out" ]; then
    echo "systemd-analyze verify: $out" >&2
    exit 1
  fi
  echo "systemd-analyze verify: ok"
fi
echo "deploy checks passed"
