"""The package's build backend: setuptools, after generating the gRPC stubs from the proto.

Why generate at build time rather than check the stubs in: the proto at the repository root
stays the one source of truth, so the stubs a user installs can never lag behind it, and no
one has to remember a regeneration step. grpcio-tools is pinned in pyproject.toml's
build-system requires, so the same proto always gives the same code.

Where the proto comes from:
- a repository checkout: ``../../proto`` (the server's own copy);
- an sdist: the stubs generated when the sdist was made travel inside it (build_sdist writes
  them first), so a wheel can be built from the sdist without the repository.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import build_meta as _setuptools

HERE = Path(__file__).resolve().parent.parent
PROTO_ROOT = HERE.parent.parent / "proto"
PROTO_FILE = "banditd/v1/bandit.proto"
OUT = HERE / "src"
GENERATED = OUT / "banditd" / "v1"


def _generate() -> None:
    """Writes banditd/v1/bandit_pb2{,_grpc}.py and .pyi from the proto into src/."""
    proto = PROTO_ROOT / PROTO_FILE
    if not proto.is_file():
        if (GENERATED / "bandit_pb2.py").is_file():
            return  # building from an sdist: its stubs were generated from the proto
        raise RuntimeError(
            f"cannot find {proto}: build the package from a banditd checkout "
            "(pip install ./clients/python) or from its sdist"
        )
    from grpc_tools import protoc  # the pinned build requirement

    GENERATED.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--python_out={OUT}",
        f"--pyi_out={OUT}",
        f"--grpc_python_out={OUT}",
        str(proto),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {proto}")
    (GENERATED / "__init__.py").write_text(
        f'"""Generated from {PROTO_FILE} at build time; do not edit."""\n'
    )


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _generate()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _generate()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory, config_settings=None):
    _generate()
    return _setuptools.build_sdist(sdist_directory, config_settings)


# Everything else (metadata, extra build requirements) is setuptools' own.
get_requires_for_build_wheel = _setuptools.get_requires_for_build_wheel
get_requires_for_build_editable = _setuptools.get_requires_for_build_editable
get_requires_for_build_sdist = _setuptools.get_requires_for_build_sdist
prepare_metadata_for_build_wheel = _setuptools.prepare_metadata_for_build_wheel
prepare_metadata_for_build_editable = _setuptools.prepare_metadata_for_build_editable
