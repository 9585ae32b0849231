#!/usr/bin/env python3
"""Writes the seed inputs of the `requests` fuzz target (see fuzz_targets/requests.rs for the
frame layout): well-formed requests for both default models, so the fuzzer starts past the
model lookup. Protobuf is encoded by hand to need nothing but Python."""
import os
import struct

def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])

def ld(field, payload):  # length-delimited field
    return varint(field << 3 | 2) + varint(len(payload)) + payload

def floats(values):
    return struct.pack("<%df" % len(values), *values)

def double(field, value):
    return varint(field << 3 | 1) + struct.pack("<d", value)

def frame(kind, payload):
    return bytes([kind]) + struct.pack("<H", len(payload)) + payload

CHOOSE, REPORT, GET = 0, 1, 2

def choose(model, context, candidates=(), excluded=(), decision_id=""):
    msg = ld(1, model.encode()) + ld(2, floats(context))
    for arm_id, features in candidates:
        arm = ld(1, arm_id.encode()) + (ld(2, floats(features)) if features else b"")
        msg += ld(3, arm)
    for arm_id in excluded:
        msg += ld(4, arm_id.encode())
    if decision_id:
        msg += ld(5, decision_id.encode())
    return frame(CHOOSE, msg)

def report(model, decision_id, reward, regret=None):
    msg = ld(1, model.encode()) + ld(2, decision_id.encode()) + double(3, reward)
    if regret is not None:
        msg += double(4, regret)
    return frame(REPORT, msg)

def get(model):
    return frame(GET, ld(1, model.encode()))

seeds = {
    "wheel_choose": choose("wheel", [0.3, -0.8]),
    "wheel_choose_report": choose("wheel", [0.3, -0.8], decision_id="d-1")
    + report("wheel", "d-1", 1.0, 0.5)
    + report("wheel", "d-1", 1.0),
    "wheel_subset_excluded": choose("wheel", [0.1, 0.2], [("0", []), ("3", [])], ["3"]),
    "items_choose_report": choose(
        "items", [0, 0, 0, 0, 0, 0, 0, 0.5],
        [("sku-1", [1, 0, 0, 0, 0, 0, 0, 0]), ("sku-2", [0, 1, 0, 0, 0, 0, 0, 0])],
        decision_id="i-1")
    + report("items", "i-1", 0.0),
    "get_models": get("wheel") + get("items") + get(""),
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requests")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
