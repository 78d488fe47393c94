"""Transcription end to end: real servers, real worker processes, espeak-ng speech.

Exact sentences come back through a JSGF grammar; the default language model is only held
to words with sane timings for speech and nothing for silence.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import trio
from trio_websocket import open_websocket_url

from trio_audio.bench.live import gauge, speech_span
from trio_audio.config import Config
from trio_audio.hub import Message
from trio_audio.metrics import Metrics
from trio_audio.models import Job, Part
from trio_audio.pipeline.pipeline import run_pipeline
from trio_audio.store.files import FileOps
from trio_audio.store.store import Store
from trio_audio.web.auth import add_token

from .conftest import Server, StartServer
from .speech import (
    NAME,
    NAME_SENTENCE,
    OTHER_SENTENCE,
    RATE,
    SENTENCE,
    grammar_file,
    pieces,
    speak,
    to_wav,
)

TIMEOUT_S = 20


async def grammar_server(start_server: StartServer, tmp_path: Path, **config: Any) -> Server:
    config.setdefault("asr_partial_interval_s", 0.01)  # a partial for every chunk
    server: Server = await start_server(
        asr_engine="pocketsphinx", asr_grammar=str(grammar_file(tmp_path)), **config
    )
    return server


async def upload(client: httpx.AsyncClient, session: str, samples: np.ndarray) -> dict[str, Any]:
    response = await client.post(
        "/upload", params={"user_id": "alice", "session_id": session},
        content=to_wav(samples), headers={"Content-Type": "audio/wav"},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    chunk: dict[str, Any] = response.json()
    return chunk


async def transcribed(client: httpx.AsyncClient, session: str) -> dict[str, Any]:
    """The session's listing once no chunk of it is pending."""
    with trio.fail_after(TIMEOUT_S):
        while True:
            listing = (await client.get(f"/sessions/alice?session_id={session}")).json()
            found: dict[str, Any] = listing["sessions"][0]
            if all(c["transcript"]["status"] != "pending" for c in found["chunks"]):
                return found
            await trio.sleep(0.05)


def drain(sub_receive: trio.MemoryReceiveChannel[Message]) -> list[dict[str, Any]]:
    """The messages a watcher has been sent so far, as it reads them."""
    out = []
    while True:
        try:
            out.append(json.loads(sub_receive.receive_nowait().text))
        except trio.WouldBlock:
            return out


def final_text(finals: list[dict[str, Any]]) -> str:
    return " ".join(m["text"] for m in finals if m["text"])


def check_chunk_words(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every word lies in the chunk it starts in, on the session timeline, in order."""
    words = []
    for chunk in chunks:
        start, end = chunk["offset_ms"], chunk["offset_ms"] + chunk["audio"]["duration_ms"]
        for word in chunk["transcript"]["words"]:
            assert start <= word["start_ms"] < end, (word, start, end)
            assert word["start_ms"] < word["end_ms"]
            assert 0 <= word["confidence"] <= 1
        assert chunk["transcript"]["text"] == " ".join(
            w["word"] for w in chunk["transcript"]["words"]
        )
        words += chunk["transcript"]["words"]
    assert [w["start_ms"] for w in words] == sorted(w["start_ms"] for w in words)
    return words


async def test_chunks_get_words_of_their_span_and_watchers_partials_then_finals(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await grammar_server(start_server, tmp_path)
    audio = np.concatenate([speak(SENTENCE, lead_s=0.5), speak(OTHER_SENTENCE)])
    hub, transcriber = server.running.hub, server.running.transcriber
    assert hub is not None and transcriber is not None
    with trio.fail_after(TIMEOUT_S):
        await transcriber.workers_started.wait()  # partials need a worker that is up
    with hub.subscribe("alice", "talk") as sub:
        async with server.client() as client:
            for piece in pieces(audio, 0.5):  # words cross the chunk boundaries
                chunk = await upload(client, "talk", piece)
                assert chunk["transcript"]["status"] == "pending"
                assert 0 <= chunk["features"]["speech_ratio"] <= 1
                await trio.sleep(0.25)  # a live client: each piece as it is recorded (2x)
            session = await transcribed(client, "talk")
        messages = drain(sub.receive)
    assert session["transcript"] == {"status": "done", "text": f"{SENTENCE} {OTHER_SENTENCE}"}
    words = check_chunk_words(session["chunks"])
    assert [w["word"] for w in words] == f"{SENTENCE} {OTHER_SENTENCE}".split()
    assert sum(bool(c["features"]["speech_segments"]) for c in session["chunks"]) >= 4

    transcripts = [m for m in messages if m["type"] == "transcript"]
    finals = [m for m in transcripts if m["is_final"]]  # each chunk's, once it is stored
    assert [m["chunk_id"] for m in finals] == [c["chunk_id"] for c in session["chunks"]]
    assert final_text(finals) == f"{SENTENCE} {OTHER_SENTENCE}"
    first_words = transcripts.index(next(m for m in finals if m["words"]))
    assert any(not m["is_final"] for m in transcripts[:first_words])  # partials came first
    assert [w["word"] for m in finals for w in m["words"]] == [w["word"] for w in words]
    events = [(m["event"], m["at_ms"]) for m in messages if m["type"] == "vad"]
    assert [e for e, _ in events] == ["speech_started", "speech_stopped"] * 2
    assert [t for _, t in events] == sorted(t for _, t in events)
    assert events[0][1] <= words[0]["start_ms"] + 300 and events[1][1] >= words[4]["end_ms"] - 300


async def test_default_model_words_for_speech_and_nothing_for_silence(
    start_server: StartServer,
) -> None:
    server: Server = await start_server(asr_engine="pocketsphinx")
    async with server.client() as client:
        await upload(client, "quiet", np.zeros(2 * RATE, np.float32))
        speech = speak("the weather is nice today and the sun is shining")
        chunk = await upload(client, "talk", speech)
        quiet = await transcribed(client, "quiet")
        talk = await transcribed(client, "talk")
        metrics = (await client.get("/metrics")).text
    assert quiet["chunks"][0]["transcript"] == {"status": "done", "text": "", "words": []}
    assert quiet["chunks"][0]["features"]["speech_ratio"] == 0.0
    words = check_chunk_words(talk["chunks"])
    assert len(words) >= 3
    assert words[-1]["end_ms"] <= chunk["audio"]["duration_ms"]
    assert 'trio_audio_transcripts{status="done"} 2' in metrics
    assert 'trio_audio_transcribe_backlog{worker="0"} 0' in metrics


async def test_finalize_ends_an_open_utterance(start_server: StartServer, tmp_path: Path) -> None:
    server = await grammar_server(start_server, tmp_path)
    transcriber = server.running.transcriber
    assert transcriber is not None
    async with server.client() as client:
        chunk = await upload(client, "open", speak(SENTENCE, tail_s=0.0))
        with trio.fail_after(TIMEOUT_S):
            await transcriber.finalize("alice", "open")
        stored = (await client.get(f"/chunks/{chunk['chunk_id']}")).json()
    assert stored["transcript"]["status"] == "done"
    assert stored["transcript"]["text"] == SENTENCE


async def test_finalize_through_a_seq_waits_for_that_chunk_before_ending(
    start_server: StartServer, tmp_path: Path
) -> None:
    # A cluster's finalize names the session's last pending chunk: the holder's work may lag
    # the node that asked. Ended before that chunk came, the utterance would be cut short and
    # the chunk would wait for the session to go idle.
    server = await grammar_server(start_server, tmp_path)
    transcriber = server.running.transcriber
    assert transcriber is not None
    audio = speak(SENTENCE, tail_s=0.0)
    half = len(audio) // 2
    first, second = audio[:half], audio[half:]
    ended = trio.Event()

    async def finalize() -> None:
        await transcriber.finalize("alice", "lag", through=1)
        ended.set()

    async with server.client() as client, trio.open_nursery() as nursery:
        await upload(client, "lag", first)
        nursery.start_soon(finalize)
        await upload(client, "lag", second)
        with trio.fail_after(TIMEOUT_S):
            await ended.wait()
        listing = (await client.get("/sessions/alice?session_id=lag")).json()
    chunks = listing["sessions"][0]["chunks"]
    assert [c["transcript"]["status"] for c in chunks] == ["done", "done"]
    assert listing["sessions"][0]["transcript"]["text"] == SENTENCE


async def test_past_the_audio_budget_chunks_are_read_back_from_the_log_in_order(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await grammar_server(start_server, tmp_path, asr_backlog_bytes=1)
    transcriber = server.running.transcriber
    assert transcriber is not None
    audio = np.concatenate([speak(SENTENCE), speak(OTHER_SENTENCE)])
    async with server.client() as client:
        for piece in pieces(audio, 0.25):
            await upload(client, "busy", piece)  # uploads never wait for transcription
        assert transcriber.counts["deferred"] > 0  # no room for its PCM: read back later
        session = await transcribed(client, "busy")
    assert session["transcript"]["text"] == f"{SENTENCE} {OTHER_SENTENCE}"
    assert transcriber.pcm_bytes == 0


async def test_a_long_file_does_not_hold_another_sessions_words(
    start_server: StartServer, tmp_path: Path
) -> None:
    # One worker; a file of six utterances arrives first (six chunks in one request, each
    # an utterance of its own: six decodes), then a short session.
    server = await grammar_server(start_server, tmp_path, asr_workers=1)
    hub = server.running.hub
    assert hub is not None
    said = [speak(SENTENCE if n % 2 else OTHER_SENTENCE) for n in range(6)]
    files = [("file", (f"{n}.wav", to_wav(a), "audio/wav")) for n, a in enumerate(said)]
    with hub.subscribe("alice", "file") as file_sub, hub.subscribe("alice", "short") as short_sub:
        async with server.client() as client:
            stored = await client.post("/upload", params={"user_id": "alice", "session_id": "file"},
                                       files=files)  # fmt: skip
            assert stored.status_code == 201, stored.text
            await upload(client, "short", speak(SENTENCE))
            await transcribed(client, "short")
            file_finals_by_then = [
                m for m in drain(file_sub.receive)
                if m["type"] == "transcript" and m["is_final"] and m["words"]
            ]  # fmt: skip
            await transcribed(client, "file")
        short_finals = [m for m in drain(short_sub.receive) if m.get("is_final")]
    assert final_text(short_finals) == SENTENCE
    assert len(file_finals_by_then) < 6  # the short session took its turn, not the last one


async def test_chunks_pending_at_a_crash_are_transcribed_after_replay(
    start_server: StartServer, tmp_path: Path, data_dir: Path
) -> None:
    # A store and pipeline with no transcriber: what a crash right after the commits leaves.
    config = Config(data_dir=data_dir, asr_engine="pocketsphinx")
    store = Store(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        ingress = await nursery.start(run_pipeline, config, store.open_writes(), Metrics(),
                                      trio.CapacityLimiter(2))  # fmt: skip
        async with ingress:
            for piece in pieces(speak(SENTENCE), 1.0):
                job = Job("alice", "crashed", [Part(to_wav(piece), "audio/wav")])
                await ingress.submit(job)
                await job.reply.wait()
        store.close()  # the store ends once the pipeline has drained into it
    assert {store.transcript_status(c) for c in store.chunk_ids()} == {"pending"}

    server = await grammar_server(start_server, tmp_path)
    async with server.client() as client:
        session = await transcribed(client, "crashed")
    assert session["transcript"]["text"] == SENTENCE
    check_chunk_words(session["chunks"])


async def test_websocket_clients_get_partials_before_the_final(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await grammar_server(start_server, tmp_path)
    fmt = {"encoding": "pcm_s16le", "sample_rate": RATE, "channels": 1}
    received: list[dict[str, Any]] = []
    transcriber = server.running.transcriber
    assert transcriber is not None
    with trio.fail_after(TIMEOUT_S):
        await transcriber.workers_started.wait()  # partials need a worker that is up
        async with open_websocket_url(server.running.ws_url) as ws:
            await ws.send_message(json.dumps(
                {"type": "start", "user_id": "alice", "session_id": "ws", "format": fmt}
            ))  # fmt: skip
            chunks = pieces(speak(SENTENCE, tail_s=0.0), 0.2)
            for piece in chunks:
                await ws.send_message((piece * 32767).astype("<i2").tobytes())
                await trio.sleep(0.1)  # a live client: each piece as it is recorded (2x)
            await ws.send_message(json.dumps({"type": "finalize"}))
            while sum(m["is_final"] for m in received) < len(chunks):  # one for each chunk
                message = json.loads(await ws.get_message())
                if message["type"] == "transcript":
                    received.append(message)
            await ws.send_message(json.dumps({"type": "end"}))
    finals = [m for m in received if m["is_final"]]
    assert final_text(finals) == SENTENCE
    assert [w["word"] for m in finals for w in m["words"]] == SENTENCE.split()
    assert [m["seq"] for m in finals] == list(range(len(chunks)))
    partials = received[: received.index(next(m for m in finals if m["words"]))]
    partials = [m for m in partials if not m["is_final"]]
    assert partials and all(m["status"] == "partial" for m in partials)
    seqs = [m["seq"] for m in partials]  # each names a chunk that was sent, in order
    assert seqs == sorted(seqs) and seqs[0] >= 0 and seqs[-1] < len(chunks)
    for m in partials:  # the open utterance's span, which its words are in
        assert m["start_ms"] <= m["words"][0]["start_ms"] and m["end_ms"] >= m["start_ms"]


async def stream_then_end(url: str, session: str, audio: np.ndarray) -> list[dict[str, Any]]:
    """Stream *audio* in 100 ms frames as fast as acknowledged, send ``end`` (no
    ``finalize``): every message the server sends, to ``session_end``."""
    fmt = {"encoding": "pcm_s16le", "sample_rate": RATE, "channels": 1}
    received: list[dict[str, Any]] = []
    async with open_websocket_url(url) as ws:
        start = {"type": "start", "user_id": "alice", "session_id": session, "format": fmt}
        await ws.send_message(json.dumps(start))
        for piece in pieces(audio, 0.1):
            await ws.send_message((piece * 32767).astype("<i2").tobytes())
        await ws.send_message(json.dumps({"type": "end"}))
        while not received or received[-1]["type"] != "session_end":
            received.append(json.loads(await ws.get_message()))
    return received


async def test_on_end_every_final_reaches_the_client_with_words_before_session_end(
    start_server: StartServer, tmp_path: Path
) -> None:
    # The last utterance is still open when `end` comes: only the end's finalize decodes it.
    server = await grammar_server(start_server, tmp_path, asr_idle_timeout_s=300)
    audio = np.concatenate([speak(SENTENCE), speak(OTHER_SENTENCE, tail_s=0.0)])
    with trio.fail_after(TIMEOUT_S):
        received = await stream_then_end(server.running.ws_url, "ended", audio)
    finals = [m for m in received if m["type"] == "transcript" and m["is_final"]]
    assert final_text(finals) == f"{SENTENCE} {OTHER_SENTENCE}"  # the last one too
    for final in finals:
        assert [w["word"] for w in final["words"]] == final["text"].split()
    summary = received[-1]["summary"]
    assert summary["transcript"]["text"] == f"{SENTENCE} {OTHER_SENTENCE}"
    assert summary["transcript"]["words"] == [w for m in finals for w in m["words"]]


async def test_a_live_final_is_decoded_once_its_audio_is_known_and_only_if_it_ends_there(
    start_server: StartServer,
) -> None:
    # Half way into the silence after an utterance (vad_gap_ms / 2), its audio is known: it
    # goes to be decoded then (an early final). A pause that ends in more speech drops it;
    # one that ends the utterance makes its decode the final.
    server = await whisper_server(start_server, asr_workers=1, asr_partial_interval_s=0)
    first, second = speak(SENTENCE), speak(OTHER_SENTENCE)
    # 150 ms of quiet between the sentences, which the VAD hears as a pause of 300-400 ms:
    # past half the gap, short of all of it.
    half = 75 * RATE // 1000
    joined = [first[: speech_span(first)[1] + half], second[speech_span(second)[0] - half :]]
    audio = np.concatenate([*joined, np.zeros(RATE, np.float32)])
    with trio.fail_after(60):
        received = await stream_then_end(server.running.ws_url, "early", audio)
        async with server.client() as client:
            metrics = (await client.get("/metrics")).text
    finals = [m for m in received if m["type"] == "transcript" and m["is_final"]]
    assert normal_words(final_text(finals)) == f"{SENTENCE} {OTHER_SENTENCE}".split()
    outcomes = gauge(metrics, "trio_audio_transcribe_early_finals")
    assert outcomes["used"] == 1  # the one utterance: foreseen in the silence after it
    assert outcomes["withdrawn"] + outcomes["unused"] == 1  # the pause inside it


async def read_events(
    client: httpx.AsyncClient, path: str, into: list[dict[str, Any]], ready: trio.Event
) -> None:
    """Collect server-sent events (name checked against the data's type) until session_end."""
    async with client.stream("GET", path) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        async for line in response.aiter_lines():
            if line.startswith(": watching"):
                ready.set()
            elif line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                message = json.loads(line.removeprefix("data: "))
                assert message["type"] == name
                into.append(message)
                if name == "session_end":
                    return


async def test_an_http_client_ends_a_session_at_once_and_listens_to_its_events(
    start_server: StartServer, tmp_path: Path
) -> None:
    # An idle timeout far longer than the test and no silence after the speech: only the
    # explicit end can finalize it in time.
    server = await grammar_server(start_server, tmp_path, asr_idle_timeout_s=300)
    events: list[dict[str, Any]] = []
    with trio.fail_after(TIMEOUT_S):
        async with server.client() as client, trio.open_nursery() as nursery:
            ready = trio.Event()
            path = "/sessions/alice/live/events"
            nursery.start_soon(read_events, client, path, events, ready)
            await ready.wait()
            chunks = [await upload(client, "live", p)
                      for p in pieces(speak(SENTENCE, tail_s=0.0), 0.5)]  # fmt: skip
            ended = await client.post("/sessions/alice/live/end")
            missing = await client.post("/sessions/alice/nobody/end")
            # the nursery ends when the reader has seen session_end
    assert ended.status_code == 200, ended.text
    summary = ended.json()
    assert {k: summary["transcript"][k] for k in ("status", "text")} == {
        "status": "done",
        "text": SENTENCE,
    }
    assert summary["chunk_count"] == len(chunks)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    kinds = [e["type"] for e in events]
    stored = [e["chunk_id"] for e in events if e["type"] == "metadata"]
    assert stored == [c["chunk_id"] for c in chunks]  # every chunk, in order, once
    finals = [e for e in events if e["type"] == "transcript" and e["is_final"]]
    assert final_text(finals) == SENTENCE
    assert [f["chunk_id"] for f in finals] == [c["chunk_id"] for c in chunks]
    assert summary["transcript"]["words"] == [w for f in finals for w in f["words"]]
    assert "vad" in kinds and kinds.index("vad") < kinds.index("session_end")
    assert events[-1]["summary"] == summary


class HeldSyncs(FileOps):
    """Real files; once *armed*, every fsync of the log waits until *release* is set."""

    def __init__(self) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def fdatasync(self, fd: int) -> None:
        if self.armed:
            self.entered.set()
            self.release.wait(TIMEOUT_S)
        super().fdatasync(fd)


async def test_a_final_reaches_watchers_only_once_it_is_durable(
    start_server: StartServer, tmp_path: Path
) -> None:
    files = HeldSyncs()
    server = await grammar_server(start_server, tmp_path, asr_idle_timeout_s=300, files=files)
    events: list[dict[str, Any]] = []
    with trio.fail_after(TIMEOUT_S):
        async with server.client() as client, trio.open_nursery() as nursery:
            ready = trio.Event()
            nursery.start_soon(read_events, client, "/sessions/alice/held/events", events, ready)
            await ready.wait()
            # No silence after the speech: the utterance stays open until the end.
            speech = speak(SENTENCE, tail_s=0.0)
            chunks = [await upload(client, "held", p) for p in pieces(speech, 0.5)]
            files.armed = True  # from here on, what is written is the transcripts
            ended: list[httpx.Response] = []

            async def end() -> None:
                ended.append(await client.post("/sessions/alice/held/end"))

            nursery.start_soon(end)
            try:
                # The final is decoded and its transcripts are being written: not durable.
                assert await trio.to_thread.run_sync(files.entered.wait, TIMEOUT_S)
                await trio.sleep(0.5)
                assert not [e for e in events if e["type"] == "transcript" and e["is_final"]]
                assert not ended
            finally:
                files.release.set()
    assert ended[0].status_code == 200, ended[0].text
    finals = [e for e in events if e["type"] == "transcript" and e["is_final"]]
    assert final_text(finals) == SENTENCE
    assert [f["chunk_id"] for f in finals] == [c["chunk_id"] for c in chunks]
    assert events[-1]["type"] == "session_end"


async def test_session_events_need_the_owners_token(
    start_server: StartServer, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    alice = add_token(tokens, "alice")
    server = await start_server(tokens_file=str(tokens))
    async with server.client() as client:
        anonymous = await client.post("/sessions/alice/s/end")
        assert anonymous.status_code == 401
        bearer = {"Authorization": f"Bearer {alice}"}
        other = await client.get("/sessions/bob/s/events", headers=bearer)
        assert other.status_code == 404  # another user's session does not exist for alice


async def test_an_open_event_stream_ends_when_the_service_shuts_down(
    start_server: StartServer,
) -> None:
    server = await start_server()
    ready = trio.Event()
    events: list[dict[str, Any]] = []
    async with server.client() as client, trio.open_nursery() as nursery:
        nursery.start_soon(read_events, client, "/sessions/alice/idle/events", events, ready)
        with trio.fail_after(TIMEOUT_S):
            await ready.wait()
            with trio.fail_after(5):  # well inside the drain deadline
                await server.stop()
        # the reader returns at the end of the stream (no session_end: nothing happened)
    assert events == []


async def test_a_watcher_gets_each_final_once_it_is_stored_and_a_resume_gets_the_same(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await grammar_server(start_server, tmp_path)
    watch = {"type": "start", "user_id": "alice", "session_id": "durable"}
    live: list[dict[str, Any]] = []
    with trio.fail_after(TIMEOUT_S):
        async with open_websocket_url(server.running.ws_url) as ws, server.client() as client:
            await ws.send_message(json.dumps(watch))
            assert json.loads(await ws.get_message())["type"] == "started"
            chunks = [await upload(client, "durable", p) for p in pieces(speak(SENTENCE), 0.5)]
            while len(live) < len(chunks):
                message = json.loads(await ws.get_message())
                if message["type"] == "transcript" and message["is_final"]:
                    # The store has it already: the final is the stored update, not the
                    # decoder's answer on its way to the store.
                    stored = (await client.get(f"/chunks/{message['chunk_id']}")).json()
                    assert stored["transcript"]["status"] == message["status"] == "done"
                    assert stored["transcript"]["words"] == message["words"]
                    start = stored["offset_ms"]
                    assert message["start_ms"] == round(start, 1)
                    assert message["end_ms"] == round(start + stored["audio"]["duration_ms"], 1)
                    live.append(message)
        assert [m["chunk_id"] for m in live] == [c["chunk_id"] for c in chunks]
        assert final_text(live) == SENTENCE
        async with open_websocket_url(server.running.ws_url) as ws:
            await ws.send_message(json.dumps({**watch, "resume_from_seq": 0}))
            resumed: list[dict[str, Any]] = []
            while len(resumed) < len(chunks):
                message = json.loads(await ws.get_message())
                if message["type"] == "transcript":
                    resumed.append(message)
    assert resumed == live  # one shape, one rendering, live or replayed


async def whisper_server(start_server: StartServer, **config: Any) -> Server:
    """A server with the default engine (Whisper tiny.en), its workers up."""
    config.setdefault("asr_idle_timeout_s", 300)
    config.setdefault("asr_final_deadline_s", 600)  # no final is late: never a short window
    server: Server = await start_server(asr_engine="whisper", **config)
    transcriber = server.running.transcriber
    assert transcriber is not None
    with trio.fail_after(60):
        await transcriber.workers_started.wait()
    return server


def final_words(received: list[dict[str, Any]]) -> list[tuple[str, float, float]]:
    return [(w["word"], w["start_ms"], w["end_ms"]) for m in received
            if m["type"] == "transcript" and m["is_final"] for w in m["words"]]  # fmt: skip


async def test_a_sessions_words_do_not_depend_on_what_other_sessions_do(
    start_server: StartServer,
) -> None:
    server = await whisper_server(start_server, asr_workers=2)
    url = server.running.ws_url
    # Three utterances: the second and third are decoded with the words before them.
    audio = np.concatenate([speak(SENTENCE), speak(NAME_SENTENCE), speak(OTHER_SENTENCE)])
    with trio.fail_after(120):
        alone = await stream_then_end(url, "alone", audio)
        busy: list[dict[str, Any]] = []

        async def others(n: int) -> None:
            async with server.client() as client:
                for piece in pieces(np.concatenate([speak(OTHER_SENTENCE), speak(SENTENCE)]), 2):
                    await upload(client, f"other{n}", piece)

        async def measured() -> None:
            busy.extend(await stream_then_end(url, "busy", audio))

        async with trio.open_nursery() as nursery:
            for n in range(3):
                nursery.start_soon(others, n)
            nursery.start_soon(measured)
    assert final_words(alone) and final_words(busy) == final_words(alone)
    assert busy[-1]["summary"]["transcript"]["words"] == alone[-1]["summary"]["transcript"]["words"]
    said = normal_words(alone[-1]["summary"]["transcript"]["text"])
    assert said[:5] == SENTENCE.split() and said[-5:] == OTHER_SENTENCE.split()


def normal_words(text: str) -> list[str]:
    return "".join(c for c in text.lower() if c.isalnum() or c in " '").split()


async def test_a_long_upload_fills_the_window_with_several_utterances(
    start_server: StartServer,
) -> None:
    server = await whisper_server(start_server, asr_workers=1)
    texts = [SENTENCE, OTHER_SENTENCE] * 2
    async with server.client() as client:
        await upload(client, "file", np.concatenate([speak(t) for t in texts]))  # one chunk
        session = await transcribed(client, "file")
        metrics = (await client.get("/metrics")).text
    assert normal_words(session["transcript"]["text"]) == " ".join(texts).split()
    check_chunk_words(session["chunks"])
    # Four utterances, one encoder pass.
    assert 'trio_audio_transcribe_final_decodes{window="full"} 1' in metrics


async def test_sentences_said_back_to_back_lose_no_word_between_utterances(
    start_server: StartServer,
) -> None:
    # 20 sentences said back to back, uploaded second by second as they were said. Each
    # utterance's decode hears the end of the one before as context, and lost words there:
    # a decode that skipped the context stretched its own first words ("turn on") back over
    # it, and a word the decode before left unsaid ("light") was taken for the context's.
    server = await whisper_server(start_server, asr_workers=1)
    said = [SENTENCE, OTHER_SENTENCE, "the weather is nice today", NAME_SENTENCE]
    audio = np.concatenate([speak(s, lead_s=0.05, tail_s=0.25) for s in said] * 5)
    async with server.client() as client:
        for piece in pieces(audio, 1.0):
            await upload(client, "long", piece)
        with trio.fail_after(TIMEOUT_S * 3):
            ended = (await client.post("/sessions/alice/long/end")).json()
    heard, expected = normal_words(ended["transcript"]["text"]), " ".join(said * 5).split()
    # tiny.en mishears "the weather" the same way each time: count the words it hears right,
    # each sentence's first and last among them.
    for word in ("turn", "kitchen", "light", "please", "dim", "hallway", "today",
                 "send", "report", "lunch"):  # fmt: skip
        assert heard.count(word) == expected.count(word), (word, " ".join(heard))


async def test_a_session_names_words_to_expect_and_an_empty_list_changes_nothing(
    start_server: StartServer,
) -> None:
    server = await whisper_server(start_server, asr_workers=2)
    url = server.running.ws_url
    audio = speak(NAME_SENTENCE)
    fmt = {"encoding": "pcm_s16le", "sample_rate": RATE, "channels": 1}

    async def stream(session: str, **start: Any) -> list[dict[str, Any]]:
        received: list[dict[str, Any]] = []
        async with open_websocket_url(url) as ws:
            first = {"type": "start", "user_id": "alice", "session_id": session, "format": fmt}
            await ws.send_message(json.dumps({**first, **start}))
            for piece in pieces(audio, 0.1):
                await ws.send_message((piece * 32767).astype("<i2").tobytes())
            await ws.send_message(json.dumps({"type": "end"}))
            while not received or received[-1]["type"] not in ("session_end", "error"):
                received.append(json.loads(await ws.get_message()))
        return received

    with trio.fail_after(120):
        plain = await stream("plain")
        empty = await stream("empty", vocabulary=[])
        told = await stream("told", vocabulary=["Kubernetes", "Siobhan"])
        async with open_websocket_url(url) as ws:
            terms = [f"term{i}" for i in range(51)]
            big = {"type": "start", "user_id": "alice", "session_id": "big", "vocabulary": terms}
            await ws.send_message(json.dumps(big))
            too_many = json.loads(await ws.get_message())
        async with server.client() as client:
            response = await client.post(
                "/upload", params={"user_id": "alice", "session_id": "up", "vocabulary": NAME},
                content=to_wav(audio), headers={"Content-Type": "audio/wav"},
            )  # fmt: skip
            assert response.status_code == 201
            uploaded = (await transcribed(client, "up"))["transcript"]["text"]
            form = await client.post(  # the same as form fields of a multipart upload
                "/upload", data={"user_id": "alice", "session_id": "form", "vocabulary": NAME},
                files={"file": ("name.wav", to_wav(audio), "audio/wav")},
            )  # fmt: skip
            assert form.status_code == 201, form.text
            from_form = (await transcribed(client, "form"))["transcript"]["text"]
            refused = await client.post(
                "/upload", params={"user_id": "alice", "session_id": "up2",
                                   "vocabulary": "x" * 65},
                content=to_wav(audio), headers={"Content-Type": "audio/wav"},
            )  # fmt: skip
            listing = (await client.get("/sessions/alice?session_id=up2")).json()
    assert NAME not in plain[-1]["summary"]["transcript"]["text"]
    assert final_words(empty) == final_words(plain)
    assert NAME in told[-1]["summary"]["transcript"]["text"]
    assert normal_words(told[-1]["summary"]["transcript"]["text"]) == NAME_SENTENCE.split()
    assert NAME in uploaded and NAME in from_form
    assert too_many["type"] == "error" and too_many["code"] == "invalid_field"
    assert refused.status_code == 400 and refused.json()["code"] == "invalid_field"
    assert listing["sessions"] == []  # the refused upload stored nothing


async def test_a_live_final_late_for_its_deadline_is_decoded_in_the_short_window_and_says_so(
    start_server: StartServer,
) -> None:
    server = await whisper_server(start_server, asr_workers=1, asr_final_deadline_s=0.001)
    with trio.fail_after(60):
        received = await stream_then_end(server.running.ws_url, "late", speak(SENTENCE))
        async with server.client() as client:
            session = await transcribed(client, "late")
            metrics = (await client.get("/metrics")).text
    # Each chunk's final, once stored: those with the utterance's words say how they were
    # decoded.
    finals = [m for m in received if m["type"] == "transcript" and m["is_final"] and m["words"]]
    assert finals and all(m.get("short_window") for m in finals)
    assert normal_words(" ".join(m["text"] for m in finals)) == SENTENCE.split()
    assert any(c["transcript"].get("short_window") for c in session["chunks"])
    assert 'trio_audio_transcribe_final_decodes{window="short"} 1' in metrics
