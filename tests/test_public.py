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
