// The console: live capture over /ws, browsing stored sessions, and health from /metrics.
// Plain ES modules, no build step; everything they talk to is this origin's API.

import { getToken, setToken } from "./api.js";
import { initBrowse, resetBrowse } from "./browse.js";
import { refreshHealth } from "./health.js";
import { initLive } from "./live.js";
import { $, showError } from "./ui.js";

const TABS = ["live", "browse", "health"];

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
  return TABS.includes(name) ? name : "live";
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

initLive();
initBrowse();
showTokenState();
showTab(currentTab());
