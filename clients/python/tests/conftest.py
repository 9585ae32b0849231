"""A real banditd for the tests: the binary from $BANDITD_BIN, else the repository's
target/release/banditd, else target/debug/banditd; on free loopback ports, with a temporary
data directory and a config file written here. Ready when gRPC health says SERVING."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterator, Optional

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[3]

# The embedded default's two models (README "Quick start"), with small hidden layers: these
# tests are about the wire, not learning, and the debug build's forward pass is slow.
MODELS = """
[[models]]
name = "wheel"
kind = "fixed_arms"
context_dim = 2
arms = ["0", "1", "2", "3", "4"]
hidden_layers = [16, 16]

[[models]]
name = "items"
kind = "per_arm_features"
context_dim = 8
arm_feature_dim = 8
hidden_layers = [16, 16]
seed = 43
"""

Settings = Dict[str, Dict[str, object]]


def binary() -> Path:
    """The banditd binary to test."""
    if os.environ.get("BANDITD_BIN"):
        path = Path(os.environ["BANDITD_BIN"])
        if not path.is_file():
            raise FileNotFoundError(f"BANDITD_BIN={path} does not exist")
        return path
    for profile in ("release", "debug"):
        path = REPO / "target" / profile / "banditd"
        if path.is_file():
            return path
    raise FileNotFoundError(
        "no banditd binary: set BANDITD_BIN or run `cargo build` in the repository"
    )


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"no TOML for {value!r}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Banditd:
    """A banditd process; ``target`` is its gRPC ``host:port``."""

    def __init__(
        self,
        workdir: Path,
        settings: Settings,
        *,
        credentials: Optional[grpc.ChannelCredentials] = None,
    ):
        self.workdir = workdir
        # For the health checks, when the server has TLS.
        self._credentials = credentials
        # A port free a moment ago may be taken by the time banditd binds it: try others.
        for _attempt in range(3):
            self.port, metrics_port = _free_port(), _free_port()
            self.target = f"127.0.0.1:{self.port}"
            sections: Settings = {
                "server": {
                    "grpc_addr": self.target,
                    "metrics_addr": f"127.0.0.1:{metrics_port}",
                    "drain_timeout_ms": 1000,
                },
                # No fsync per reward unless a test asks: the tests are not about the disk.
                "storage": {"data_dir": workdir / "data", "durability": "periodic"},
            }
            for name, values in settings.items():
                sections.setdefault(name, {}).update(values)
            config = workdir / "banditd.toml"
            config.write_text(
                "".join(
                    f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items())
                    for name, values in sections.items()
                )
                + MODELS
            )
            self.log = workdir / "banditd.log"
            # No token from the caller's environment may reach the server under test.
            env = {k: v for k, v in os.environ.items() if not k.startswith("BANDITD_")}
            env["RUST_LOG"] = "warn"
            with open(self.log, "wb") as log:
                self.process = subprocess.Popen(
                    [str(binary()), "--config", str(config)],
                    cwd=workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_serving(timeout=60.0):
                return
            if self.process.poll() is None:
                self.stop()
                raise RuntimeError(f"banditd not SERVING after 60 s:\n{self.log_text()}")
        raise RuntimeError(f"banditd exited at startup three times:\n{self.log_text()}")

    def channel(self) -> grpc.Channel:
        if self._credentials is None:
            return grpc.insecure_channel(self.target)
        return grpc.secure_channel(self.target, self._credentials)

    def _listening(self, deadline: float) -> bool:
        """True once the gRPC port accepts connections. Polled with plain TCP: a gRPC
        channel refused while the server starts backs off (seconds in older grpcio)."""
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
                return True
            except OSError:
                time.sleep(0.02)
        return False

    def _wait_serving(self, timeout: float) -> bool:
        """True once health says SERVING; False if the process exited first."""
        deadline = time.monotonic() + timeout
        if not self._listening(deadline):
            return False
        with self.channel() as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return True
                except grpc.RpcError:
                    pass  # not listening yet
                time.sleep(0.05)
        return False

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def start_banditd(tmp_path: Path) -> Iterator:
    """``start_banditd(settings, credentials=None)`` starts a banditd with these config
    sections (``{"server": {"max_in_flight": 1}}``), checking its health with these channel
    credentials; every one started is stopped after the test."""
    started = []

    def start(
        settings: Optional[Settings] = None,
        *,
        credentials: Optional[grpc.ChannelCredentials] = None,
    ) -> Banditd:
        workdir = tmp_path / f"banditd{len(started)}"
        workdir.mkdir()
        server = Banditd(workdir, settings or {}, credentials=credentials)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A ``host:port`` that accepts TCP connections (the kernel completes them) but never
    answers: every call to it can only end by its deadline."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Banditd]:
    """One default banditd shared by a test module."""
    server = Banditd(tmp_path_factory.mktemp("banditd"), {})
    yield server
    server.stop()
