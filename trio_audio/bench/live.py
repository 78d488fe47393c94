"""Live sessions: how many real-time talkers one machine keeps up with, how soon each
utterance's final words arrive after its speech ends, and how right they are.

    python -m trio_audio.bench.live [--sessions 1,2,4,8] [--seconds 30] [--server-arg=...]

A real ``trio-audio serve`` (the default speech engine unless ``--server-arg`` says
otherwise) on a fresh data dir; N WebSocket clients each stream speech in real time (100 ms
frames of 16 kHz PCM, paced by the clock): recordings of people (the held-out real speech of
``bench.speech``, which nothing was tuned on; ``--speech espeak``: the committed espeak
sentences), whole, with a second of silence after each, talker *n* of N starting *n*/N of
the way through the recordings (together they cover the set evenly, not its first few
again and again) after 0-2 s of silence (talkers do not all pause at once), as many as end
within ``--seconds``. Each recording is a session of its own, ended with ``end`` (a call
each: they are different people saying unrelated things, and a session's earlier words
prompt its next ones); ``--one-session`` streams a talker's recordings as one session.

- **Latency** of an utterance: the arrival of the last final ``transcript`` holding its
  words (one is sent per chunk, once the chunk's transcript is stored) minus the moment
  its speech ended (the end of the recording's last 20 ms frame within 35 dB of its
  loudest, on the clock that paces the frames). It includes the ``vad_gap_ms`` of silence
  that ends an utterance. A load is "kept" when the p95 is at most ``--within-s`` (1.5 s).
- **WER**: every session's final words against the sentences it sent, after Whisper's
  English normaliser, summed over the sessions.
- **Short window**: the finals decoded in the short window to keep their deadline.
- **Partials**: how many utterances showed words in a partial ``transcript`` before their
  final (what the console shows while someone speaks), of all and of those with ``LONG_S``
  of speech or more, and the p50/p95 time from the start of an utterance's speech to its
  first partial with words. With N talkers the workers are
  busy with the others' finals: this is whether a talker still sees words while speaking.

Not a test: nothing here asserts; numbers go to stdout for the README.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any, Final

import attrs
import httpx
import numpy as np
import soundfile as sf
import trio
from trio_websocket import open_websocket_url

from ..audio import vad
from .console import console_talker
from .procs import tree_cpu_s
from .runner import run_server
from .textnorm import word_errors

RATE = 16000
FRAME_S = 0.1
PAUSE_S = 1.0  # silence after each sentence
MAX_LEAD_S = 2.0  # the last talker starts after this much silence
SPEECH_BELOW_PEAK_DB = 35.0  # a 20 ms frame this far below a recording's loudest is not speech
SPAN_FRAME = RATE // 50
LONG_S = 2.0  # an utterance this long should show words while it is spoken
SPEECH = Path(__file__).resolve().parent.parent.parent / "tests" / "fixtures" / "speech"


@attrs.frozen
class Script:
    """What one talker says: the audio, and each sentence's text, speech start and end (s)."""

    audio: np.ndarray = attrs.field(eq=False, repr=False)
    texts: tuple[str, ...]
    starts_s: tuple[float, ...]
    ends_s: tuple[float, ...]
    pieces: tuple[tuple[int, int], ...] = ()  # each recording and its pause: [from, to) samples

    def sentence_at(self, ms: float) -> int:
        """The sentence a word ending at *ms* (session timeline) belongs to."""
        later = [i for i, end in enumerate(self.ends_s) if ms / 1000 <= end + PAUSE_S / 2]
        return later[0] if later else len(self.ends_s) - 1


def sentences(kind: str = "real") -> list[tuple[str, np.ndarray]]:
    """(text, 16 kHz float audio) of each recording: people (``real``, or ``more``: the second
    held-out set of ``bench.speech``) or the committed espeak fixtures (``espeak``, text from
    the file name)."""
    if kind in ("real", "more"):
        from .speech import more_set, real_items  # the Debian packages' recordings

        items = real_items() if kind == "real" else more_set()
        return [(item.text, item.audio.astype(np.float32)) for item in items]
    out = []
    for path in sorted(SPEECH.glob("*.flac")):
        samples, rate = sf.read(path, dtype="float32")
        out.append((path.stem.replace("_", " "), vad.resample(samples, rate, RATE)))
    return out


def speech_span(audio: np.ndarray) -> tuple[int, int]:
    """Where a recording's speech starts and ends (samples): its first and last 20 ms frames
    within ``SPEECH_BELOW_PEAK_DB`` of its loudest (a recording's own noise floor differs)."""
    frames = audio[: audio.size // SPAN_FRAME * SPAN_FRAME].reshape(-1, SPAN_FRAME)
    if not frames.size:
        return 0, audio.size
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (-SPEECH_BELOW_PEAK_DB / 20))
    return int(loud[0]) * SPAN_FRAME, (int(loud[-1]) + 1) * SPAN_FRAME


def script(seconds: float, n: int, sessions: int, kind: str = "real") -> Script:
    """Talker *n* of *sessions*: whole sentences with a pause after each, from *n*/*sessions*
    of the way through the recordings on, after a lead of silence, as many as fit in
    *seconds*."""
    said = sentences(kind)
    lead = np.zeros(int(MAX_LEAD_S * n / max(1, sessions) * RATE), np.float32)
    pause = np.zeros(int(PAUSE_S * RATE), np.float32)
    pieces, texts, starts, ends, spans = [lead], [], [], [], []
    at = lead.size
    for k in range(len(said) * 1000):
        text, audio = said[(n * len(said) // max(1, sessions) + k) % len(said)]
        if at + audio.size + pause.size > seconds * RATE:
            break
        first, last = speech_span(audio)
        starts.append((at + first) / RATE)
        ends.append((at + last) / RATE)
        texts.append(text)
        pieces += [audio, pause]
        spans.append((at, at + audio.size + pause.size))
        at += audio.size + pause.size
    return Script(np.concatenate(pieces), tuple(texts), tuple(starts), tuple(ends), tuple(spans))


@attrs.define
class Heard:
    """What one client got: the arrival (clock s) of each sentence's last final and of its
    first partial with words, its final words in order, and how many finals were decoded in
    the short window."""

    script: Script
    arrivals: dict[int, float] = attrs.field(factory=dict)
    partials: dict[int, float] = attrs.field(factory=dict)
    said: dict[int, list[str]] = attrs.field(factory=dict)  # final words, by sentence
    finals: int = 0
    short: int = 0
    began: float = 0.0

    def latencies(self) -> list[float]:
        return [at - (self.began + self.script.ends_s[i]) for i, at in self.arrivals.items()]

    def first_partials(self) -> list[float]:
        """From each utterance's speech start to its first partial, if one came before its
        final."""
        return [at - (self.began + self.script.starts_s[i]) for i, at in self.partials.items()
                if at <= self.arrivals.get(i, float("inf"))]  # fmt: skip


STEP: Final = int(FRAME_S * RATE)  # samples a frame


async def client(url: str, n: int, heard: Heard, *, one_session: bool = False) -> None:
    """Talker *n*: each recording as a session of its own (a call each: the recordings are
    different people saying unrelated things), started as its audio begins while the one
    before may still be finishing; with *one_session*, all of them in one session."""
    pcm = vad.to_pcm16(heard.script.audio).astype("<i2").tobytes()
    heard.began = trio.current_time()
    spans = [(0, len(pcm) // 2)] if one_session else heard.script.pieces
    async with trio.open_nursery() as talks:
        for k, (first, last) in enumerate(spans):
            await trio.sleep_until(heard.began + first / RATE)
            done = trio.Event()
            talks.start_soon(talk, url, f"live{n}" if one_session else f"live{n}-{k}", pcm,
                             (first, last), None if one_session else k, heard, done)  # fmt: skip
            await done.wait()  # its audio is sent: the next call may begin


async def talk(url: str, session_id: str, pcm: bytes, span: tuple[int, int],
               sentence: int | None, heard: Heard, sent: trio.Event) -> None:  # fmt: skip
    """One session: the samples of *span* in real time, then ``end``; what comes back is
    noted in *heard* (every word is of *sentence*, or found by its time when None)."""
    fmt = {"encoding": "pcm_s16le", "sample_rate": RATE, "channels": 1}
    began = heard.began + span[0] / RATE
    async with open_websocket_url(url) as ws:
        await ws.send_message(json.dumps(
            {"type": "start", "user_id": "bench", "session_id": session_id, "format": fmt}
        ))  # fmt: skip
        json.loads(await ws.get_message())  # started

        def sentence_of(ms: float) -> int:
            return heard.script.sentence_at(ms) if sentence is None else sentence

        async def receive() -> None:
            while True:
                message: dict[str, Any] = json.loads(await ws.get_message())
                words = message.get("words") or []
                if message.get("type") == "transcript" and not message.get("is_final") and words:
                    heard.partials.setdefault(sentence_of(words[-1]["end_ms"]),
                                              trio.current_time())  # fmt: skip
                if message.get("type") == "transcript" and message.get("is_final") and words:
                    now = trio.current_time()
                    heard.finals += 1
                    heard.short += bool(message.get("short_window"))
                    heard.said.setdefault(sentence_of(words[0]["end_ms"]), []).extend(
                        w["word"] for w in words
                    )
                    for word in words:
                        heard.arrivals[sentence_of(word["end_ms"])] = now
                if message.get("type") == "session_end":
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            for at in range(span[0], span[1], STEP):
                await trio.sleep_until(began + (at - span[0]) / RATE)  # real time, as recorded
                await ws.send_message(pcm[2 * at : 2 * min(at + STEP, span[1])])
            await ws.send_message(json.dumps({"type": "end"}))
            sent.set()


def seen_on_screen(heard: Heard, shown: dict[str, Any]) -> None:
    """Note in *heard* what the console's transcript panel showed (``bench.console``): its
    partials and final words, on the page's clock from its first frame."""
    if shown["first"] is None:
        return  # the page sent nothing: nothing was heard either
    heard.began = shown["first"] / 1000
    for change in shown["seen"]:
        at, words = change["t"] / 1000, change["words"]  # [word, start_ms, end_ms]
        if change["kind"] == "partial":
            heard.partials.setdefault(heard.script.sentence_at(words[-1][2]), at)
            continue
        heard.said.setdefault(heard.script.sentence_at(words[0][2]), []).extend(w[0] for w in words)
        for word in words:
            heard.arrivals[heard.script.sentence_at(word[2])] = at


@attrs.frozen
class Load:
    """What a load's talkers heard, and what the server spent on them: its and its
    workers' CPU seconds, and the workers' decode seconds by kind (final, partial)."""

    heard: list[Heard]
    cpu_s: float = 0.0
    decode_s: dict[str, float] = attrs.field(factory=dict)
    early: dict[str, float] = attrs.field(factory=dict)  # early finals by outcome

    def costs(self) -> str:
        """The server's side of the line: CPU per audio second, partials' share."""
        out = ""
        audio_s = sum(h.script.audio.size for h in self.heard) / RATE
        if self.cpu_s:
            out += f"  CPU s per audio s {self.cpu_s / audio_s:.3f}"
        decoding = sum(self.decode_s.values(), 0.0)
        if decoding:
            out += f"  partials {self.decode_s.get('partial', 0.0) / decoding:.0%} of decoding"
        if self.early:
            out += "  early finals " + " ".join(f"{k} {v:.0f}" for k, v in self.early.items())
        return out


async def one_load(
    sessions: int,
    seconds: float,
    server_args: list[str],
    kind: str = "real",
    one_session: bool = False,
    console: bool = False,
) -> Load:
    """*sessions* talkers on a fresh server; with *console*, talker 0 is the web console."""
    heard = [Heard(script(seconds, n, sessions, kind)) for n in range(sessions)]
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "trio_audio", "serve", "--port", "0", "--ws-port", "0",
                   "--data-dir", str(Path(tmp) / "data"), "--log-level", "info",
                   *server_args]  # fmt: skip
        async with trio.open_nursery() as nursery:
            server = await nursery.start(run_server, command)
            await trio.sleep(5)  # the workers load their model (a cold start is not the point)
            before = tree_cpu_s(server.process.pid)
            async with trio.open_nursery() as clients:
                if console:
                    clients.start_soon(on_screen, server.http_url, heard[0], seconds)
                for n in range(int(console), sessions):
                    clients.start_soon(partial(client, server.ws_url, n, heard[n],
                                               one_session=one_session))  # fmt: skip
            cpu_s = tree_cpu_s(server.process.pid) - before  # the server and its workers
            text = await metrics_text(server.http_url)
            decode_s = gauge(text, "trio_audio_transcribe_decode_seconds")
            early = gauge(text, "trio_audio_transcribe_early_finals")
            nursery.cancel_scope.cancel()
    return Load(heard, cpu_s, decode_s, early)


async def metrics_text(http_url: str) -> str:
    """The server's ``/metrics`` ("" when it does not answer)."""
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            return (await client.get(http_url + "/metrics")).text
    except httpx.HTTPError:
        return ""


def gauge(text: str, name: str) -> dict[str, float]:
    """A gauge's values in *text* (``/metrics``) by its one label's value: the workers'
    decode time by kind (final, partial), early finals by outcome."""
    found = re.findall(rf'^{name}\{{\w+="(\w+)"\}} (\S+)$', text, re.M)
    return {label: float(value) for label, value in found}


async def on_screen(http_url: str, heard: Heard, seconds: float) -> None:
    """Talker 0 as a person in the console: its script streamed from **Stream a file**."""
    shown = await console_talker(http_url, heard.script.audio, RATE, "console0", seconds + 90)
    seen_on_screen(heard, shown)


def _p95(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


def summary(sessions: int | str, heard: list[Heard], within_s: float) -> str:
    """One line of the table for what *heard* got (a load's talkers, or one of them)."""
    latencies = sorted(x for h in heard for x in h.latencies())
    said = sum(len(h.script.texts) for h in heard)
    if not latencies:
        return f"{sessions:>8}  {0:>4}/{said:<4}  no finals"
    p95 = _p95(latencies)
    kept = "yes" if p95 <= within_s else "no"
    edits = words = 0
    for h in heard:
        heard_words = [w for k in sorted(h.said) for w in h.said[k]]
        e, w = word_errors(" ".join(h.script.texts), " ".join(heard_words))
        edits, words = edits + e, words + w
    short = f"{sum(h.short for h in heard)}/{sum(h.finals for h in heard)}"
    firsts = sorted(x for h in heard for x in h.first_partials())
    partials = f"{len(firsts)}/{len(latencies)}"
    long = [(h, i) for h in heard for i in h.arrivals  # those a talker speaks long enough
            if h.script.ends_s[i] - h.script.starts_s[i] >= LONG_S]  # fmt: skip
    early = sum(h.partials.get(i, math.inf) <= h.arrivals[i] for h, i in long)
    partials += f" (of {LONG_S:.0f} s or longer: {early}/{len(long)})"
    if firsts:
        p95_first = _p95(firsts)
        partials += f" {statistics.median(firsts):.2f}/{p95_first:.2f}"
    return (f"{sessions:>8}  {len(latencies):>4}/{said:<4}  {statistics.median(latencies):6.2f}  "
            f"{p95:6.2f}  {latencies[-1]:6.2f}  {kept:>4}  {short:>12}  "
            f"{edits / words:6.1%} ({edits}/{words})  {partials}")  # fmt: skip


def print_errors(heard: list[Heard]) -> None:
    """Each sentence a talker's finals got wrong: edits, what was said, what was heard."""
    for n, h in enumerate(heard):
        for i, text in enumerate(h.script.texts):
            words = " ".join(h.said.get(i, []))
            edits, _ = word_errors(text, words)
            if edits:
                print(f"  talker {n} sentence {i}: {edits} | {text} | {words}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="1,2,4,6,8")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--within-s", type=float, default=1.5)
    parser.add_argument("--server-arg", action="append", default=[], dest="server_args")
    parser.add_argument(
        "--speech",
        choices=("real", "more", "espeak"),
        default="real",
        help="the held-out recordings (real), the second held-out set (more: 186 prompts "
        "nothing here was tuned on) or the committed espeak sentences",
    )
    parser.add_argument(
        "--one-session",
        action="store_true",
        help="each talker streams all its recordings in one session (default: a session "
        "each: the recordings are unrelated people, and one session's earlier words are the "
        "decoder's prompt for the next)",
    )
    parser.add_argument(
        "--details", action="store_true", help="print each sentence heard wrong, and as what"
    )
    parser.add_argument(
        "--console",
        action="store_true",
        help="talker 0 is the web console in headless Chromium (Stream a file), its words "
        "timed as its transcript panel shows them; its own line follows each load's",
    )
    args = parser.parse_args()
    print(
        "latency: from the end of an utterance's speech to its last final (s); partials: "
        "utterances with one before their final, p50/p95 s from the speech's start"
    )
    print(f"{'sessions':>8}  {'heard/said':>9}  {'p50 s':>6}  {'p95 s':>6}  {'max s':>6}  "
          f"kept  {'short window':>12}  WER  partials")  # fmt: skip
    for sessions in (int(s) for s in args.sessions.split(",")):
        load = trio.run(one_load, sessions, args.seconds, args.server_args, args.speech,
                        args.one_session, args.console)  # fmt: skip
        print(summary(sessions, load.heard, args.within_s) + load.costs(), flush=True)
        if args.details:
            print_errors(load.heard)
        if args.console:
            print(summary("console", load.heard[:1], args.within_s), flush=True)


if __name__ == "__main__":
    main()
