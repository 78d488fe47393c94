"""The web console in a real headless Chromium (Debian's ``chromium``), driven by Playwright.

The service runs in this process on port 0; each test drives the browser from a worker thread
(Playwright's sync API) while Trio serves. The fake microphone plays
``fixtures/console/turn_on_the_kitchen_light.wav``: espeak-ng's voice from the speech fixtures,
with 1 s of silence before and 2 s after (``to_wav(speak(SENTENCE, lead_s=1.0, tail_s=2.0))``);
Chromium loops it. A JSGF grammar makes the words exact.

Every test fails on any error in the browser's console (a ``console`` message of type error,
which is Chromium's SEVERE, or an uncaught ``pageerror``) except the failed loads it names in
advance (a 401 it provokes, say), and on a page wider than a 390 px screen. Screenshots of each
state, and of each view at 390 and 1,920 px, go to ``<tmp_path>/screenshots``; their paths are
printed. These tests are marked ``browser`` and run in ``nox -s browser``.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pytest
import soundfile as sf
import trio

from trio_audio.web.auth import add_token

from .conftest import StartServer
from .speech import SENTENCE, grammar_file, pieces, speak, to_wav

if TYPE_CHECKING:  # playwright is installed only by ``nox -s browser``; these tests are
    # collected (and deselected) in every other session too
    from playwright.sync_api import BrowserContext, ConsoleMessage, Page, Request

pytestmark = pytest.mark.browser

CHROMIUM: Final = "/usr/bin/chromium"
MIC_WAV: Final = Path(__file__).parent / "fixtures" / "console" / "turn_on_the_kitchen_light.wav"
FLAGS: Final = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
WAIT_MS: Final = 30_000
RAW_CHUNKS: Final = 25

# Click word *text* of the session's transcript; once the player has seeked, what is lit.
CLICK_WORD_JS: Final = """(text) => new Promise((resolve) => {
  const player = document.getElementById('player');
  const word = [...document.querySelectorAll('#session-transcript .word')]
    .find((w) => w.textContent === text);
  player.addEventListener('seeked', () => {
    const lit = document.querySelector('#session-transcript .word.now');
    resolve({ word: lit && lit.textContent, at: player.currentTime,
              start: Number(word.dataset.start) });
  }, { once: true });
  word.click();
})"""

# How many pixels of a canvas differ from its background (the page clears to #0b0d12).
PAINTED_JS: Final = """(id) => {
  const c = document.getElementById(id);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (Math.abs(d[i] - 11) + Math.abs(d[i + 1] - 13) + Math.abs(d[i + 2] - 18) > 24) n++;
  }
  return n;
}"""


class Browser:
    """One page in a fresh Chromium profile, recording every URL it asks for and every
    console error, and saving numbered screenshots."""

    def __init__(self, context: BrowserContext, shots: Path) -> None:
        self.context = context
        self.page: Page = context.new_page()
        self.urls: list[str] = []
        self.errors: list[str] = []
        self.expected: list[tuple[int, str]] = []  # failed loads a test provokes
        self.shots = shots
        self.page.on("request", self._on_request)
        self.page.on("websocket", lambda ws: self.urls.append(ws.url))
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def _on_request(self, request: Request) -> None:
        self.urls.append(request.url)

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"{message.text} [{message.location.get('url', '')}]")

    def expect_failed_load(self, status: int, path: str) -> None:
        """Chromium logs every non-2xx fetch as an error: allow this one, which the test
        provokes (*status* for a URL containing *path*)."""
        self.expected.append((status, path))

    def unexpected_errors(self) -> list[str]:
        def expected(error: str) -> bool:
            return any(
                f"status of {status} " in error and path in error.split(" [")[-1]
                for status, path in self.expected
            )

        return [e for e in self.errors if not expected(e)]

    def shot(self, name: str) -> Path:
        path = self.shots / f"{len(list(self.shots.iterdir())) + 1:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path

    def layouts(self, name: str) -> None:
        """The page at a phone's width (nothing may scroll sideways) and at 1,920 px, each
        kept as a screenshot; then back to the usual 1,280 px."""
        self.page.set_viewport_size({"width": 390, "height": 844})
        overflow = self.page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        self.shot(f"{name}-390px")
        assert overflow[0] <= overflow[1], f"{name} at 390 px is {overflow[0]} px wide"
        self.page.set_viewport_size({"width": 1920, "height": 1080})
        self.shot(f"{name}-1920px")
        self.page.set_viewport_size({"width": 1280, "height": 900})

    def painted(self, canvas_id: str) -> int:
        count: int = self.page.evaluate(PAINTED_JS, canvas_id)
        return count

    def wait(self, expression: str, timeout_ms: int = WAIT_MS) -> None:
        """Poll *expression* until it is true. (Playwright's ``wait_for_function`` evals a
        string in the page, which the page's CSP rightly refuses.)"""
        deadline = time.monotonic() + timeout_ms / 1000
        while not self.page.evaluate(expression):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression}")
            self.page.wait_for_timeout(100)

    def text(self, selector: str) -> str:
        return self.page.inner_text(selector)


@contextmanager
def browser(tmp_path: Path, *flags: str) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    shots = tmp_path / "screenshots"
    shots.mkdir(exist_ok=True)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh --user-data-dir
            executable_path=CHROMIUM,
            headless=True,
            args=[*FLAGS, *flags],
            viewport={"width": 1280, "height": 900},
        )
        try:
            b = Browser(context, shots)
            yield b
            unexpected = b.unexpected_errors()
            assert not unexpected, f"errors in the browser console: {unexpected}"
        finally:
            context.close()


async def in_browser(scenario: Callable[..., Any], *args: Any) -> Any:
    """Run a sync browser scenario in a thread, while this thread's Trio serves."""
    with trio.fail_after(120):
        return await trio.to_thread.run_sync(scenario, *args)


async def test_live_capture_from_the_microphone(start_server: StartServer, tmp_path: Path) -> None:
    server = await start_server(asr_engine="pocketsphinx", asr_grammar=str(grammar_file(tmp_path)))

    def scenario() -> None:
        mic = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
               f"--use-file-for-fake-audio-capture={MIC_WAV}"]  # fmt: skip
        with browser(tmp_path, *mic) as b:
            page = b.page
            page.goto(server.url + "/")
            b.shot("live-idle")
            page.fill("#live-user", "alice")
            page.fill("#live-session", "mic")
            page.click("#mic-start")
            b.wait("Number(document.getElementById('acks').textContent) >= 10")
            assert b.painted("spectrogram") > 500  # the chunks' bands were drawn
            page.wait_for_selector("#vad-state[data-state=speech]", timeout=WAIT_MS)
            b.shot("live-speech")
            b.wait("document.getElementById('finals').textContent.includes('light')")
            page.wait_for_selector("#vad-state[data-state=silence]", timeout=WAIT_MS)
            b.shot("live-final-transcript")
            # A final's words stand apart (so a long one wraps), and at a phone's width the
            # columns stack with the spectrogram still tall enough to read.
            assert page.evaluate("document.querySelector('#finals li').textContent").count(" ") >= 4
            page.set_viewport_size({"width": 390, "height": 844})
            assert page.evaluate("document.getElementById('spectrogram').clientHeight") >= 150
            b.layouts("live")
            finals = page.locator("#finals li").all_inner_texts()
            words = page.locator("#finals li:first-child .word").evaluate_all(
                "spans => spans.map(s => [s.dataset.word, Number(s.dataset.start)])"
            )
            events = b.text("#events")
            page.click("#live-stop")
            page.wait_for_selector("#live-state[data-state=idle]", timeout=WAIT_MS)
            assert "session_end" in b.text("#events")
            b.shot("live-stopped")
        assert "vad speech_started" in events and "vad speech_stopped" in events
        assert "ack seq=0 " in events
        assert [w for w, _ in words] == SENTENCE.split(), (finals, words)
        # On the session's timeline: the speech starts after the file's 1 s of silence.
        assert 700 <= words[0][1] <= 1400, words

    await in_browser(scenario)
    async with server.client() as client:
        listing = (await client.get("/sessions/alice?session_id=mic")).json()
    chunks = listing["sessions"][0]["chunks"]
    assert len(chunks) >= 10
    assert {c["audio"]["sample_rate"] for c in chunks} == {16000}
    assert any(c["features"]["speech_ratio"] > 0.5 for c in chunks)


async def test_stream_a_file_sends_its_audio_as_recorded(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(asr_engine="pocketsphinx", asr_grammar=str(grammar_file(tmp_path)))

    def scenario() -> list[tuple[str, float]]:
        with browser(tmp_path) as b:
            page = b.page
            page.goto(server.url + "/")
            page.fill("#live-user", "alice")
            page.fill("#live-session", "file")
            page.set_input_files("#file-input", str(MIC_WAV))
            b.wait("document.getElementById('finals').textContent.includes('light')")
            page.wait_for_selector("#live-state[data-state=idle]", timeout=WAIT_MS)
            assert "session_end" in b.text("#events")
            words: list[tuple[str, float]] = page.locator("#finals .word").evaluate_all(
                "spans => spans.map(s => [s.dataset.word, Number(s.dataset.start)])"
            )
            return words

    words = await in_browser(scenario)
    assert [w for w, _ in words] == SENTENCE.split(), words
    assert 700 <= words[0][1] <= 1400, words  # after the file's 1 s of silence
    async with server.client() as client:
        listing = (await client.get("/sessions/alice?session_id=file")).json()
    chunks = listing["sessions"][0]["chunks"]
    # The file's samples, at its own 16 kHz: as many as it holds (no rate went through
    # another one and back), in 100 ms frames.
    assert {c["audio"]["sample_rate"] for c in chunks} == {16000}
    async with server.client() as client:
        wav = (await client.get("/sessions/alice/file/audio")).content
    sent, rate = sf.read(io.BytesIO(wav), dtype="float32")
    original, file_rate = sf.read(str(MIC_WAV), dtype="float32")
    assert rate == file_rate == 16000 and abs(len(sent) - len(original)) < 1600
    n = min(len(sent), len(original))
    error = np.sqrt(np.mean((sent[:n] - original[:n]) ** 2) / np.mean(original[:n] ** 2))
    assert error < 0.001, error  # the same samples, to 16-bit rounding (was 1% off)


async def upload_session(
    client: Any, user: str, session: str, n: int, token: str | None = None
) -> list[str]:
    """*n* WAV chunks of speech, uploaded over HTTP; their chunk ids."""
    headers = {"Content-Type": "audio/wav"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    ids = []
    for piece in pieces(speak(SENTENCE), 3.5 / n):
        response = await client.post(
            "/upload", params={"user_id": user, "session_id": session},
            content=to_wav(piece), headers=headers,
        )  # fmt: skip
        assert response.status_code == 201, response.text
        ids.append(response.json()["chunk_id"])
    return ids


async def test_browse_a_session_play_it_take_it_away_and_delete(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(asr_engine="pocketsphinx", asr_grammar=str(grammar_file(tmp_path)))
    async with server.client() as client:
        ids = await upload_session(client, "alice", "uploaded", 3)
        with trio.fail_after(30):  # the words are in before the page looks
            while True:
                chunks = [(await client.get(f"/chunks/{i}")).json() for i in ids]
                if all(c["transcript"]["status"] == "done" for c in chunks):
                    break
                await trio.sleep(0.05)
        tone = (np.sin(np.arange(1600) / 5) * 8000).astype("<i2").tobytes()
        for _ in range(RAW_CHUNKS):  # raw PCM, as a WebSocket stores it, 100 ms a chunk
            raw = await client.post(
                "/upload", content=tone,
                params={"user_id": "alice", "session_id": "raw", "encoding": "pcm_s16le",
                        "sample_rate": 16000, "channels": 1},
            )  # fmt: skip
            assert raw.status_code == 201, raw.text

    def scenario() -> None:
        with browser(tmp_path) as b:
            page = b.page
            page.goto(server.url + "/#browse")
            page.fill("#browse-user", "alice")
            page.click("#browse-form button[type=submit]")
            listed = page.locator("#sessions li[data-session=uploaded]")
            assert "3 chunks" in listed.inner_text() and "kitchen" in listed.inner_text()
            assert f"{RAW_CHUNKS} chunks" in b.text("#sessions li[data-session=raw]")
            page.click("button[data-session=uploaded]")

            # The transcript is the session's words; the player holds the whole session.
            page.wait_for_selector("#session-transcript .word")
            assert b.text("#session-transcript") == SENTENCE
            assert page.get_attribute("#player", "src") == "/sessions/alice/uploaded/audio"
            b.wait("document.getElementById('player').readyState >= 1")
            assert page.evaluate("document.getElementById('player').duration") > 3.0
            # Clicking a word seeks there and lights it; playing goes on across chunks.
            lit = page.evaluate(CLICK_WORD_JS, "kitchen")
            assert lit["word"] == "kitchen", lit
            assert abs(lit["at"] * 1000 - lit["start"]) < 50, lit
            page.evaluate("document.getElementById('player').pause()")
            b.shot("browse-word-lit")
            page.evaluate("document.getElementById('player').play()")
            b.wait("document.getElementById('player').currentTime > 2.4")  # chunk 3 of 3

            # Downloads: the subtitles of the whole session.
            with page.expect_download() as download:
                page.click("#download-srt")
            srt = Path(download.value.path()).read_text()
            assert "-->" in srt and "kitchen" in srt, srt
            assert download.value.suggested_filename == "alice-uploaded.srt"

            # The chunks are a short page, folded away; a chunk's details open above it.
            assert not page.is_visible("#chunks")
            page.click("#chunks-summary")
            page.click(f"tr[data-chunk='{ids[1]}']")
            b.wait(f"document.getElementById('chunk-view').dataset.drawn === '{ids[1]}'")
            assert b.painted("waveform") > 200 and b.painted("spectrum") > 200
            assert json.loads(page.text_content("#chunk-json") or "")["chunk_id"] == ids[1]
            view, table = page.locator("#chunk-view"), page.locator("#chunks")
            assert (view.bounding_box() or {})["y"] < (table.bounding_box() or {})["y"]
            b.layouts("browse-session")

            page.click("button[data-session=raw]")
            # (The session before's rows stay until the new page has come: wait for it.)
            b.wait("document.getElementById('chunks-range').textContent.startsWith('1-20 ')")
            assert page.locator("#chunks tbody tr").count() == 20  # a page, not every chunk
            assert b.text("#chunks-range") == f"1-20 of {RAW_CHUNKS}"
            page.click("#chunks-next")
            b.wait(f"document.querySelectorAll('#chunks tbody tr').length === {RAW_CHUNKS - 20}")
            page.click("#chunks-prev")
            b.wait("document.querySelectorAll('#chunks tbody tr').length === 20")

            # Deletes ask first: dismissed keeps, accepted deletes; the list shows the result.
            deletes: list[str] = []
            page.on("request", lambda r: r.method == "DELETE" and deletes.append(r.url))
            page.click("button[data-session=uploaded]")
            before = b.text("#session-meta")  # "3.2 s · 3 chunks"
            page.click(f"tr[data-chunk='{ids[0]}']")
            page.wait_for_selector(f"#chunk-view[data-chunk='{ids[0]}']")
            page.once("dialog", lambda d: d.dismiss())
            page.click("#chunk-delete")
            page.once("dialog", lambda d: d.accept())
            page.click("#chunk-delete")
            b.wait("document.querySelectorAll('#chunks tbody tr').length === 2")
            b.wait("document.querySelector('#sessions li[data-session=uploaded]')"
                   ".textContent.includes('2 chunks')")  # fmt: skip
            # No stale totals: the duration is the server's new one, in the list and the view.
            after = b.text("#session-meta")
            assert "2 chunks" in after and after.split(" · ")[0] != before.split(" · ")[0]
            assert after.split(" · ")[0] in b.text("#sessions li[data-session=uploaded]")
            page.once("dialog", lambda d: d.dismiss())
            page.click("#delete-session")
            assert page.is_visible("#session-view")
            page.once("dialog", lambda d: d.accept())
            page.click("#delete-session")
            page.wait_for_selector("#session-view", state="hidden")
            b.wait("document.querySelector('#sessions li[data-session=uploaded]') === null")
            assert page.is_visible("#sessions li[data-session=raw]")
            b.shot("browse-deleted")
            assert [u.removeprefix(server.url) for u in deletes] == [
                f"/chunks/{ids[0]}",
                "/sessions/alice/uploaded",
            ], deletes

            page.goto(server.url + "/#health")
            page.wait_for_selector("tr[data-metric='chunks in store'] td", timeout=WAIT_MS)
            health = b.text("#health-table")
            b.layouts("health")
        assert "queue ingress" in health and "transcript lag" in health
        assert page_value(health, "chunks in store") == str(RAW_CHUNKS)

    await in_browser(scenario)
    async with server.client() as client:
        for chunk_id in ids:
            assert (await client.get(f"/chunks/{chunk_id}")).status_code == 404


def page_value(table_text: str, key: str) -> str:
    for line in table_text.splitlines():
        name, _, value = line.partition("\t")
        if name.strip() == key:
            return value.strip()
    raise AssertionError(f"{key!r} not in {table_text!r}")


async def test_token_flow_shows_only_the_tokens_user(
    start_server: StartServer, tmp_path: Path
) -> None:
    tokens_file = tmp_path / "tokens"
    alice, bob = add_token(tokens_file, "alice"), add_token(tokens_file, "bob")
    server = await start_server(tokens_file=str(tokens_file))
    async with server.client() as client:
        await upload_session(client, "alice", "alice-talk", 2, token=alice)
        await upload_session(client, "bob", "bob-secret", 2, token=bob)

    def scenario() -> None:
        with browser(tmp_path) as b:
            page = b.page
            b.expect_failed_load(401, "/sessions/alice?")
            b.expect_failed_load(404, "/sessions/bob?")
            page.goto(server.url + "/#browse")
            page.fill("#browse-user", "alice")
            page.click("#browse-form button[type=submit]")
            page.wait_for_selector("#error:not([hidden])")
            # Said for a person: where a token comes from and where it goes.
            assert "asks for a token" in b.text("#error") and "Token box" in b.text("#error")
            assert "Authorization" not in b.text("#error")
            b.shot("token-missing")

            # Live without a token: the server refuses the stream, the page says so and stops.
            page.goto(server.url + "/#live")
            page.fill("#live-user", "alice")
            page.set_input_files("#file-input", str(MIC_WAV))
            b.wait("document.getElementById('events').textContent.includes('error unauthorized')")
            assert "asks for a token" in b.text("#error")
            page.wait_for_selector("#live-state[data-state=idle]")
            b.shot("token-live-refused")

            page.goto(server.url + "/#browse")
            page.fill("#browse-user", "alice")
            page.fill("#token", alice)
            page.click("#token-save")
            assert page.evaluate("sessionStorage.getItem('trio-audio-token')") == alice
            assert page.evaluate("localStorage.length") == 0
            page.click("#browse-form button[type=submit]")
            page.click("button[data-session=alice-talk]")
            # With a token the audio and the downloads come with its header, as blobs.
            b.wait("document.getElementById('player').src.startsWith('blob:')")
            with page.expect_download() as download:
                page.click("#download-wav")
            assert Path(download.value.path()).read_bytes()[:4] == b"RIFF"
            b.shot("token-own-session")

            page.fill("#browse-user", "bob")
            page.click("#browse-form button[type=submit]")
            page.wait_for_selector("#error:not([hidden])")
            assert "not_found" in b.text("#error")
            assert "bob-secret" not in page.content()
            assert "alice-talk" not in page.content()  # the last listing went with the switch
            b.shot("token-other-user")

            # Forgetting the token clears what it showed.
            page.fill("#browse-user", "alice")
            page.click("#browse-form button[type=submit]")
            page.click("button[data-session=alice-talk]")
            page.click("#token-clear")
            assert page.evaluate("sessionStorage.length") == 0
            assert "alice-talk" not in page.content()
            assert page.get_attribute("#player", "src") is None
            page.fill("#token", alice)
            page.click("#token-save")

            # The token also opens the live WebSocket (in its start message).
            page.goto(server.url + "/#live")
            page.fill("#live-user", "alice")
            page.fill("#live-session", "from-file")
            page.set_input_files("#file-input", str(MIC_WAV))
            b.wait("Number(document.getElementById('acks').textContent) >= 3")
            page.click("#live-stop")
            page.wait_for_selector("#live-state[data-state=idle]", timeout=WAIT_MS)

            # /docs tries a route with the same token.
            page.goto(server.url + "/docs")
            op = page.locator("details[data-path='/sessions/{user_id}'][data-method=get]")
            op.locator("summary").click()
            op.locator("input[name=user_id]").fill("alice")
            op.locator("button[type=submit]").click()
            op.locator(".result pre").wait_for(timeout=WAIT_MS)
            result = op.locator(".result").inner_text()
            b.shot("docs-try")
            urls = list(b.urls)
        assert "-> 200" in result and "alice-talk" in result
        leaked = [u for u in urls if alice in u or bob in u]
        assert not leaked, leaked
        assert any(u.endswith("/ws") for u in urls)

    await in_browser(scenario)
    async with server.client(headers={"Authorization": f"Bearer {alice}"}) as client:
        listing = (await client.get("/sessions/alice?session_id=from-file")).json()
    assert listing["sessions"][0]["chunk_count"] >= 3
