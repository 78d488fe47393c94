// /docs: the service's OpenAPI document, rendered, with a form per operation to try it.
// Requests go to this origin with the token as a header (never in the URL).

import { el, getToken, setToken } from "./api.js";

const $ = (id) => document.getElementById(id);
const METHODS = ["get", "post", "put", "patch", "delete"];

function showTokenState() {
  $("token-state").textContent = getToken() ? "token set (this tab only)" : "no token";
  $("token").value = "";
}

$("auth").addEventListener("submit", (event) => {
  event.preventDefault();
  setToken($("token").value.trim());
  showTokenState();
});
$("token-clear").addEventListener("click", () => {
  setToken("");
  showTokenState();
});

function resolve(spec, item) {
  if (item && item.$ref) {
    return item.$ref.replace(/^#\//, "").split("/").reduce((node, key) => node[key], spec);
  }
  return item;
}

function operationForm(spec, path, method, op, shared) {
  // The path item's parameters, then the operation's own (which win on a name clash).
  const own = (op.parameters || []).map((p) => resolve(spec, p));
  const inherited = shared.map((p) => resolve(spec, p))
    .filter((p) => !own.some((o) => o.name === p.name && o.in === p.in));
  const params = [...inherited, ...own];
  const inputs = new Map();
  const fields = params.map((p) => {
    const input = el("input", { name: p.name, placeholder: p.schema && p.schema.type ? p.schema.type : "" });
    inputs.set(p, input);
    return el("label", {}, `${p.name} (${p.in}${p.required ? ", required" : ""}) `, input,
      p.description ? el("span", { class: "muted" }, ` ${p.description}`) : null);
  });
  let bodyType = null;
  let bodyFile = null;
  let bodyText = null;
  const bodyFields = [];
  if (op.requestBody) {
    const types = Object.keys(op.requestBody.content || {});
    bodyType = el("select", {}, ...types.map((t) => el("option", { value: t }, t)));
    bodyFile = el("input", { type: "file", multiple: true });
    bodyText = el("textarea", { placeholder: "or a text body" });
    bodyFields.push(el("label", {}, "body type ", bodyType),
      el("label", {}, "file(s) ", bodyFile), bodyText);
  }
  const result = el("div", { class: "result" });
  const send = el("button", { type: "submit" }, "Send");
  const form = el("form", { class: "try" }, ...fields, ...bodyFields, send, result);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let url = path;
    const query = new URLSearchParams();
    for (const [p, input] of inputs) {
      if (!input.value) continue;
      if (p.in === "path") url = url.replace(`{${p.name}}`, encodeURIComponent(input.value));
      else if (p.in === "query") query.set(p.name, input.value);
    }
    if (/\{[^}]+\}/.test(url)) {
      result.replaceChildren(el("p", { class: "error" }, "fill in every path parameter"));
      return;
    }
    if ([...query].length) url += `?${query}`;
    const headers = new Headers();
    const token = getToken();
    if (token) headers.set("Authorization", `Bearer ${token}`);
    let body;
    if (bodyType) {
      const type = bodyType.value;
      if (type === "multipart/form-data") {
        body = new FormData();
        for (const file of bodyFile.files) body.append("file", file);
      } else {
        headers.set("Content-Type", type);
        body = bodyFile.files[0] || bodyText.value;
      }
    }
    const started = performance.now();
    try {
      const response = await fetch(url, { method: method.toUpperCase(), headers, body, credentials: "omit" });
      const ms = (performance.now() - started).toFixed(0);
      const type = response.headers.get("Content-Type") || "";
      const head = el("p", { class: "mono" }, `${method.toUpperCase()} ${url} -> ${response.status} ${response.statusText} (${ms} ms, ${type})`);
      let shown;
      if (type.includes("json")) shown = el("pre", {}, JSON.stringify(await response.json(), null, 2));
      else if (type.startsWith("text/")) shown = el("pre", {}, await response.text());
      else {
        const blob = await response.blob();
        shown = el("p", {}, `${blob.size} bytes`);
        if (type.startsWith("audio/")) shown = el("div", {}, shown, el("audio", { controls: true, src: URL.createObjectURL(blob) }));
      }
      result.replaceChildren(head, shown);
    } catch (error) {
      result.replaceChildren(el("p", { class: "error" }, String(error)));
    }
  });
  const responses = Object.entries(op.responses || {}).map(([code, r]) =>
    el("li", {}, el("b", {}, code), ` ${resolve(spec, r).description || ""}`));
  return el("details", { class: "op", dataset: { path, method } },
    el("summary", {}, el("span", { class: `method ${method}` }, method.toUpperCase()),
      el("code", {}, path), el("span", { class: "muted" }, `  ${op.summary || ""}`)),
    op.description ? el("p", {}, op.description) : null,
    el("ul", { class: "muted" }, ...responses), form);
}

async function main() {
  showTokenState();
  try {
    const spec = await (await fetch("/openapi.json", { credentials: "omit" })).json();
    $("info").textContent = `${spec.info.title} ${spec.info.version}. ${spec.info.description || ""}`;
    const ops = [];
    for (const [path, item] of Object.entries(spec.paths)) {
      for (const method of METHODS) {
        if (item[method]) ops.push(operationForm(spec, path, method, item[method], item.parameters || []));
      }
    }
    $("operations").replaceChildren(...ops);
    $("schemas").textContent = JSON.stringify((spec.components || {}).schemas || {}, null, 2);
  } catch (error) {
    $("error").textContent = `cannot load /openapi.json: ${error}`;
    $("error").hidden = false;
  }
}

main();
