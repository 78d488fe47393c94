"""The package's public surface, and what importing it costs."""

from __future__ import annotations

import subprocess
import sys

import trio_audio

HEAVY = ("quart", "hypercorn", "trio_websocket", "soundfile", "trio_audio.service")


def test_the_public_names_are_there() -> None:
    assert sorted(trio_audio.__all__) == [
        "Config",
        "Running",
        "ServiceError",
        "StoreError",
        "serve",
    ]
    for name in trio_audio.__all__:
        assert getattr(trio_audio, name) is not None
    assert callable(trio_audio.serve)


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


def test_an_asr_worker_starts_without_the_web_stack() -> None:
    # Each worker process imports its module: it must not pay for quart, hypercorn & co.
    loaded = run_python(
        "import sys, trio_audio.asr.worker; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    assert loaded == ""


def test_importing_the_package_loads_nothing_heavy_until_serve_is_used() -> None:
    loaded = run_python(
        "import sys, trio_audio; "
        f"before = [m for m in {HEAVY!r} if m in sys.modules]; "
        "trio_audio.serve; "
        "print(before, 'trio_audio.service' in sys.modules)"
    )
    assert loaded == "[] True"


def test_only_the_store_opener_knows_the_cluster_backend() -> None:
    # The backend seam: service, asr/ and web/ know a store only as StoreBackend. The cluster
    # package is imported by the one place that opens --store, the asr-worker command, and
    # the cluster's own benchmark.
    import ast
    from pathlib import Path

    root = Path(trio_audio.__file__).parent
    allowed = {"backend.py", "__main__.py", "bench/cluster.py"}
    importers = set()
    for path in root.rglob("*.py"):
        name = path.relative_to(root).as_posix()
        if name.startswith("cluster/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                parts = (node.module or "").split(".")
                # trio_audio.cluster..., or relative: .cluster (top level), ..cluster (one down)
                if parts[:2] == ["trio_audio", "cluster"] or (node.level and parts[0] == "cluster"):
                    importers.add(name)
            elif isinstance(node, ast.Import) and any(
                "trio_audio.cluster" in alias.name for alias in node.names
            ):
                importers.add(name)
    assert importers <= allowed, importers - allowed
    assert "backend.py" in importers
