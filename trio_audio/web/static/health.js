// Health: the service's own numbers from /metrics, every 3 s while the tab is open.

import { api, el, fmtBytes, fmtMs, parseMetrics } from "./api.js";
import { $, showError } from "./ui.js";

let previous = null; // {at, totals}
let healthTimer = null;

function sum(metrics, name, filter = () => true) {
  return metrics.filter((m) => m.name === name && filter(m.labels)).reduce((a, m) => a + m.value, 0);
}

export async function refreshHealth() {
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
