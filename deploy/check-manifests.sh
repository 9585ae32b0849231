#!/usr/bin/env bash
# Checks deploy/ with the tools that consume it, without a cluster or a Docker daemon:
#   - deploy/validate.py --require-tools: its cross-checks against the binary, then every
#     kustomization rendered by `kubectl kustomize` and each object validated (strict) against
#     the Kubernetes OpenAPI schemas (kubernetes-validate, offline; K8S_VERSIONS);
#   - hadolint on deploy/Dockerfile, shellcheck on deploy/*.sh;
#   - `podman-compose config` parses deploy/compose.yaml (that its services, volume and ports
#     match the image is checked by validate.py against the Dockerfile and by
#     deploy/test-image.sh against the built image).
# Installs the pinned tools (deploy/requirements-ci.txt) into a virtualenv. Run by .ci/run.
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
need_venv

python3 deploy/validate.py --require-tools

hadolint --version
hadolint deploy/Dockerfile
say "hadolint deploy/Dockerfile: no findings"

# The image's HEALTHCHECK script and these scripts.
need_debian shellcheck shellcheck
shellcheck -x deploy/*.sh
say "shellcheck deploy/*.sh: no findings"

# podman-compose only parses and normalises here (`config` runs no container; `--profile load`
# includes the loadgen service). It needs a podman binary on PATH to start at all.
need_podman
(cd deploy && podman-compose -f compose.yaml --profile load config > "$DEPLOY_WORK/compose.rendered.yaml")
python3 - "$DEPLOY_WORK/compose.rendered.yaml" <<'EOF'
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
want = {"banditd", "prometheus", "grafana", "loadgen"}
assert want <= set(c["services"]), f"podman-compose config: services {sorted(c['services'])}"
print(f"podman-compose config: parsed, services {sorted(c['services'])}, volumes {sorted(c.get('volumes') or {})}")
EOF
