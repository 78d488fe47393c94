// What every part of the console shares: the error banner (in words a person can act on),
// numbers as people read them, and the colour scale of the spectrograms.

import { ApiError, getToken } from "./api.js";

export const $ = (id) => document.getElementById(id);

// What to tell a person for each error code; the server's own detail follows where it helps.
function advice(code, detail) {
  const hasToken = Boolean(getToken());
  switch (code) {
    case "unauthorized":
      return hasToken
        ? "The server did not accept this token. Check that it was pasted whole, or ask " +
            "whoever runs the server for a new one."
        : "This server asks for a token. Ask whoever runs it for one (they make it with " +
            "'trio-audio token add YOUR_NAME'), paste it into the Token box at the top and press Use.";
    case "forbidden":
      return `Your token belongs to another user: ${detail}`;
    case "not_found":
      return hasToken
        ? `Not found: ${detail}. A token shows only its own user's sessions.`
        : `Not found: ${detail}.`;
    case "overloaded":
    case "rate_limited":
    case "slow_reader":
      return "The server is busy right now; try again in a few seconds.";
    case "insufficient_storage":
      return "The server's disk is full, so it cannot store or delete anything now.";
    case "idle_timeout":
      return "The stream was quiet for too long, so the server closed it. Start again.";
    default:
      return detail;
  }
}

function describe(error) {
  if (error instanceof ApiError) return { text: advice(error.code, error.message), code: error.code };
  if (error && error.code && typeof error.code === "string") {
    return { text: advice(error.code, error.message), code: error.code }; // a WebSocket error
  }
  if (error instanceof TypeError && /fetch/i.test(error.message)) {
    return { text: "Cannot reach the server. Is it still running?", code: "" };
  }
  if (error && error.name === "NotAllowedError") {
    return { text: "The browser did not allow the microphone. Allow it for this page and try again.", code: "" };
  }
  if (error && error.name === "NotFoundError") {
    return { text: "No microphone was found.", code: "" };
  }
  return { text: String((error && error.message) || error), code: "" };
}

export function showError(error) {
  const box = $("error");
  if (!error) {
    box.hidden = true;
    box.replaceChildren();
    return;
  }
  const { text, code } = describe(error);
  box.replaceChildren(text);
  if (code) {
    const small = document.createElement("span");
    small.className = "muted code";
    small.textContent = ` (${code})`;
    box.append(small);
  }
  box.hidden = false;
}

export function plural(n, noun) {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

// 2.5 s -> "2.5 s", 83.4 s -> "1:23", 4 h -> "4:00:00"
export function fmtClock(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "-";
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  const total = Math.round(ms / 1000);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

export function bandColor(db) {
  const t = Math.max(0, Math.min(1, (db + 90) / 80)); // -90..-10 dB
  return `hsl(${Math.round(250 - 250 * t)}, 85%, ${Math.round(8 + 52 * t)}%)`;
}
