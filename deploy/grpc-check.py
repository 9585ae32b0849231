#!/usr/bin/env python3
"""gRPC calls into a running banditd, for deploy/test-image.sh (no grpcurl in Debian).

    grpc-check.py ADDR health [SERVICE]            print SERVING / NOT_SERVING / ... ; exit 0
                                                   only when SERVING
    grpc-check.py ADDR wait-serving SECONDS        poll health ("") until SERVING or time out
    grpc-check.py ADDR decide MODEL ID X,Y,...     ChooseArm with a client-chosen decision id;
                                                   print JSON {decision_id, arm_id, model_version}
    grpc-check.py ADDR report MODEL ID REWARD      ReportReward; print JSON {duplicate}
    grpc-check.py ADDR model MODEL                 GetModel; print JSON {decisions, rewards, ...}

The banditd stubs are compiled from proto/banditd/v1/bandit.proto at start (grpc_tools), so
they always match the repository's proto. Needs grpcio, grpcio-tools and
grpcio-health-checking (deploy/requirements-ci.txt). Errors print the gRPC status and exit 1.
"""

import importlib
import json
import os
import sys
import tempfile
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO = "banditd/v1/bandit.proto"
TIMEOUT_S = float(os.environ.get("GRPC_CHECK_TIMEOUT_S", "10"))


def stubs():
    """Compiles the proto into a temporary package and imports its message and service modules."""
    out = tempfile.mkdtemp(prefix="banditd-stubs-")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{ROOT}/proto", f"-I{include}", f"--python_out={out}",
                      f"--grpc_python_out={out}", PROTO])
    if rc != 0:
        sys.exit(f"grpc-check: protoc failed on proto/{PROTO}")
    sys.path.insert(0, out)
    return (importlib.import_module("banditd.v1.bandit_pb2"),
            importlib.import_module("banditd.v1.bandit_pb2_grpc"))


def health(channel, service):
    request = health_pb2.HealthCheckRequest(service=service)
    reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=TIMEOUT_S)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    addr, command, args = argv[1], argv[2], argv[3:]
    channel = grpc.insecure_channel(addr)
    try:
        if command == "health":
            status = health(channel, args[0] if args else "")
            print(status)
            return 0 if status == "SERVING" else 1
        if command == "wait-serving":
            deadline = time.monotonic() + float(args[0])
            last = "no answer"
            while time.monotonic() < deadline:
                try:
                    last = health(channel, "")
                    if last == "SERVING":
                        print(last)
                        return 0
                except grpc.RpcError as e:
                    last = f"{e.code().name}: {e.details()}"
                time.sleep(0.5)
            print(f"not SERVING after {args[0]} s (last: {last})", file=sys.stderr)
            return 1
        pb, pb_grpc = stubs()
        api = pb_grpc.BanditServiceStub(channel)
        if command == "decide":
            model, decision_id, context = args
            reply = api.ChooseArm(pb.ChooseArmRequest(
                model=model, decision_id=decision_id,
                context=[float(x) for x in context.split(",")]), timeout=TIMEOUT_S)
            print(json.dumps({"decision_id": reply.decision_id, "arm_id": reply.arm_id,
                              "model_version": reply.model_version}))
            return 0
        if command == "report":
            model, decision_id, reward = args
            reply = api.ReportReward(pb.ReportRewardRequest(
                model=model, decision_id=decision_id, reward=float(reward)), timeout=TIMEOUT_S)
            print(json.dumps({"duplicate": reply.duplicate}))
            return 0
        if command == "model":
            reply = api.GetModel(pb.GetModelRequest(model=args[0]), timeout=TIMEOUT_S)
            print(json.dumps({"name": reply.name, "decisions": reply.decisions,
                              "rewards": reply.rewards, "model_version": reply.model_version}))
            return 0
        sys.exit(f"grpc-check: unknown command {command!r}\n{__doc__}")
    except grpc.RpcError as e:
        print(f"grpc-check {command}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"grpc-check {command}: bad argument: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
