// Browse: a user's sessions, and one session as its transcript on one timeline: the whole
// session's audio in one player, each word a place to seek to (lit while it is said), the
// downloads, a short page of its chunks with one chunk's details, and deletes.

import { api, apiJson, el, fmtMs, getToken } from "./api.js";
import { chunkSamples, drawBars, drawWaveform } from "./chunk.js";
import { $, fmtClock, plural, showError } from "./ui.js";

const SESSIONS_PAGE = 50;
const CHUNKS_PAGE = 20;
const PREVIEW_CHARS = 90;
const LONG_SESSION_MS = 10 * 60 * 1000;
const EXTENSIONS = { wav: "wav", srt: "srt", vtt: "vtt", txt: "txt" };

const browse = {
  user: "",
  sessions: new Map(), // session_id -> totals (no chunks)
  cursor: null, // of the next page of sessions
  session: null, // the totals of the session on show
  generation: 0, // bumped on every switch, so a late answer for an old view is dropped
  words: [], // the session's words in time order, with their elements
  chunkStarts: new Map(), // chunk_id -> where it starts in the session's audio (ms)
  lit: -1,
  chunkCursors: [], // the cursors of the chunk pages before this one
  chunkCursor: null,
  nextChunkCursor: null,
  chunk: null,
  audioUrl: null,
};

const enc = encodeURIComponent;
const sessionPath = (s) => `/sessions/${enc(browse.user)}/${enc(s)}`;

// -- the list of sessions ---------------------------------------------------------------------

async function listSessions(more) {
  showError(null);
  const params = new URLSearchParams({ chunks: "false", limit: String(SESSIONS_PAGE) });
  if (more && browse.cursor) params.set("cursor", browse.cursor);
  const generation = browse.generation;
  try {
    const page = await apiJson(`/sessions/${enc(browse.user)}?${params}`);
    if (generation !== browse.generation) return;
    for (const s of page.sessions) browse.sessions.set(s.session_id, s);
    browse.cursor = page.next_cursor;
    renderSessions();
  } catch (error) {
    if (generation === browse.generation) showError(error);
  }
}

function transcriptPreview(s) {
  const t = s.transcript || {};
  if (t.text) return t.text.length > PREVIEW_CHARS ? `${t.text.slice(0, PREVIEW_CHARS)}…` : t.text;
  return { pending: "transcribing…", done: "no words", failed: "transcription failed" }[t.status] || "no transcript";
}

function renderSessions() {
  const list = $("sessions");
  list.replaceChildren();
  for (const s of browse.sessions.values()) {
    const on = browse.session && browse.session.session_id === s.session_id;
    list.append(el("li", { class: on ? "selected" : "", dataset: { session: s.session_id } },
      el("button", { type: "button", class: "link", dataset: { session: s.session_id },
        onclick: () => openSession(s.session_id) }, s.session_id),
      el("span", { class: "muted" }, ` ${fmtClock(s.duration_ms)} · ${plural(s.chunk_count, "chunk")}`),
      el("span", { class: "preview" }, transcriptPreview(s))));
  }
  if (!browse.sessions.size) list.append(el("li", { class: "muted" }, "no sessions"));
  $("more").hidden = !browse.cursor;
}

// -- one session --------------------------------------------------------------------------------

// Show session *id*; *page* keeps the chunk page on show (after a delete in it).
function openSession(id, page = null) {
  const s = browse.sessions.get(id);
  if (!s) return;
  showError(null);
  browse.generation++;
  browse.session = s;
  closeChunk();
  renderSessions();
  $("session-view").hidden = false;
  renderSessionHead();
  loadAudio();
  loadTranscript();
  browse.chunkCursors = page ? page.earlier : [];
  loadChunks(page ? page.cursor : null);
}

function renderSessionHead() {
  const s = browse.session;
  $("session-title").textContent = `${browse.user} / ${s.session_id}`;
  $("session-meta").textContent = `${fmtClock(s.duration_ms)} · ${plural(s.chunk_count, "chunk")}`;
  $("chunks-summary").textContent = `Chunks (${s.chunk_count})`;
  for (const link of document.querySelectorAll("a.download")) {
    const format = link.dataset.format;
    link.href = format === "wav" ? `${sessionPath(s.session_id)}/audio`
      : `${sessionPath(s.session_id)}/transcript?format=${format}`;
    link.download = `${browse.user}-${s.session_id}.${EXTENSIONS[format]}`;
  }
}

function dropAudio() {
  const player = $("player");
  $("player-state").hidden = true;
  player.pause();
  player.removeAttribute("src");
  delete player.dataset.session;
  player.load();
  if (browse.audioUrl) URL.revokeObjectURL(browse.audioUrl);
  browse.audioUrl = null;
}

// The whole session as one WAV. Without a token the player streams it (and seeks with range
// requests); with one, the page fetches it with the token's header first, since a URL must
// never carry the token (a long session only when asked: an hour is ~115 MB at 16 kHz).
async function loadAudio(force = false) {
  const s = browse.session;
  const generation = browse.generation;
  dropAudio();
  const url = `${sessionPath(s.session_id)}/audio`;
  const player = $("player");
  const note = $("player-state");
  if (!getToken()) {
    player.src = url;
    player.dataset.session = s.session_id;
    return;
  }
  if (s.duration_ms > LONG_SESSION_MS && !force) {
    note.replaceChildren(`This session is ${fmtClock(s.duration_ms)} long; with a token its audio is ` +
      "fetched whole before it plays. ",
      el("button", { type: "button", id: "load-audio", onclick: () => loadAudio(true) }, "Load the audio"));
    note.hidden = false;
    return;
  }
  note.textContent = "Loading the session's audio…";
  note.hidden = false;
  try {
    const blob = await (await api(url)).blob();
    if (generation !== browse.generation) return;
    browse.audioUrl = URL.createObjectURL(blob);
    player.src = browse.audioUrl;
    player.dataset.session = s.session_id;
    note.hidden = true;
  } catch (error) {
    if (generation === browse.generation) {
      note.hidden = true;
      showError(error);
    }
  }
}

async function loadTranscript() {
  const s = browse.session;
  const generation = browse.generation;
  const box = $("session-transcript");
  browse.words = [];
  browse.lit = -1;
  box.replaceChildren(el("span", { class: "muted" }, "loading…"));
  try {
    const doc = await apiJson(`${sessionPath(s.session_id)}/transcript?format=json`);
    if (generation !== browse.generation) return;
    browse.chunkStarts = new Map((doc.chunks || []).map((c) => [c.chunk_id, c.start_ms]));
    const words = (doc.words || []).slice().sort((a, b) => a.start_ms - b.start_ms);
    const nodes = [];
    browse.words = words.map((w, i) => {
      const node = el("span", { class: "word", title: fmtMs(w.start_ms),
        dataset: { start: w.start_ms, end: w.end_ms, index: i } }, w.word);
      if (i) nodes.push(" ");
      nodes.push(node);
      return { start: w.start_ms, end: w.end_ms, node };
    });
    box.replaceChildren(...(nodes.length ? nodes
      : [el("span", { class: "muted" }, transcriptPreview(s))]));
  } catch (error) {
    if (generation !== browse.generation) return;
    box.replaceChildren();
    showError(error);
  }
}

function seek(ms, play = true) {
  const player = $("player");
  player.currentTime = Math.max(0, ms / 1000);
  if (play) player.play().catch(() => {}); // a pause before it starts is not an error
}

// The word whose time holds the player's position (binary search), lit; the others not.
function lightWord() {
  const words = browse.words;
  const at = $("player").currentTime * 1000;
  let lo = 0;
  let hi = words.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (words[mid].start <= at) {
      found = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  if (found >= 0 && at >= words[found].end) found = -1;
  if (found === browse.lit) return;
  if (browse.lit >= 0 && words[browse.lit]) words[browse.lit].node.classList.remove("now");
  browse.lit = found;
  if (found < 0) return;
  const node = words[found].node;
  node.classList.add("now");
  const box = $("session-transcript");
  if (node.offsetTop < box.scrollTop || node.offsetTop > box.scrollTop + box.clientHeight - 24) {
    box.scrollTop = node.offsetTop - box.clientHeight / 3;
  }
}

// -- the session's chunks, a page at a time -----------------------------------------------------

async function loadChunks(cursor) {
  const s = browse.session;
  const generation = browse.generation;
  const params = new URLSearchParams({ session_id: s.session_id, limit: String(CHUNKS_PAGE) });
  if (cursor) params.set("cursor", cursor);
  try {
    const page = await apiJson(`/sessions/${enc(browse.user)}?${params}`);
    if (generation !== browse.generation) return;
    const chunks = page.sessions.length ? page.sessions[0].chunks : [];
    browse.chunkCursor = cursor;
    browse.nextChunkCursor = page.next_cursor;
    renderChunks(chunks);
  } catch (error) {
    if (generation === browse.generation) showError(error);
  }
}

function renderChunks(chunks) {
  const body = $("chunks").tBodies[0];
  body.replaceChildren(...chunks.map((c) =>
    el("tr", { class: "chunk", tabIndex: 0, dataset: { chunk: c.chunk_id }, onclick: () => openChunk(c.chunk_id) },
      el("td", {}, c.seq),
      el("td", {}, fmtClock(c.offset_ms)),
      el("td", {}, fmtMs(c.audio.duration_ms)),
      el("td", { class: "narrow-hide" }, `${c.features.rms_dbfs} dBFS`),
      el("td", { class: "narrow-hide" }, `${Math.round((c.features.speech_ratio || 0) * 100)}%`),
      el("td", {}, c.transcript.status === "done" ? c.transcript.text : c.transcript.status))));
  const total = browse.session.chunk_count;
  const first = browse.chunkCursors.length * CHUNKS_PAGE;
  $("chunks-range").textContent = chunks.length
    ? `${first + 1}-${first + chunks.length} of ${total}` : "no chunks";
  $("chunks-prev").disabled = !browse.chunkCursors.length;
  $("chunks-next").disabled = !browse.nextChunkCursor;
  markChunk();
}

function markChunk() {
  const id = browse.chunk && browse.chunk.chunk_id;
  for (const row of $("chunks").tBodies[0].rows) row.classList.toggle("selected", row.dataset.chunk === id);
}

async function openChunk(id) {
  showError(null);
  const generation = browse.generation;
  try {
    const chunk = await apiJson(`/chunks/${enc(id)}`);
    if (generation !== browse.generation) return;
    browse.chunk = chunk;
    markChunk();
    const view = $("chunk-view");
    view.hidden = false;
    $("chunk-title").textContent = `seq ${chunk.seq} · ${fmtMs(chunk.audio.duration_ms)} at ${fmtClock(chunk.offset_ms)}`;
    view.dataset.chunk = chunk.chunk_id;
    $("chunk-json").textContent = JSON.stringify(chunk, null, 2);
    drawBars($("spectrum"), chunk.spectrum ? chunk.spectrum.band_db : [], -90, -10);
    const words = (chunk.transcript && chunk.transcript.words) || [];
    $("chunk-words").replaceChildren(...words.flatMap((w, i) => [i ? " " : "",
      el("span", { class: "word", dataset: { start: w.start_ms, end: w.end_ms } }, w.word)]));
    view.scrollIntoView({ block: "nearest" });
    // The stored bytes come with the token's header; the waveform is drawn from them.
    const bytes = await (await api(`/chunks/${enc(id)}/audio`)).arrayBuffer();
    if (generation !== browse.generation || browse.chunk !== chunk) return;
    drawWaveform($("waveform"), (await chunkSamples(bytes, chunk.audio)) || new Float32Array(0));
    view.dataset.drawn = chunk.chunk_id;
  } catch (error) {
    showError(error);
  }
}

function closeChunk() {
  browse.chunk = null;
  const view = $("chunk-view");
  view.hidden = true;
  delete view.dataset.chunk;
  delete view.dataset.drawn;
  for (const id of ["chunk-title", "chunk-json", "chunk-words"]) $(id).replaceChildren();
  for (const id of ["waveform", "spectrum"]) drawBars($(id), [], 0, 1);
  markChunk();
}

// -- deletes: each asks first, then shows what the server now holds -----------------------------

async function deleteChunk() {
  const chunk = browse.chunk;
  if (!chunk) return;
  if (!window.confirm(`Delete chunk ${chunk.seq} (${fmtMs(chunk.audio.duration_ms)}) of session ${chunk.session_id}? This cannot be undone.`)) return;
  try {
    await api(`/chunks/${enc(chunk.chunk_id)}`, { method: "DELETE" });
  } catch (error) {
    showError(error);
    return;
  }
  await refreshSession(chunk.session_id);
}

async function deleteSession() {
  const s = browse.session;
  if (!s) return;
  const what = `${fmtClock(s.duration_ms)}, ${plural(s.chunk_count, "chunk")}`;
  if (!window.confirm(`Delete the whole session ${s.session_id} (${what}), its audio and transcript? This cannot be undone.`)) return;
  try {
    await api(sessionPath(s.session_id), { method: "DELETE" });
  } catch (error) {
    showError(error);
    return;
  }
  closeSession();
  browse.sessions = new Map();
  browse.cursor = null;
  await listSessions(false);
}

// After a chunk's delete: the session's totals, words, audio and chunk page, read again.
async function refreshSession(id) {
  const params = new URLSearchParams({ chunks: "false", session_id: id });
  let page;
  try {
    page = await apiJson(`/sessions/${enc(browse.user)}?${params}`);
  } catch (error) {
    showError(error);
    return;
  }
  const s = page.sessions[0];
  if (!s) { // its last chunk went: the session went with it
    browse.sessions.delete(id);
    closeSession();
    renderSessions();
    return;
  }
  browse.sessions.set(id, s);
  openSession(id, { cursor: browse.chunkCursor, earlier: browse.chunkCursors });
}

function closeSession() {
  browse.generation++;
  browse.session = null;
  browse.words = [];
  dropAudio();
  closeChunk();
  $("session-view").hidden = true;
  for (const id of ["session-title", "session-meta", "session-transcript"]) $(id).replaceChildren();
  $("chunks").tBodies[0].replaceChildren();
  for (const link of document.querySelectorAll("a.download")) {
    link.removeAttribute("href");
    link.removeAttribute("download");
  }
}

// A download with the token's header: fetched here, then saved from a blob: URL.
async function download(event) {
  const link = event.currentTarget;
  if (!getToken() || !link.href || link.href.startsWith("blob:")) return;
  event.preventDefault();
  try {
    const blob = await (await api(link.getAttribute("href"))).blob();
    const url = URL.createObjectURL(blob);
    const save = el("a", { href: url, download: link.download });
    document.body.append(save);
    save.click();
    save.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (error) {
    showError(error);
  }
}

export function resetBrowse() {
  closeSession();
  browse.sessions = new Map();
  browse.cursor = null;
  $("sessions").replaceChildren();
  $("more").hidden = true;
}

export function initBrowse() {
  $("browse-form").addEventListener("submit", (event) => {
    event.preventDefault();
    resetBrowse();
    browse.user = $("browse-user").value;
    listSessions(false);
  });
  $("more").addEventListener("click", () => listSessions(true));
  $("player").addEventListener("timeupdate", lightWord);
  $("player").addEventListener("seeked", lightWord);
  $("session-transcript").addEventListener("click", (event) => {
    const word = event.target.closest(".word");
    if (word) seek(Number(word.dataset.start));
  });
  $("chunks").tBodies[0].addEventListener("keydown", (event) => {
    if (event.key === "Enter" && event.target.dataset.chunk) openChunk(event.target.dataset.chunk);
  });
  $("chunks-prev").addEventListener("click", () => {
    if (browse.chunkCursors.length) loadChunks(browse.chunkCursors.pop());
  });
  $("chunks-next").addEventListener("click", () => {
    if (!browse.nextChunkCursor) return;
    browse.chunkCursors.push(browse.chunkCursor);
    loadChunks(browse.nextChunkCursor);
  });
  $("chunk-play").addEventListener("click", () => {
    const chunk = browse.chunk;
    if (chunk) seek(browse.chunkStarts.get(chunk.chunk_id) ?? chunk.offset_ms);
  });
  $("chunk-close").addEventListener("click", closeChunk);
  $("chunk-delete").addEventListener("click", deleteChunk);
  $("delete-session").addEventListener("click", deleteSession);
  for (const link of document.querySelectorAll("a.download")) link.addEventListener("click", download);
}
