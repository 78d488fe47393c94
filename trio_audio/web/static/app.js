// The console: live capture over /ws, browsing stored sessions, and health from /metrics.
// Plain ES module, no build step; everything it talks to is this origin's API.

import { ApiError, api, apiJson, el, fmtBytes, fmtMs, getToken, parseMetrics, setToken } from "./api.js";

const $ = (id) => document.getElementById(id);
const FRAME_MS = 100;
const RATE = 16000;
const FRAME_SAMPLES = (RATE * FRAME_MS) / 1000;
const MAX_EVENTS = 300;

// -- errors, tabs, token -------------------------------------------------------------------

function showError(error) {
  const box = $("error");
  if (!error) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  const code = error instanceof ApiError ? ` (${error.code})` : "";
  box.textContent = `${error.message || error}${code}`;
  box.hidden = false;
}

function showTab(name) {
  for (const section of document.querySelectorAll("section.tab")) {
    section.hidden = section.id !== name;
  }
  for (const link of document.querySelectorAll("nav a[data-tab]")) {
    link.classList.toggle("active", link.dataset.tab === name);
  }
  if (name === "health") refreshHealth();
}

function currentTab() {
  const name = location.hash.slice(1);
  return ["live", "browse", "health"].includes(name) ? name : "live";
}

function showTokenState() {
  $("token-state").textContent = getToken() ? "token set (this tab only)" : "no token";
  $("token").value = "";
}

// A new token (or none) is a new user: nothing the old one could see stays on screen.
function tokenChanged(token) {
  setToken(token);
  showTokenState();
  showError(null);
  resetBrowse();
}

$("auth").addEventListener("submit", (event) => {
  event.preventDefault();
  tokenChanged($("token").value.trim());
});
$("token-clear").addEventListener("click", () => tokenChanged(""));
window.addEventListener("hashchange", () => showTab(currentTab()));

// -- live capture ----------------------------------------------------------------------------

const spectrogram = $("spectrogram");
const specCtx = spectrogram.getContext("2d");

function bandColor(db) {
  const t = Math.max(0, Math.min(1, (db + 90) / 80)); // -90..-10 dB
  return `hsl(${Math.round(250 - 250 * t)}, 85%, ${Math.round(8 + 52 * t)}%)`;
}

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

function wordsLine(words) {
  return words.map((w) =>
    el("span", { class: "word", title: `${fmtMs(w.start_ms)} - ${fmtMs(w.end_ms)}`,
      dataset: { word: w.word, start: w.start_ms, end: w.end_ms } },
      w.word, el("sub", {}, (w.start_ms / 1000).toFixed(2))));
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
        $("partial").textContent = "";
        if (message.words.length) {  // each chunk's final, once stored; silent ones have none
          $("finals").append(el("li", { class: "final" }, ...wordsLine(message.words)));
          logEvent(`final transcript seq=${message.seq}: ${message.text}`, "final");
        }
      } else {
        $("partial").replaceChildren(...wordsLine(message.words));
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
      logEvent(`session_end ${JSON.stringify(message.summary)}`);
      break;
    case "error":
      showError(new Error(`${message.message} (${message.code})`));
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
    const decoded = await new AudioContext().decodeAudioData(await file.arrayBuffer());
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

// -- browse ----------------------------------------------------------------------------------

const browse = { user: "", only: "", sessions: new Map(), cursor: null, chunk: null, audioUrl: null };

async function loadSessions(more) {
  showError(null);
  const params = new URLSearchParams({ limit: "100" });
  if (browse.only) params.set("session_id", browse.only);
  if (more && browse.cursor) params.set("cursor", browse.cursor);
  try {
    const page = await apiJson(`/sessions/${encodeURIComponent(browse.user)}?${params}`);
    for (const s of page.sessions) {
      const known = browse.sessions.get(s.session_id);
      if (known) known.chunks.push(...s.chunks);
      else browse.sessions.set(s.session_id, s);
    }
    browse.cursor = page.next_cursor;
    renderSessions();
  } catch (error) {
    renderSessions();
    showError(error);
  }
}

function renderSessions() {
  const list = $("sessions");
  list.replaceChildren();
  for (const s of browse.sessions.values()) {
    list.append(el("li", {},
      el("button", { type: "button", class: "link", dataset: { session: s.session_id },
        onclick: () => openSession(s.session_id) }, s.session_id),
      el("span", { class: "muted" }, ` ${plural(s.chunk_count, "chunk")}, ${fmtMs(s.duration_ms)}`)));
  }
  if (!browse.sessions.size) list.append(el("li", { class: "muted" }, "no sessions"));
  $("more").hidden = !browse.cursor;
}

function plural(n, noun) {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

function transcriptSpans(chunks) {
  const spans = [];
  for (const chunk of chunks) {
    for (const w of (chunk.transcript && chunk.transcript.words) || []) {
      spans.push(el("span", { class: "word", dataset: { start: w.start_ms, end: w.end_ms } }, w.word), " ");
    }
  }
  return spans;
}

function openSession(id) {
  const s = browse.sessions.get(id);
  if (!s) return;
  browse.session = s;
  $("session-view").hidden = false;
  $("chunk-view").hidden = true;
  $("session-title").textContent = `${browse.user} / ${s.session_id}: ${plural(s.chunk_count, "chunk")}, ${fmtMs(s.duration_ms)}`;
  const spans = transcriptSpans(s.chunks);
  const status = s.transcript ? s.transcript.status : "none";
  $("session-transcript").replaceChildren(...(spans.length ? spans : [el("span", { class: "muted" }, `transcript: ${status}`)]));
  const body = $("chunks").tBodies[0];
  body.replaceChildren();
  for (const c of s.chunks) {
    body.append(el("tr", { class: "chunk", dataset: { chunk: c.chunk_id }, onclick: () => openChunk(c.chunk_id) },
      el("td", {}, c.seq),
      el("td", {}, fmtMs(c.audio.duration_ms)),
      el("td", {}, `${c.features.rms_dbfs} dBFS`),
      el("td", {}, `${Math.round((c.features.speech_ratio || 0) * 100)}%`),
      el("td", {}, c.transcript.status === "done" ? c.transcript.text : c.transcript.status)));
  }
}

function drawBars(canvas, values, lo, hi) {
  const g = canvas.getContext("2d");
  g.fillStyle = "#0b0d12";
  g.fillRect(0, 0, canvas.width, canvas.height);
  const w = canvas.width / values.length;
  values.forEach((v, i) => {
    const t = Math.max(0, Math.min(1, (v - lo) / (hi - lo)));
    g.fillStyle = bandColor(lo + t * (hi - lo));
    g.fillRect(i * w + 1, canvas.height * (1 - t), w - 2, canvas.height * t);
  });
}

function drawWaveform(canvas, samples) {
  const g = canvas.getContext("2d");
  const { width, height } = canvas;
  g.fillStyle = "#0b0d12";
  g.fillRect(0, 0, width, height);
  g.fillStyle = "#5ec4ff";
  const per = Math.max(1, Math.floor(samples.length / width));
  for (let x = 0; x < width; x++) {
    let lo = 0;
    let hi = 0;
    for (let i = x * per; i < Math.min(samples.length, (x + 1) * per); i++) {
      lo = Math.min(lo, samples[i]);
      hi = Math.max(hi, samples[i]);
    }
    g.fillRect(x, (height / 2) * (1 - hi), 1, Math.max(1, (height / 2) * (hi - lo)));
  }
}

// Raw PCM as stored (no container) -> float samples of channel 0, for the waveform and a WAV.
function rawSamples(buffer, audio) {
  const view = new DataView(buffer);
  const channels = audio.channels || 1;
  const sizes = { pcm_s16le: 2, pcm_s16be: 2, pcm_s24le: 3, pcm_s32le: 4, pcm_f32le: 4, pcm_u8: 1 };
  const size = sizes[audio.encoding];
  if (!size) return null;
  const frames = Math.floor(buffer.byteLength / (size * channels));
  const out = new Float32Array(frames);
  for (let i = 0; i < frames; i++) {
    const at = i * size * channels;
    switch (audio.encoding) {
      case "pcm_s16le": out[i] = view.getInt16(at, true) / 32768; break;
      case "pcm_s16be": out[i] = view.getInt16(at, false) / 32768; break;
      case "pcm_s24le": out[i] = ((view.getUint8(at) | (view.getUint8(at + 1) << 8) | (view.getInt8(at + 2) << 16))) / 8388608; break;
      case "pcm_s32le": out[i] = view.getInt32(at, true) / 2147483648; break;
      case "pcm_f32le": out[i] = view.getFloat32(at, true); break;
      default: out[i] = (view.getUint8(at) - 128) / 128;
    }
  }
  return out;
}

function wavBlob(samples, rate) {
  const data = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (at, s) => [...s].forEach((ch, i) => data.setUint8(at + i, ch.charCodeAt(0)));
  text(0, "RIFF"); data.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVE");
  text(12, "fmt "); data.setUint32(16, 16, true); data.setUint16(20, 1, true); data.setUint16(22, 1, true);
  data.setUint32(24, rate, true); data.setUint32(28, rate * 2, true); data.setUint16(32, 2, true);
  data.setUint16(34, 16, true); text(36, "data"); data.setUint32(40, samples.length * 2, true);
  samples.forEach((v, i) => data.setInt16(44 + i * 2, Math.max(-1, Math.min(1, v)) * 32767, true));
  return new Blob([data.buffer], { type: "audio/wav" });
}

async function openChunk(id) {
  showError(null);
  try {
    const chunk = await apiJson(`/chunks/${encodeURIComponent(id)}`);
    browse.chunk = chunk;
    for (const row of $("chunks").tBodies[0].rows) row.classList.toggle("selected", row.dataset.chunk === id);
    $("chunk-view").hidden = false;
    $("chunk-title").textContent = `chunk ${chunk.chunk_id} (seq ${chunk.seq}, ${fmtMs(chunk.audio.duration_ms)} at ${fmtMs(chunk.offset_ms)})`;
    $("chunk-json").textContent = JSON.stringify(chunk, null, 2);
    drawBars($("spectrum"), chunk.spectrum ? chunk.spectrum.band_db : [], -90, -10);
    $("chunk-words").replaceChildren(...transcriptSpans([chunk]));
    // The audio comes with the token's header, as a blob: no token in any URL.
    const bytes = await (await api(`/chunks/${encodeURIComponent(id)}/audio`)).arrayBuffer();
    let blob;
    let samples = null;
    if (chunk.audio.container === "raw") {
      samples = rawSamples(bytes, chunk.audio);
      blob = wavBlob(samples || new Float32Array(0), chunk.audio.sample_rate);
    } else {
      blob = new Blob([bytes], { type: `audio/${chunk.audio.container === "mp3" ? "mpeg" : chunk.audio.container}` });
      try {
        const decoded = await new AudioContext().decodeAudioData(bytes.slice(0));
        samples = decoded.getChannelData(0);
      } catch {
        samples = null; // the browser cannot decode it; playback may still work
      }
    }
    drawWaveform($("waveform"), samples || new Float32Array(0));
    if (browse.audioUrl) URL.revokeObjectURL(browse.audioUrl);
    browse.audioUrl = URL.createObjectURL(blob);
    $("player").src = browse.audioUrl;
    $("player").dataset.chunk = id;
  } catch (error) {
    showError(error);
  }
}

function highlightWords() {
  const chunk = browse.chunk;
  if (!chunk) return;
  const at = chunk.offset_ms + $("player").currentTime * 1000;
  for (const span of document.querySelectorAll("#session-transcript .word, #chunk-words .word")) {
    const on = Number(span.dataset.start) <= at && at < Number(span.dataset.end);
    span.classList.toggle("now", on);
  }
}

async function deleteChunk() {
  const chunk = browse.chunk;
  if (!chunk) return;
  if (!window.confirm(`Delete chunk ${chunk.chunk_id} (seq ${chunk.seq}) of ${chunk.session_id}? This cannot be undone.`)) return;
  try {
    await api(`/chunks/${encodeURIComponent(chunk.chunk_id)}`, { method: "DELETE" });
    const s = browse.sessions.get(chunk.session_id);
    if (s) {
      s.chunks = s.chunks.filter((c) => c.chunk_id !== chunk.chunk_id);
      s.chunk_count -= 1;
    }
    browse.chunk = null;
    renderSessions();
    openSession(chunk.session_id);
  } catch (error) {
    showError(error);
  }
}

function resetBrowse() {
  browse.sessions = new Map();
  browse.cursor = null;
  browse.chunk = null;
  $("player").removeAttribute("src");
  delete $("player").dataset.chunk;
  if (browse.audioUrl) URL.revokeObjectURL(browse.audioUrl);
  browse.audioUrl = null;
  $("session-view").hidden = true;
  $("chunk-view").hidden = true;
  for (const id of ["sessions", "session-title", "session-transcript", "chunk-title", "chunk-json", "chunk-words"]) {
    $(id).replaceChildren();
  }
  $("chunks").tBodies[0].replaceChildren();
  for (const id of ["waveform", "spectrum"]) drawBars($(id), [], 0, 1);
  $("more").hidden = true;
}

$("browse-form").addEventListener("submit", (event) => {
  event.preventDefault();
  resetBrowse();
  browse.user = $("browse-user").value;
  browse.only = $("browse-session").value;
  loadSessions(false);
});
$("more").addEventListener("click", () => loadSessions(true));
$("player").addEventListener("timeupdate", highlightWords);
$("delete").addEventListener("click", deleteChunk);

// -- health ----------------------------------------------------------------------------------

let previous = null; // {at, totals}
let healthTimer = null;

function sum(metrics, name, filter = () => true) {
  return metrics.filter((m) => m.name === name && filter(m.labels)).reduce((a, m) => a + m.value, 0);
}

async function refreshHealth() {
  clearTimeout(healthTimer);
  healthTimer = setTimeout(refreshHealth, 3000);
  if ($("health").hidden) return;
  let metrics;
  try {
    metrics = parseMetrics(await (await api("/metrics")).text());
  } catch (error) {
    showError(error);
    return;
  }
  const now = performance.now();
  const totals = {
    accepted: sum(metrics, "trio_audio_accepted_total"),
    stored: sum(metrics, "trio_audio_stored_total"),
    refused: sum(metrics, "trio_audio_refused_total"),
    failed: sum(metrics, "trio_audio_failed_total"),
  };
  const rate = (key) => {
    if (!previous) return "-";
    const dt = (now - previous.at) / 1000;
    return `${((totals[key] - previous.totals[key]) / dt).toFixed(1)}/s`;
  };
  const rows = [];
  for (const m of metrics.filter((x) => x.name === "trio_audio_queue_depth")) {
    rows.push([`queue ${m.labels.queue}`, m.value]);
  }
  rows.push(["admitted", `${totals.accepted} (${rate("accepted")})`]);
  rows.push(["stored", `${totals.stored} (${rate("stored")})`]);
  rows.push(["refused", `${totals.refused} (${rate("refused")})`]);
  for (const m of metrics.filter((x) => x.name === "trio_audio_refused_total")) {
    rows.push([`  refused: ${m.labels.reason}`, m.value]);
  }
  rows.push(["failed", `${totals.failed} (${rate("failed")})`]);
  rows.push(["transcript lag", fmtMs(sum(metrics, "trio_audio_transcribe_lag_seconds") * 1000)]);
  rows.push(["transcript backlog", sum(metrics, "trio_audio_transcribe_backlog")]);
  rows.push(["chunks in store", sum(metrics, "trio_audio_store_chunks")]);
  rows.push(["audio stored since start", fmtBytes(sum(metrics, "trio_audio_stored_bytes_total"))]);
  rows.push(["WebSocket sessions", sum(metrics, "trio_audio_ws_sessions")]);
  previous = { at: now, totals };
  $("health-table").tBodies[0].replaceChildren(
    ...rows.map(([k, v]) => el("tr", { dataset: { metric: k.trim() } }, el("th", {}, k), el("td", {}, v))));
}

// -- start -------------------------------------------------------------------------------------

$("live-session").value = `live-${new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-")}`;
clearSpectrogram();
showTokenState();
showTab(currentTab());
