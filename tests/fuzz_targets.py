"""Coverage-guided fuzzing (atheris) of what reads untrusted bytes: ``nox -s fuzz``.

    python -m tests.fuzz_targets seed CORPUS_DIR      # real files of every format, to start from
    python -m tests.fuzz_targets decode CORPUS_DIR -runs=20000

Targets: ``decode`` (every audio decoder, with sniffing and raw PCM), ``control`` (the
WebSocket message parser), ``replay`` (log replay of an arbitrary segment file). A target
fails the run on any exception that is not one of the project's typed errors.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from trio_audio.audio.decode import RawFormat, decode
    from trio_audio.errors import ServiceError, StoreError
    from trio_audio.store.files import log_dir
    from trio_audio.store.replay import replay
    from trio_audio.web.messages import parse_control, parse_start

MEDIA = ["", "audio/wav", "audio/flac", "audio/ogg", "audio/mpeg", "application/octet-stream",
         "audio/L16; rate=8000; channels=2"]  # fmt: skip
RAWS = [None, RawFormat("pcm_s16le", 16000, 1), RawFormat("pcm_s24le", 8000, 2)]
SCRATCH = Path(tempfile.mkdtemp(prefix="fuzz-replay-"))


def fuzz_decode(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    media = MEDIA[fdp.ConsumeIntInRange(0, len(MEDIA) - 1)]
    raw = RAWS[fdp.ConsumeIntInRange(0, len(RAWS) - 1)]
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    with contextlib.suppress(ServiceError):
        decode(body, content_type=media, raw=raw, max_duration_s=60)


def fuzz_control(data: bytes) -> None:
    with contextlib.suppress(ServiceError):
        parse_start(parse_control(data.decode("utf-8", "replace")), {})


def fuzz_replay(data: bytes) -> None:
    segment = log_dir(SCRATCH) / "0000000000000001.seg"
    segment.parent.mkdir(exist_ok=True)
    for stale in segment.parent.iterdir():
        stale.unlink()
    segment.write_bytes(data)
    with contextlib.suppress(StoreError):
        replay(SCRATCH, lambda record: None)


TARGETS = {"decode": fuzz_decode, "control": fuzz_control, "replay": fuzz_replay}


def write_seeds(directory: Path) -> None:
    from .strategies import SEEDS

    directory.mkdir(parents=True, exist_ok=True)
    for n, seed in enumerate(SEEDS):
        (directory / f"seed-{n}").write_bytes(seed)


if __name__ == "__main__":
    if sys.argv[1] == "seed":
        write_seeds(Path(sys.argv[2]))
        sys.exit(0)
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()
