// Live capture: the microphone (an AudioWorklet) or a file, sent as 16 kHz PCM frames over
// /ws, with the server's acks, spectrum, voice activity and transcript shown as they come.

import { el, fmtMs, getToken } from "./api.js";
import { $, bandColor, showError } from "./ui.js";

const FRAME_MS = 100;
const RATE = 16000;
const FRAME_SAMPLES = (RATE * FRAME_MS) / 1000;
const MAX_EVENTS = 300;
const LINE_GAP_MS = 1000; // a pause this long between final words starts a new line

const spectrogram = $("spectrogram");
const specCtx = spectrogram.getContext("2d");

function clearSpectrogram() {
  specCtx.fillStyle = "#0b0d12";
  specCtx.fillRect(0, 0, spectrogram.width, spectrogram.height);
}

function drawSpectrumColumn(bandDb, durationMs) {
  const w = Math.max(2, Math.round(durationMs / 25));
  const { width, height } = spectrogram;
  specCtx.drawImage(spectrogram, -w, 0); // scroll left
  const h = height / bandDb.length;
  bandDb.forEach((db, i) => {
    specCtx.fillStyle = bandColor(db);
    specCtx.fillRect(width - w, height - (i + 1) * h, w, Math.ceil(h));
  });
}

function logEvent(text, kind = "") {
  const list = $("events");
  list.prepend(el("li", { class: kind }, `${new Date().toISOString().slice(11, 23)} ${text}`));
  while (list.childElementCount > MAX_EVENTS) list.lastElementChild.remove();
}

function setLevel(rms, peak) {
  const db = rms > 0 ? 20 * Math.log10(rms) : -Infinity;
  $("level").value = Math.max(-60, db);
  $("level-db").textContent = `${Number.isFinite(db) ? db.toFixed(1) : "-inf"} dBFS (peak ${(
    20 * Math.log10(Math.max(peak, 1e-6))
  ).toFixed(1)})`;
}

function setVad(state, atMs) {
  const pill = $("vad-state");
  pill.dataset.state = state;
  pill.textContent = state === "speech" ? `speech since ${fmtMs(atMs)}` : `silence since ${fmtMs(atMs)}`;
}

// Words with their start times, a space between each so a long line wraps.
function wordsLine(words) {
  return words.flatMap((w, i) => [
    i ? " " : null,
    el("span", { class: "word", title: `${fmtMs(w.start_ms)} - ${fmtMs(w.end_ms)}`,
      dataset: { word: w.word, start: w.start_ms, end: w.end_ms } },
      w.word, el("sub", {}, (w.start_ms / 1000).toFixed(2))),
  ]).filter((n) => n !== null);
}

function onLiveMessage(message) {
  switch (message.type) {
    case "started":
      logEvent(`started ${message.user_id}/${message.session_id} next_seq=${message.next_seq}`);
      break;
    case "ack":
      $("acks").textContent = String(Number($("acks").textContent) + 1);
      $("last-chunk").textContent = `#${message.seq} ${message.chunk_id}`;
      logEvent(`ack seq=${message.seq} ${message.chunk_id}${message.duplicate ? " (duplicate)" : ""}`);
      break;
    case "metadata": {
      const band = message.spectrum && message.spectrum.band_db;
      if (band) drawSpectrumColumn(band, message.audio ? message.audio.duration_ms : FRAME_MS);
      const f = message.features || {};
      logEvent(`metadata seq=${message.seq} rms=${f.rms_dbfs} dBFS speech=${f.speech_ratio}`);
      break;
    }
    case "transcript":
      if (message.is_final) {
        // Each chunk's final, once stored. An utterance's words come as the finals of its
        // chunks, one after another: they join one line until a pause longer than
        // LINE_GAP_MS between two words starts the next.
        $("partial").textContent = "";
        if (message.words.length) {
          const first = message.words[0].start_ms;
          if (!openFinal || first - lastWordEnd > LINE_GAP_MS) {
            openFinal = el("li", { class: "final" });
            $("finals").append(openFinal);
          } else {
            openFinal.append(" ");
          }
          openFinal.append(...wordsLine(message.words));
          lastWordEnd = message.words[message.words.length - 1].end_ms;
          logEvent(`final transcript seq=${message.seq}: ${message.text}`, "final");
        }
      } else {
        // The latest hypothesis: its first `stable` words held from the one before (shown
        // plain), the rest may still change (shown faint).
        const spans = wordsLine(message.words);
        spans.filter((n) => n.classList).forEach((span, i) => {
          if (i < (message.stable ?? message.words.length)) span.classList.add("stable");
        });
        $("partial").replaceChildren(...spans);
      }
      break;
    case "vad":
      setVad(message.event === "speech_started" ? "speech" : "silence", message.at_ms);
      logEvent(`vad ${message.event} at ${message.at_ms} ms`, "vad");
      break;
    case "flow":
      $("flow").textContent = `${fmtMs(message.lag_ms)} (transcript ${fmtMs(
        message.transcript_lag_ms)}, queue ${message.queue_depth}, in flight ${message.inflight})`;
      break;
    case "deleted":
      logEvent(`deleted seq ${message.seqs.join(", ")}`);
      break;
    case "session_end":
      openFinal = null;
      logEvent(`session_end ${JSON.stringify(message.summary)}`);
      break;
    case "error":
      showError({ code: message.code, message: message.message });
      logEvent(`error ${message.code}: ${message.message}`, "error");
      break;
    default:
      logEvent(`${message.type}`);
  }
}

// One WebSocket session: start (with the token inside the message), binary PCM frames, end.
class LiveSession {
  constructor(user, session) {
    this.user = user;
    this.session = session;
    this.pending = [];
    this.ready = false;
    this.closed = new Promise((resolve) => { this.onClosed = resolve; });
  }

  open() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.ws = new WebSocket(`${scheme}://${location.host}/ws`);
    this.ws.binaryType = "arraybuffer";
    this.ws.onopen = () => {
      const start = {
        type: "start", user_id: this.user, session_id: this.session,
        format: { encoding: "pcm_s16le", sample_rate: RATE, channels: 1 },
      };
      const token = getToken();
      if (token) start.token = token;
      this.ws.send(JSON.stringify(start));
    };
    this.ws.onmessage = (event) => {
      if (typeof event.data !== "string") return;
      const message = JSON.parse(event.data);
      if (message.type === "started") {
        this.ready = true;
        for (const frame of this.pending) this.ws.send(frame);
        this.pending = [];
      }
      onLiveMessage(message);
    };
    this.ws.onclose = (event) => {
      this.isClosed = true;
      logEvent(`closed ${event.code} ${event.reason}`);
      this.onClosed(event);
      liveStopped();
    };
  }

  send(frame) {
    $("sent").textContent = String(Number($("sent").textContent) + 1);
    if (this.ready) this.ws.send(frame);
    else this.pending.push(frame);
  }

  end() {
    if (this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ type: "finalize" }));
      this.ws.send(JSON.stringify({ type: "end" }));
    }
    return this.closed;
  }
}

let live = null; // {session, stop()}
let openFinal = null; // the line the current utterance's final words join
let lastWordEnd = 0; // where its last word ended (ms)

function liveUi(running, label) {
  $("mic-start").disabled = running;
  $("file-input").disabled = running;
  $("live-stop").disabled = !running;
  $("live-state").textContent = label;
  $("live-state").dataset.state = running ? "running" : "idle";
}

function liveStopped() {
  if (live && live.cleanup) live.cleanup();
  live = null;
  liveUi(false, "idle");
}

function newLiveSession() {
  const form = $("live-form");
  if (!form.reportValidity()) return null;
  showError(null);
  $("acks").textContent = "0";
  $("sent").textContent = "0";
  $("finals").replaceChildren();
  openFinal = null;
  $("partial").textContent = "";
  clearSpectrogram();
  const session = new LiveSession($("live-user").value, $("live-session").value);
  session.open();
  return session;
}

async function startMic() {
  const session = newLiveSession();
  if (!session) return;
  liveUi(true, "recording");
  try {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    const ctx = new AudioContext();
    await ctx.audioWorklet.addModule("/static/pcm-worklet.js");
    const source = ctx.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(ctx, "pcm-frames", { processorOptions: { frameSamples: FRAME_SAMPLES } });
    node.port.onmessage = ({ data }) => {
      setLevel(data.rms, data.peak);
      session.send(data.pcm);
    };
    source.connect(node);
    node.connect(ctx.destination); // silent: the processor writes no output
    await ctx.resume();
    const cleanup = () => {
      for (const track of stream.getTracks()) track.stop();
      ctx.close();
    };
    if (session.isClosed) { // refused (a bad token, say) while the microphone started
      cleanup();
      return;
    }
    live = {
      session,
      stop: async () => {
        node.port.postMessage("stop");
        await new Promise((resolve) => setTimeout(resolve, 50));
        await session.end();
      },
      cleanup,
    };
    logEvent(`microphone at ${ctx.sampleRate} Hz, sending 16 kHz frames`);
  } catch (error) {
    showError(error);
    session.end();
  }
}

// A file, decoded and resampled to 16 kHz mono by the browser, sent in real time.
async function streamFile(file) {
  const session = newLiveSession();
  if (!session) return;
  liveUi(true, `streaming ${file.name}`);
  let timer = null;
  try {
    // Decoded straight to 16 kHz (an offline context's rate: no device, nothing to close);
    // a context at the device's rate (48 kHz, say) would resample a 16 kHz file up and
    // then down again.
    const decoded = await new OfflineAudioContext(1, 1, RATE).decodeAudioData(await file.arrayBuffer());
    const length = Math.ceil(decoded.duration * RATE);
    const offline = new OfflineAudioContext(1, length, RATE);
    const source = offline.createBufferSource();
    source.buffer = decoded;
    source.connect(offline.destination);
    source.start();
    const samples = (await offline.startRendering()).getChannelData(0);
    const started = performance.now();
    let index = 0;
    let stopped = false;
    const tick = () => {
      if (stopped) return;
      const due = Math.floor(((performance.now() - started) / FRAME_MS) + 1);
      while (index < due && index * FRAME_SAMPLES < samples.length) {
        const part = samples.subarray(index * FRAME_SAMPLES, (index + 1) * FRAME_SAMPLES);
        const pcm = new Int16Array(part.length);
        let sumSq = 0;
        let peak = 0;
        for (let i = 0; i < part.length; i++) {
          const v = Math.max(-1, Math.min(1, part[i]));
          pcm[i] = v < 0 ? v * 0x8000 : v * 0x7fff;
          sumSq += v * v;
          peak = Math.max(peak, Math.abs(v));
        }
        setLevel(Math.sqrt(sumSq / part.length), peak);
        session.send(pcm.buffer);
        index++;
      }
      if (index * FRAME_SAMPLES >= samples.length) {
        stopped = true;
        session.end();
        return;
      }
      timer = setTimeout(tick, FRAME_MS / 2);
    };
    const cleanup = () => {
      stopped = true;
      clearTimeout(timer);
    };
    if (session.isClosed) return;
    live = {
      session,
      stop: async () => {
        cleanup();
        await session.end();
      },
      cleanup,
    };
    tick();
  } catch (error) {
    showError(error);
    session.end();
  }
}

export function initLive() {
  $("mic-start").addEventListener("click", startMic);
  $("file-input").addEventListener("change", (event) => {
    const file = event.target.files[0];
    event.target.value = "";
    if (file) streamFile(file);
  });
  $("live-stop").addEventListener("click", () => {
    if (!live) return;
    $("live-state").textContent = "finishing";
    live.stop();
  });
  $("live-session").value = `live-${new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-")}`;
  clearSpectrogram();
}
