"""A talker in the web console: what a person watching the console sees while others talk.

``python -m trio_audio.bench.live --console`` makes talker 0 of each load the console itself:
Debian's headless Chromium (``/usr/bin/chromium``, driven by Playwright) opens the service's
``/``, streams that talker's script with **Stream a file** (the page decodes it and sends
100 ms frames in real time, as it does for a person), and a ``MutationObserver`` in the page
notes when the words of the **Transcript** panel change: each partial that shows words, and
each final word added to a line. Times are the page's own clock (``Date.now()``) from the
moment the page sent its first frame, so they are what the person sees, rendering included.

The other talkers are ``bench.live``'s own clients, so the console's talker gets the
latency, partials and words of every other one, measured on the screen instead of the wire.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Final

import soundfile as sf
import trio

CHROMIUM: Final = "/usr/bin/chromium"
FLAGS: Final = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--autoplay-policy=no-user-gesture-required",
]

# Before the page's scripts run: the time of the first binary frame the page sends, and a
# record of what the transcript panel shows, each change with its time (epoch ms).
WATCH_JS: Final = """
window.__firstFrame = null;
window.__seen = [];
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  if (window.__firstFrame === null && typeof data !== "string") window.__firstFrame = Date.now();
  return send.call(this, data);
};
const spans = (nodes) => [...nodes].map((s) => [s.dataset.word, Number(s.dataset.start),
                                                Number(s.dataset.end)]);
document.addEventListener("DOMContentLoaded", () => {
  const partial = document.getElementById("partial");
  new MutationObserver(() => {
    const words = spans(partial.querySelectorAll(".word"));
    if (words.length) window.__seen.push({ t: Date.now(), kind: "partial", words });
  }).observe(partial, { childList: true });
  const counted = new WeakSet(); // a line and then its words may both be reported as added
  new MutationObserver((records) => {
    const added = records.flatMap((r) => [...r.addedNodes])
      .flatMap((n) => (n.nodeType !== 1 ? [] : n.classList.contains("word") ? [n]
                                        : [...n.querySelectorAll(".word")]))
      .filter((n) => !counted.has(n) && counted.add(n));
    if (added.length) window.__seen.push({ t: Date.now(), kind: "final", words: spans(added) });
  }).observe(document.getElementById("finals"), { childList: true, subtree: true });
});
"""


def _watch(http_url: str, wav: Path, session_id: str, limit_s: float) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 900},
        )  # fmt: skip
        try:
            page = context.new_page()
            page.add_init_script(WATCH_JS)
            page.goto(http_url + "/")
            page.fill("#live-user", "bench")
            page.fill("#live-session", session_id)
            page.set_input_files("#file-input", str(wav))
            page.wait_for_selector("#live-state[data-state=running]", timeout=30_000)
            page.wait_for_selector("#live-state[data-state=idle]", timeout=limit_s * 1000)
            seen: dict[str, Any] = page.evaluate(
                "({first: window.__firstFrame, seen: window.__seen})"
            )
            return seen
        finally:
            context.close()


async def console_talker(http_url: str, audio: Any, rate: int, session_id: str,
                         limit_s: float) -> dict[str, Any]:  # fmt: skip
    """Stream *audio* from the console as a person would; what its transcript panel showed,
    and when: ``{"first": epoch ms of the first frame, "seen": [{t, kind, words}]}``."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / f"{session_id}.wav"
        sf.write(wav, audio, rate, subtype="PCM_16")
        return await trio.to_thread.run_sync(_watch, http_url, wav, session_id, limit_s)
