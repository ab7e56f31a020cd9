// The web interface of the DeepFake detection service (paper section 5.2).
//
// One page, no build step, no third-party code: it talks to the /v1 API of the service that
// served it (relative URLs, so it also works under a path prefix). Views, by URL fragment:
//   #/                 submit a link or a file
//   #/jobs/<id>        live progress, then the image or video analysis (shareable)
//   #/model-card       the model card, #/about  version, models, how to read the scores
// Data from the service is only ever inserted as text (never as HTML).

const KEY_STORAGE = "dfd.apiKey";

// The pipeline's colour map (pipeline/gallery.py): Okabe-Ito blue at 0, a light yellow at 0.5,
// Okabe-Ito vermillion at 1. Distinguishable under the common colour-vision deficiencies.
const COLOUR_STOPS = [
  [0.0, [0, 114, 178]],
  [0.5, [240, 228, 66]],
  [1.0, [213, 94, 0]],
];

// Stages as the pipeline reports them (pipeline/analyze.py), in order.
const STAGES = [
  ["queued", "Queued", "waiting for a worker"],
  ["downloading", "Downloading", "fetching the medium from its link"],
  ["probing", "Reading the file", "checking its format and size"],
  ["segmenting", "Segmenting", "finding the shots of the video"],
  ["detecting faces", "Detecting faces", "finding faces in the sampled frames"],
  ["scoring", "Scoring", "five models estimate a probability for every face"],
  ["done", "Done", "the result is ready"],
];

const BAND_TEXT = {
  "likely-real": "Likely real",
  uncertain: "Uncertain",
  "likely-manipulated": "Likely manipulated",
  "no-faces": "No faces found",
};

// ---------------------------------------------------------------------------------------------
// Small helpers

/** An element: h("p", {class: "x", onclick: fn}, "text", child, ...). Strings become text. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "style") Object.assign(el.style, value);
    else if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

/** Replace the children of ``el`` (null, undefined and false are skipped). */
function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Probability as a percentage, truncated to one decimal so that a score just under a band
 * threshold never shows as the threshold itself (0.6996 reads 69.9%, not 70.0%). */
function pct(score) {
  if (score === null || score === undefined) return "–";
  return `${(Math.floor(score * 1000 + 1e-9) / 10).toFixed(1)}%`;
}

function pctThreshold(value) {
  return `${+(value * 100).toFixed(1)}%`;
}

function scoreColour(score) {
  const s = Math.min(Math.max(Number(score), 0), 1);
  for (let i = 1; i < COLOUR_STOPS.length; i++) {
    const [s0, c0] = COLOUR_STOPS[i - 1];
    const [s1, c1] = COLOUR_STOPS[i];
    if (s <= s1) {
      const t = (s - s0) / (s1 - s0);
      return c0.map((a, k) => Math.round(a + (c1[k] - a) * t));
    }
  }
  return COLOUR_STOPS[COLOUR_STOPS.length - 1][1];
}

function rgb(c) {
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

/** Black or white, whichever contrasts more with the background colour ``c`` (WCAG). */
function textOn(c) {
  const lin = (v) => {
    const x = v / 255;
    return x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4;
  };
  const lum = 0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2]);
  return (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) ? "#000" : "#fff";
}

function bandOf(score, bands) {
  if (score === null || score === undefined) return "no-faces";
  if (score >= bands.manipulated_from) return "likely-manipulated";
  if (score < bands.real_below) return "likely-real";
  return "uncertain";
}

function fmtTime(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const total = Math.max(0, seconds);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = (total % 60).toFixed(1).padStart(4, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

function fmtBytes(n) {
  if (!Number.isFinite(n)) return "–";
  const units = ["bytes", "KB", "MB", "GB"];
  let i = 0;
  let v = n;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i += 1;
  }
  return i === 0 ? `${v} bytes` : `${v.toFixed(1)} ${units[i]}`;
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

// ---------------------------------------------------------------------------------------------
// The API: keys, problem+json errors

class ApiError extends Error {
  constructor(problem, status) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.problem = problem;
    this.status = status;
  }
}

function getKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE);
  } catch {
    return null;
  }
}

function setKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // Storage disabled: the key then lives only as long as this page.
  }
  memoryKey = key || null;
  updateKeyStatus();
}

let memoryKey = null;

function currentKey() {
  return getKey() || memoryKey;
}

function authHeaders() {
  const key = currentKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** The problem+json body of an error response, or one made from its status and text. */
async function readProblem(resp) {
  const type = resp.headers.get("content-type") || "";
  let text = "";
  try {
    text = await resp.text();
  } catch {
    text = "";
  }
  if (type.includes("json")) {
    try {
      const body = JSON.parse(text);
      if (body && typeof body === "object" && (body.title || body.detail)) {
        return { status: resp.status, ...body };
      }
    } catch {
      // Not JSON after all: fall through to the plain-text problem.
    }
  }
  return {
    title: `The service answered ${resp.status} ${resp.statusText}`.trim(),
    detail: text.trim().slice(0, 300) || "No details were given.",
    status: resp.status,
  };
}

function unreachable(path, error) {
  return new ApiError(
    {
      title: "Cannot reach the service",
      detail: `The request to ${path} failed (${error.message}). Check the connection and try again.`,
    },
    0,
  );
}

/** JSON from the API; asks for a key on 401 and retries; throws ApiError with the problem. */
async function api(path, { method = "GET", json, signal } = {}) {
  let rejected = false;
  for (;;) {
    const headers = { Accept: "application/json, application/problem+json", ...authHeaders() };
    const init = { method, headers, signal };
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw unreachable(path, error);
    }
    if (resp.status === 401) {
      const problem = await readProblem(resp);
      if (await askForKey(problem, rejected || Boolean(currentKey()))) {
        rejected = true;
        continue;
      }
      throw new ApiError(problem, 401);
    }
    if (!resp.ok) throw new ApiError(await readProblem(resp), resp.status);
    if (resp.status === 204) return null;
    return resp.json();
  }
}

/** POST a file as multipart (field ``file``) with upload progress; the JSON answer. */
function uploadFile(path, file, onProgress) {
  const attempt = () =>
    new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", path);
      xhr.setRequestHeader("Accept", "application/json, application/problem+json");
      for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
      xhr.upload.addEventListener("progress", (e) => {
        if (e.lengthComputable) onProgress(e.loaded / e.total);
      });
      xhr.addEventListener("load", () => {
        const body = xhr.responseText;
        const type = xhr.getResponseHeader("content-type") || "";
        let parsed = null;
        try {
          parsed = type.includes("json") ? JSON.parse(body) : null;
        } catch {
          parsed = null;
        }
        if (xhr.status >= 200 && xhr.status < 300) resolve(parsed);
        else {
          const problem = parsed && (parsed.title || parsed.detail)
            ? { status: xhr.status, ...parsed }
            : {
              title: `The service answered ${xhr.status} ${xhr.statusText}`.trim(),
              detail: body.trim().slice(0, 300) || "No details were given.",
              status: xhr.status,
            };
          reject(new ApiError(problem, xhr.status));
        }
      });
      xhr.addEventListener("error", () => reject(unreachable(path, new Error("network error"))));
      const form = new FormData();
      form.append("file", file, file.name);
      xhr.send(form);
    });
  return (async () => {
    let rejected = false;
    for (;;) {
      try {
        return await attempt();
      } catch (error) {
        if (error instanceof ApiError && error.status === 401) {
          if (await askForKey(error.problem, rejected || Boolean(currentKey()))) {
            rejected = true;
            continue;
          }
        }
        throw error;
      }
    }
  })();
}

// Artefacts (images, the video) need the key too when the service requires keys: then they are
// fetched with it and shown from memory (blob: URLs); without a key the browser loads them.
const blobUrls = new Map();

async function mediaSrc(url) {
  if (!currentKey()) return url;
  if (blobUrls.has(url)) return blobUrls.get(url);
  const resp = await fetch(url, { headers: authHeaders() });
  if (!resp.ok) throw new ApiError(await readProblem(resp), resp.status);
  const src = URL.createObjectURL(await resp.blob());
  blobUrls.set(url, src);
  return src;
}

/** Set ``img.src`` (or a video's) to the artefact at ``url``; a visible note if it fails. */
function loadMedia(el, url, what) {
  const fail = (message) => {
    const note = h("p", { class: "media-error", role: "note" }, `${what} could not be loaded: ${message}`);
    el.replaceWith(note);
  };
  el.addEventListener("error", () => fail("the service did not send it"), { once: true });
  mediaSrc(url).then(
    (src) => {
      el.src = src;
    },
    (error) => fail(error.message),
  );
}

// ---------------------------------------------------------------------------------------------
// The API key prompt

let pendingKeyPrompt = null;

/** Show the key dialog; resolves true when a key was entered, false when cancelled. */
function askForKey(problem, wasRejected) {
  if (pendingKeyPrompt) return pendingKeyPrompt;
  const dialog = document.getElementById("key-dialog");
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  const reason = document.getElementById("key-reason");
  reason.textContent = wasRejected
    ? `The key was not accepted: ${problem.detail || problem.title}. Enter a valid key.`
    : "This service requires an API key. Ask its operator for one.";
  if (wasRejected) setKey(null);
  input.value = "";
  pendingKeyPrompt = new Promise((resolve) => {
    const finish = (ok) => {
      form.removeEventListener("submit", onSubmit);
      cancel.removeEventListener("click", onCancel);
      dialog.removeEventListener("cancel", onCancel);
      if (dialog.open) dialog.close();
      pendingKeyPrompt = null;
      resolve(ok);
    };
    const onSubmit = (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      setKey(key);
      finish(true);
    };
    const onCancel = (event) => {
      event.preventDefault();
      finish(false);
    };
    const cancel = document.getElementById("key-cancel");
    form.addEventListener("submit", onSubmit);
    cancel.addEventListener("click", onCancel);
    dialog.addEventListener("cancel", onCancel);
  });
  dialog.showModal();
  input.focus();
  return pendingKeyPrompt;
}

function updateKeyStatus() {
  const status = document.getElementById("key-status");
  if (status) status.hidden = !currentKey();
}

// ---------------------------------------------------------------------------------------------
// Shared pieces of the views

function problemBox(problem, { retry } = {}) {
  const p = problem || {};
  return h(
    "div",
    { class: "problem", role: "alert", "data-problem-type": p.type || "" },
    h("h2", { class: "problem-title" }, p.title || "Something went wrong"),
    h("p", { class: "problem-detail" }, p.detail || "No details were given."),
    Array.isArray(p.errors) && p.errors.length
      ? h("ul", {}, p.errors.map((e) => h("li", {}, `${(e.loc || []).join(".")}: ${e.msg}`)))
      : null,
    p.status ? h("p", { class: "problem-meta" }, `HTTP ${p.status}${p.type ? ` · ${p.type}` : ""}`) : null,
    retry ? h("button", { type: "button", onclick: retry }, "Try again") : null,
  );
}

function errorFrom(error) {
  if (error instanceof ApiError) return error.problem;
  return { title: "Something went wrong in this page", detail: String(error?.message || error) };
}

function bandChip(band) {
  return h("span", { class: `band band-${band}` }, BAND_TEXT[band] || band);
}

function scoreChip(score, bands) {
  const band = bandOf(score, bands);
  if (score === null || score === undefined) {
    return h("span", { class: "score-chip no-score" }, "no faces");
  }
  const c = scoreColour(score);
  return h(
    "span",
    {
      class: "score-chip",
      style: { backgroundColor: rgb(c), color: textOn(c) },
      "data-score": String(score),
      title: `DeepFake probability ${pct(score)}: ${BAND_TEXT[band]}`,
    },
    pct(score),
  );
}

function bandsText(bands) {
  return (
    `Below ${pctThreshold(bands.real_below)}: likely real · ` +
    `${pctThreshold(bands.real_below)} to ${pctThreshold(bands.manipulated_from)}: uncertain · ` +
    `${pctThreshold(bands.manipulated_from)} and above: likely manipulated`
  );
}

/** The colour scale with the band thresholds marked. */
function legend(bands) {
  const bar = h("div", { class: "legend-bar", "aria-hidden": "true" });
  for (const [value, label] of [
    [0, "0%"],
    [bands.real_below, pctThreshold(bands.real_below)],
    [bands.manipulated_from, pctThreshold(bands.manipulated_from)],
    [1, "100%"],
  ]) {
    bar.append(
      h("span", { class: "legend-tick", style: { left: `${value * 100}%` } }, h("span", {}, label)),
    );
  }
  return h(
    "figure",
    { class: "legend" },
    h("figcaption", {}, "Colour = DeepFake probability"),
    bar,
    h(
      "div",
      { class: "legend-bands" },
      h("span", { class: "band band-likely-real" }, `Likely real: below ${pctThreshold(bands.real_below)}`),
      h(
        "span",
        { class: "band band-uncertain" },
        `Uncertain: ${pctThreshold(bands.real_below)} to ${pctThreshold(bands.manipulated_from)}`,
      ),
      h(
        "span",
        { class: "band band-likely-manipulated" },
        `Likely manipulated: ${pctThreshold(bands.manipulated_from)} and above`,
      ),
    ),
  );
}

function untrainedWarning(models) {
  const untrained = (models || []).filter((m) => m.weights !== "trained");
  if (!untrained.length) return null;
  const all = untrained.length === models.length;
  return h(
    "div",
    { class: "untrained-warning", role: "alert", id: "untrained-warning" },
    h("strong", {}, "Warning: untrained models. "),
    all
      ? "Every detection model runs with random (untrained) weights, so these scores say nothing about manipulation. "
      : `${untrained.length} of ${models.length} detection models run with random (untrained) weights (${untrained.map((m) => m.name).join(", ")}), so these scores are not reliable. `,
    "The operator has to import trained checkpoints before the results mean anything.",
  );
}

function modelsTable(models, ensemble) {
  if (!models || !models.length) return h("p", {}, "The service did not list its models.");
  return h("div", { class: "table-scroll" }, h(
    "table",
    { class: "data-table models-table" },
    h("caption", {}, ensemble ? `Detection models of the ensemble “${ensemble}”` : "Detection models of the ensemble"),
    h(
      "thead",
      {},
      h("tr", {}, ["Model", "Version", "Weights", "Backend", "Trained on", "Licence", "Source", "Checksum"].map((t) => h("th", { scope: "col" }, t))),
    ),
    h(
      "tbody",
      {},
      models.map((m) =>
        h(
          "tr",
          {},
          h("th", { scope: "row" }, m.name),
          h("td", {}, m.version || "–"),
          h(
            "td",
            {},
            m.weights === "trained"
              ? h("span", { class: "weights weights-trained" }, "Trained")
              : h("span", { class: "weights weights-untrained" }, "Untrained (random)"),
          ),
          h("td", {}, m.backend || "–"),
          h("td", {}, m.trained_on || "–"),
          h("td", {}, m.licence || "–"),
          h("td", {}, m.source || "–"),
          h("td", { class: "mono" }, m.sha256 ? `${m.sha256.slice(0, 12)}…` : "–"),
        ),
      ),
    ),
  ));
}

/** Hover-to-zoom (paper figure 6) on ``img`` inside ``frame``: a lens that magnifies the
 * region under the pointer. Keyboard: focus the frame, move the lens with the arrow keys. */
function zoomable(frame, img, { zoom = 2.5, label = "image" } = {}) {
  frame.classList.add("zoomable");
  frame.tabIndex = 0;
  frame.setAttribute("aria-label", `${label}: hover or use the arrow keys to zoom in`);
  const lens = h("div", { class: "zoom-lens", "aria-hidden": "true", hidden: true });
  frame.append(lens);
  let pos = { x: 0.5, y: 0.5 };

  const show = () => {
    const w = img.clientWidth;
    const ht = img.clientHeight;
    if (!w || !ht || !img.currentSrc) return;
    const size = Math.max(80, Math.min(220, Math.round(Math.min(w, ht) * 0.6)));
    const x = pos.x * w;
    const y = pos.y * ht;
    lens.hidden = false;
    Object.assign(lens.style, {
      width: `${size}px`,
      height: `${size}px`,
      left: `${img.offsetLeft + x - size / 2}px`,
      top: `${img.offsetTop + y - size / 2}px`,
      backgroundImage: `url("${img.currentSrc}")`,
      backgroundSize: `${w * zoom}px ${ht * zoom}px`,
      backgroundPosition: `${size / 2 - x * zoom}px ${size / 2 - y * zoom}px`,
    });
  };
  const hide = () => {
    lens.hidden = true;
  };
  frame.addEventListener("mousemove", (event) => {
    const r = img.getBoundingClientRect();
    if (!r.width || !r.height) return;
    pos = { x: (event.clientX - r.left) / r.width, y: (event.clientY - r.top) / r.height };
    if (pos.x < 0 || pos.x > 1 || pos.y < 0 || pos.y > 1) hide();
    else show();
  });
  frame.addEventListener("mouseleave", hide);
  frame.addEventListener("focus", () => {
    if (frame.matches(":focus-visible")) show();
  });
  frame.addEventListener("blur", hide);
  frame.addEventListener("keydown", (event) => {
    const step = 0.05;
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    if (event.key === "Escape") {
      hide();
      return;
    }
    const move = moves[event.key];
    if (!move) return;
    event.preventDefault();
    pos = {
      x: Math.min(1, Math.max(0, pos.x + move[0])),
      y: Math.min(1, Math.max(0, pos.y + move[1])),
    };
    show();
  });
}

// ---------------------------------------------------------------------------------------------
// Views

const main = () => document.getElementById("main");

/** Replace the page content with a fresh view; focus its heading (screen readers announce it). */
function startView(title, { focus = true } = {}) {
  const root = main();
  replace(root);
  const heading = h("h1", { tabindex: "-1", id: "view-title" }, title);
  root.append(heading);
  document.title = `${title} · DeepFake detection`;
  if (focus) heading.focus({ preventScroll: false });
  return root;
}

function setTitle(title) {
  const heading = document.getElementById("view-title");
  if (heading) heading.textContent = title;
  document.title = `${title} · DeepFake detection`;
}

// -- Submit -----------------------------------------------------------------------------------

function submitView(signal) {
  const root = startView("Analyse an image or video");
  root.dataset.view = "submit";
  const status = h("p", { class: "submit-status", id: "submit-status", role: "status", "aria-live": "polite" });
  const errors = h("div", { id: "submit-error" });
  const force = h("input", { type: "checkbox", id: "force" });

  const busy = (on) => {
    for (const el of root.querySelectorAll("button, input")) el.disabled = on;
  };
  const fail = (error) => {
    busy(false);
    status.textContent = "";
    replace(errors, problemBox(errorFrom(error)));
    errors.querySelector(".problem")?.focus?.();
  };
  const created = (job) => {
    location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
  };

  const url = h("input", {
    type: "url",
    id: "url",
    name: "url",
    inputmode: "url",
    autocomplete: "url",
    placeholder: "https://…",
    "aria-describedby": "url-hint",
  });
  const urlForm = h(
    "form",
    { id: "url-form", class: "card", novalidate: true },
    h("h2", {}, "From a link"),
    h("label", { for: "url" }, "Link to an image or video"),
    h("p", { class: "hint", id: "url-hint" }, "A direct link, or a page on YouTube, X (Twitter), Facebook, Dropbox or Google Drive."),
    h("div", { class: "input-row" }, url, h("button", { type: "submit", class: "primary", id: "submit-url" }, "Analyse link")),
  );
  urlForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    replace(errors);
    busy(true);
    status.textContent = "Sending the link…";
    try {
      created(await api(`v1/jobs${force.checked ? "?force=true" : ""}`, { method: "POST", json: { url: url.value } }));
    } catch (error) {
      fail(error);
    }
  });

  const fileInput = h("input", { type: "file", id: "file", name: "file", accept: "image/*,video/*", class: "visually-hidden" });
  const dropZone = h(
    "label",
    { for: "file", class: "drop-zone", id: "drop-zone" },
    h("span", { class: "drop-title" }, "Drop an image or video here"),
    h("span", { class: "drop-or" }, "or"),
    h("span", { class: "button-like" }, "Choose a file"),
    h("span", { class: "hint" }, "JPEG, PNG, WebP, BMP or GIF images; MP4, MOV, WebM, MKV or AVI videos."),
  );
  const upload = async (file) => {
    if (!file) return;
    replace(errors);
    busy(true);
    status.textContent = `Uploading ${file.name}…`;
    try {
      const job = await uploadFile(`v1/jobs${force.checked ? "?force=true" : ""}`, file, (f) => {
        status.textContent = `Uploading ${file.name}: ${Math.round(f * 100)}%`;
      });
      created(job);
    } catch (error) {
      fail(error);
    } finally {
      fileInput.value = "";
    }
  };
  fileInput.addEventListener("change", () => upload(fileInput.files[0]));
  for (const name of ["dragenter", "dragover"]) {
    dropZone.addEventListener(name, (event) => {
      event.preventDefault();
      dropZone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    dropZone.addEventListener(name, () => dropZone.classList.remove("dragging"));
  }
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    upload(event.dataTransfer?.files?.[0]);
  });

  const fileCard = h("div", { class: "card" }, h("h2", {}, "From a file"), fileInput, dropZone);
  root.append(
    h(
      "p",
      { class: "lead" },
      "Send a link or a file. The service finds every face, follows it through each shot of a video, " +
        "and estimates the probability that it was manipulated (a DeepFake).",
    ),
    h("div", { class: "submit-grid" }, urlForm, fileCard),
    h("p", { class: "check-row" }, force, h("label", { for: "force" }, "Analyse again even if this service already has a result for it")),
    status,
    errors,
  );
  recentJobs(root, signal);
}

async function recentJobs(root, signal) {
  const section = h("section", { class: "recent", "aria-labelledby": "recent-title" }, h("h2", { id: "recent-title" }, "Recent analyses"));
  root.append(section);
  try {
    const jobs = await api("v1/jobs?limit=10", { signal });
    if (signal.aborted) return;
    if (!jobs.length) {
      section.append(h("p", { class: "hint" }, "None yet."));
      return;
    }
    section.append(
      h(
        "ul",
        { class: "recent-list" },
        jobs.map((job) =>
          h(
            "li",
            {},
            h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.filename || job.source_url || job.id),
            " ",
            h("span", { class: `status status-${job.status}` }, job.status),
            " ",
            h("time", { datetime: job.created_at }, new Date(job.created_at).toLocaleString()),
          ),
        ),
      ),
    );
  } catch (error) {
    if (signal.aborted || error.name === "AbortError") return;
    section.append(problemBox(errorFrom(error), { retry: () => route() }));
  }
}

// -- Job: progress, then the result -----------------------------------------------------------

async function jobView(id, signal) {
  const root = startView("Analysis");
  root.dataset.view = "job";
  const body = h("div", { id: "job-body" });
  root.append(body);
  const progress = progressPanel(id, signal);
  body.append(progress.el);

  let delay = 400;
  let failures = 0;
  while (!signal.aborted) {
    let job;
    try {
      job = await api(`v1/jobs/${encodeURIComponent(id)}`, { signal });
      failures = 0;
    } catch (error) {
      if (signal.aborted || error.name === "AbortError") return;
      // A lost connection may come back: retry a few times before giving up.
      if (error instanceof ApiError && error.status === 0 && ++failures < 5) {
        progress.note(`Lost contact with the service, retrying… (${failures})`);
        await sleep(1000 * failures, signal);
        continue;
      }
      replace(body, problemBox(errorFrom(error), { retry: () => route() }));
      return;
    }
    progress.update(job);
    if (job.status === "done") {
      try {
        const result = await api(`v1/jobs/${encodeURIComponent(id)}/result`, { signal });
        if (signal.aborted) return;
        renderResult(body, id, job, result);
      } catch (error) {
        if (signal.aborted || error.name === "AbortError") return;
        replace(body, problemBox(errorFrom(error), { retry: () => route() }));
      }
      return;
    }
    if (job.status === "failed") {
      setTitle("Analysis failed");
      replace(body,
        problemBox(job.error || { title: "The analysis failed", detail: "The service gave no reason." }),
        h("p", {}, h("a", { href: "#/" }, "Analyse something else")),
      );
      return;
    }
    if (job.status === "cancelled") {
      setTitle("Analysis cancelled");
      replace(body,
        h("div", { class: "notice", role: "status" }, "This analysis was cancelled before it finished."),
        h("p", {}, h("a", { href: "#/" }, "Analyse something else")),
      );
      return;
    }
    await sleep(delay, signal);
    delay = Math.min(2000, delay * 1.5);
  }
}

function progressPanel(id, signal) {
  const source = h("p", { class: "job-source" });
  const steps = h("ol", { class: "stages", id: "stages" });
  const items = new Map();
  for (const [stage, label, help] of STAGES) {
    const count = h("span", { class: "stage-count" });
    const li = h(
      "li",
      { class: "stage pending", "data-stage": stage },
      h("span", { class: "stage-mark", "aria-hidden": "true" }),
      h("span", { class: "stage-text" }, h("span", { class: "stage-label" }, label), h("span", { class: "stage-help" }, help)),
      count,
    );
    items.set(stage, { li, count, label });
    steps.append(li);
  }
  const bar = h("progress", { id: "stage-progress", max: "1", value: "0", "aria-label": "Progress of the current stage" });
  const live = h("p", { class: "job-status", role: "status", "aria-live": "polite", id: "job-status" });
  const note = h("p", { class: "hint", id: "job-note" });
  const cancel = h(
    "button",
    {
      type: "button",
      id: "cancel-job",
      onclick: async () => {
        cancel.disabled = true;
        try {
          await api(`v1/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST", signal });
        } catch (error) {
          if (error.name !== "AbortError") replace(note, problemBox(errorFrom(error)));
          cancel.disabled = false;
        }
      },
    },
    "Cancel analysis",
  );
  const el = h("section", { class: "card progress-card", "aria-labelledby": "progress-title" }, h("h2", { id: "progress-title" }, "Progress"), source, steps, bar, live, note, cancel);
  let lastAnnounced = "";

  return {
    el,
    note(text) {
      note.textContent = text;
    },
    update(job) {
      note.textContent = "";
      source.textContent = job.filename ? `File: ${job.filename}` : job.source_url ? `Link: ${job.source_url}` : "";
      if (job.filename) {
        const dl = items.get("downloading");
        dl.li.querySelector(".stage-label").textContent = "Upload received";
        dl.li.querySelector(".stage-help").textContent = "the file is on the service";
      }
      const stage = job.status === "queued" ? "queued" : job.status === "done" ? "done" : job.progress?.stage || "queued";
      const index = STAGES.findIndex(([s]) => s === stage);
      STAGES.forEach(([s], i) => {
        const item = items.get(s);
        const state = index < 0 ? "pending" : i < index ? "complete" : i === index ? "current" : "pending";
        item.li.className = `stage ${state}`;
        if (state === "current") item.li.setAttribute("aria-current", "step");
        else item.li.removeAttribute("aria-current");
        item.count.textContent = "";
      });
      const current = items.get(stage);
      const total = job.progress?.total || 0;
      const done = job.progress?.done || 0;
      if (current && total > 0 && stage !== "done") current.count.textContent = `${done} of ${total}`;
      if (total > 0) {
        bar.max = total;
        bar.value = Math.min(done, total);
      } else if (stage === "done") {
        bar.max = 1;
        bar.value = 1;
      } else {
        bar.removeAttribute("value");
      }
      const label = current ? current.label : stage;
      const text = job.status === "running" || job.status === "queued" ? `${label}…` : label;
      if (text !== lastAnnounced) {
        live.textContent = text;
        lastAnnounced = text;
      }
      cancel.hidden = !(job.status === "queued" || job.status === "running");
    },
  };
}

// -- Results ----------------------------------------------------------------------------------

function renderResult(body, id, job, result) {
  const isVideo = result.source.media_type === "video";
  setTitle(isVideo ? "Video analysis" : "Image analysis");
  main().dataset.view = isVideo ? "video" : "image";
  const mediaUrl = `v1/jobs/${encodeURIComponent(id)}/artefacts/source.${encodeURIComponent(result.source.format)}`;

  const content = h("div", { class: "result", id: "result", "data-media-type": result.source.media_type });
  content.append(sourceSummary(result, job));
  const warning = untrainedWarning(result.models);
  if (warning) content.append(warning);
  const otherWarnings = (result.warnings || []).filter((w) => !/untrained|random/i.test(w));
  if (otherWarnings.length) {
    content.append(h("div", { class: "notice", role: "note" }, h("strong", {}, "Notes from the analysis"), h("ul", {}, otherWarnings.map((w) => h("li", {}, w)))));
  }
  if (isVideo) renderVideo(content, result, mediaUrl);
  else renderImage(content, result, mediaUrl);
  content.append(overall(result), resultActions(id, result));
  replace(body, content);
}

function sourceSummary(result, job) {
  const s = result.source;
  const name = s.url || s.path || job.filename || "uploaded file";
  const facts = [
    `${s.media_type === "video" ? "Video" : "Image"} · ${s.format.toUpperCase()} · ${s.width}×${s.height}`,
    s.duration_s ? `${fmtTime(s.duration_s)} long` : null,
    fmtBytes(s.size_bytes),
    `analysed ${new Date(result.created_at).toLocaleString()}`,
    `service ${result.service_version}`,
    job.cached ? "stored result (analysed before)" : null,
  ].filter(Boolean);
  return h(
    "div",
    { class: "source-summary" },
    h(
      "p",
      { class: "source-name" },
      s.url && /^https?:\/\//i.test(s.url) ? h("a", { href: s.url, rel: "noopener noreferrer", target: "_blank" }, name) : name,
    ),
    h("p", { class: "hint" }, facts.join(" · ")),
  );
}

function overall(result) {
  const isVideo = result.source.media_type === "video";
  const bands = result.bands;
  const section = h("section", { class: "card overall", id: "overall", "aria-labelledby": "overall-title" });
  section.append(h("h2", { id: "overall-title" }, "Overall"));
  if (result.score === null || result.score === undefined) {
    section.append(
      h("p", { class: "overall-score" }, h("span", { class: "score-value", id: "overall-score" }, "No score"), " ", bandChip("no-faces")),
      h("p", {}, `No faces were found in this ${isVideo ? "video" : "image"}, so there is nothing to score. The service only checks faces.`),
    );
    return section;
  }
  const c = scoreColour(result.score);
  const top = isVideo ? topShot(result) : null;
  section.append(
    h(
      "p",
      { class: "overall-score" },
      h("span", { class: "score-value", id: "overall-score", "data-score": String(result.score), style: { borderColor: rgb(c) } }, pct(result.score)),
      " DeepFake probability · ",
      bandChip(result.label),
    ),
    h(
      "p",
      { id: "overall-explanation" },
      isVideo
        ? `The overall score is the maximum over shots: a video is as suspicious as its most suspicious shot` +
            (top ? `, here shot ${top.index + 1} (${fmtTime(top.start_s)}–${fmtTime(top.end_s)}).` : ".") +
            " A shot's score is the highest of its face tracks; a track's score is the mean over its faces."
        : "The overall score is the maximum over the faces in the image: an image is as suspicious as its most suspicious face.",
    ),
    h("p", { class: "bands-text" }, `How to read it: ${bandsText(bands)}.`),
  );
  return section;
}

function resultActions(id, result) {
  const copied = h("span", { role: "status", class: "hint" });
  return h(
    "div",
    { class: "result-actions" },
    h(
      "button",
      {
        type: "button",
        onclick: async () => {
          const url = `${location.origin}${location.pathname}#/jobs/${encodeURIComponent(id)}`;
          try {
            await navigator.clipboard.writeText(url);
            copied.textContent = "Link copied.";
          } catch {
            copied.textContent = `Share this link: ${url}`;
          }
        },
      },
      "Copy link to this result",
    ),
    h(
      "button",
      {
        type: "button",
        onclick: () => {
          const blob = new Blob([JSON.stringify(result, null, 2)], { type: "application/json" });
          const a = h("a", { href: URL.createObjectURL(blob), download: `dfd-${id}.json` });
          document.body.append(a);
          a.click();
          a.remove();
          setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
        },
      },
      "Download the result (JSON)",
    ),
    h("a", { href: "#/", class: "button-like" }, "Analyse something else"),
    copied,
  );
}

// -- Image analysis (paper figure 3) -----------------------------------------------------------

function allFaces(result) {
  const faces = [];
  for (const shot of result.shots) {
    for (const cluster of shot.clusters) {
      for (const face of cluster.faces) faces.push(face);
    }
  }
  return faces;
}

function renderImage(content, result, mediaUrl) {
  const bands = result.bands;
  const faces = allFaces(result);
  const { width, height } = result.source;
  const img = h("img", { id: "analysed-image", alt: `The analysed image with ${faces.length} detected face${faces.length === 1 ? "" : "s"} boxed`, width, height });
  const frame = h("div", { class: "media-frame image-frame" }, img);
  faces.forEach((face, i) => {
    const [x1, y1, x2, y2] = face.box;
    const c = scoreColour(face.score);
    const band = bandOf(face.score, bands);
    const box = h(
      "div",
      {
        class: `face-box${y1 / height < 0.08 ? " label-inside" : ""}`,
        "data-face": String(i),
        "data-score": String(face.score),
        tabindex: "0",
        role: "img",
        "aria-label": `Face ${i + 1}: DeepFake probability ${pct(face.score)}, ${BAND_TEXT[band]}`,
        title: `Face ${i + 1}: ${pct(face.score)} (${BAND_TEXT[band]})`,
        style: {
          left: `${(100 * Math.max(0, x1)) / width}%`,
          top: `${(100 * Math.max(0, y1)) / height}%`,
          width: `${(100 * (Math.min(width, x2) - Math.max(0, x1))) / width}%`,
          height: `${(100 * (Math.min(height, y2) - Math.max(0, y1))) / height}%`,
          borderColor: rgb(c),
        },
      },
      h(
        "span",
        { class: "face-label", style: { backgroundColor: rgb(c), color: textOn(c) } },
        h("span", { class: "face-num" }, `${i + 1}`),
        h("span", { class: "face-score" }, pct(face.score)),
      ),
    );
    frame.append(box);
  });
  loadMedia(img, mediaUrl, "The image");
  zoomable(frame, img, { label: "The analysed image" });

  content.append(
    h(
      "section",
      { class: "card image-analysis", "aria-labelledby": "faces-title" },
      h("h2", { id: "faces-title" }, faces.length ? `${faces.length} face${faces.length === 1 ? "" : "s"} found` : "No faces found"),
      h(
        "p",
        { class: "hint" },
        faces.length
          ? "Each box shows the face's DeepFake probability. Hover over the image to zoom in."
          : "No face was detected, so nothing is boxed. Hover over the image to zoom in.",
      ),
      frame,
      legend(bands),
      faces.length ? facesTable(faces, bands) : null,
    ),
  );
}

function facesTable(faces, bands) {
  const members = Object.keys(faces[0].member_scores || {});
  return h(
    "details",
    { class: "faces-details" },
    h("summary", {}, "Scores per face and per model"),
    h(
      "table",
      { class: "data-table faces-table" },
      h(
        "thead",
        {},
        h("tr", {}, ["Face", "Probability", "Reading", "Detector confidence", ...members].map((t) => h("th", { scope: "col" }, t))),
      ),
      h(
        "tbody",
        {},
        faces.map((f, i) =>
          h(
            "tr",
            {},
            h("th", { scope: "row" }, `${i + 1}`),
            h("td", {}, scoreChip(f.score, bands)),
            h("td", {}, BAND_TEXT[bandOf(f.score, bands)]),
            h("td", {}, `${(f.detection_confidence * 100).toFixed(1)}%`),
            members.map((m) => h("td", {}, pct(f.member_scores[m]))),
          ),
        ),
      ),
    ),
  );
}

// -- Video analysis (paper figures 4 to 6) -----------------------------------------------------

function topShot(result) {
  if (result.top_shot !== null && result.top_shot !== undefined) {
    const byIndex = result.shots.find((s) => s.index === result.top_shot);
    if (byIndex) return byIndex;
  }
  let best = null;
  for (const shot of result.shots) {
    if (shot.score !== null && (best === null || shot.score > best.score)) best = shot;
  }
  return best;
}

function renderVideo(content, result, mediaUrl) {
  const bands = result.bands;
  const shots = result.shots;
  const duration = result.source.duration_s || Math.max(0, ...shots.map((s) => s.end_s)) || 1;

  const video = h("video", { id: "player", controls: true, preload: "metadata", playsinline: true });
  loadMedia(video, mediaUrl, "The video");
  const playerCard = h("section", { class: "card player-card", "aria-label": "Video player" }, video);

  const select = h("select", { id: "shot-select" });
  shots.forEach((shot, i) => {
    select.append(
      h(
        "option",
        { value: String(i) },
        `Shot ${shot.index + 1} · ${fmtTime(shot.start_s)}–${fmtTime(shot.end_s)} · ${shot.score === null ? "no faces" : pct(shot.score)}`,
      ),
    );
  });
  const interval = h("p", { class: "shot-interval", id: "shot-interval", "aria-live": "polite" });
  const timeline = h("div", { class: "timeline", id: "timeline", role: "group", "aria-label": "Shots of the video, coloured by DeepFake probability" });
  const playhead = h("div", { class: "playhead", "aria-hidden": "true" });
  const segments = shots.map((shot, i) => {
    const left = (100 * shot.start_s) / duration;
    const width = Math.max(0.8, (100 * (shot.end_s - shot.start_s)) / duration);
    const c = shot.score === null ? null : scoreColour(shot.score);
    const seg = h(
      "button",
      {
        type: "button",
        class: `shot-seg${c ? "" : " no-faces"}`,
        "data-shot": String(i),
        "aria-pressed": "false",
        "aria-label": `Shot ${shot.index + 1}, ${fmtTime(shot.start_s)} to ${fmtTime(shot.end_s)}: ${shot.score === null ? "no faces" : `DeepFake probability ${pct(shot.score)}`}`,
        title: `Shot ${shot.index + 1} · ${fmtTime(shot.start_s)}–${fmtTime(shot.end_s)} · ${shot.score === null ? "no faces" : pct(shot.score)}`,
        style: { left: `${left}%`, width: `${width}%`, ...(c ? { backgroundColor: rgb(c), color: textOn(c) } : {}) },
        onclick: () => select_(i, true),
      },
      h("span", {}, `${shot.index + 1}`),
    );
    timeline.append(seg);
    return seg;
  });
  timeline.append(playhead);
  const detail = h("section", { class: "card shot-detail", id: "shot-detail" });

  const shotsCard = h(
    "section",
    { class: "card shots-card", "aria-labelledby": "shots-title" },
    h("h2", { id: "shots-title" }, `${shots.length} shot${shots.length === 1 ? "" : "s"}`),
    h("p", { class: "hint" }, "Pick a shot to see its faces; the shot with the highest score is selected first. Picking a shot moves the player to it."),
    h("div", { class: "shot-picker" }, h("label", { for: "shot-select" }, "Shot"), select, interval),
    timeline,
    legend(bands),
  );

  function select_(i, seek) {
    const shot = shots[i];
    select.value = String(i);
    segments.forEach((seg, k) => {
      seg.setAttribute("aria-pressed", String(k === i));
      seg.classList.toggle("selected", k === i);
    });
    interval.textContent = `Shot interval: ${fmtTime(shot.start_s)} – ${fmtTime(shot.end_s)} (${(shot.end_s - shot.start_s).toFixed(1)} s)`;
    detail.dataset.shot = String(i);
    replace(detail, ...shotDetail(shot, shots.length, bands, video));
    if (seek) seekTo(video, shot.start_s);
  }
  select.addEventListener("change", () => select_(Number(select.value), true));
  video.addEventListener("timeupdate", () => {
    const d = video.duration || duration;
    playhead.style.left = `${(100 * video.currentTime) / d}%`;
  });

  content.append(playerCard, shotsCard, detail);
  const top = topShot(result);
  select_(top ? shots.indexOf(top) : 0, false);
}

function seekTo(video, seconds) {
  const go = () => {
    video.currentTime = seconds;
  };
  if (video.readyState >= 1) go();
  else video.addEventListener("loadedmetadata", go, { once: true });
}

function shotDetail(shot, count, bands, video) {
  const parts = [];
  parts.push(
    h(
      "h2",
      { id: "shot-title" },
      `Shot ${shot.index + 1} of ${count}: `,
      shot.score === null ? "no faces" : pct(shot.score),
      " ",
      bandChip(shot.label || bandOf(shot.score, bands)),
    ),
  );
  const dropped = shot.dropped_clusters
    ? ` ${shot.dropped_clusters} more face track${shot.dropped_clusters === 1 ? " was" : "s were"} left out for appearing in fewer than 20% of the sampled frames.`
    : "";
  parts.push(
    h(
      "p",
      { class: "hint" },
      `${shot.faces_detected} face${shot.faces_detected === 1 ? "" : "s"} detected in ${shot.sampled_frames} sampled frame${shot.sampled_frames === 1 ? "" : "s"}, ` +
        `grouped into ${shot.clusters.length} face track${shot.clusters.length === 1 ? "" : "s"}.` +
        (shot.clusters.length ? " The shot's score is the highest of its tracks' scores." : "") +
        dropped,
    ),
  );
  if (!shot.clusters.length) {
    parts.push(h("p", { class: "notice" }, "No face track in this shot, so it has no score."));
    return parts;
  }
  parts.push(h("div", { class: "tracks" }, shot.clusters.map((cluster, k) => trackWindow(shot, cluster, k, bands, video))));
  return parts;
}

/** A window per face track (paper 5.2): its probability and the "Shot" / "Keyframe" views. */
function trackWindow(shot, cluster, k, bands, video) {
  const c = scoreColour(cluster.score);
  const base = `track-${shot.index}-${cluster.id}`;
  const views = [
    ["shot", "Shot", cluster.collage, `Collage of the ${cluster.faces.length} faces of track ${k + 1} in this shot`],
    ["keyframe", "Keyframe", cluster.keyframe, `Keyframe of track ${k + 1}${cluster.keyframe_time_s !== null && cluster.keyframe_time_s !== undefined ? ` at ${fmtTime(cluster.keyframe_time_s)}` : ""}`],
  ];
  const tabs = h("div", { class: "tabs", role: "tablist", "aria-label": `Views of face track ${k + 1}` });
  const panel = h("div", { class: "track-view", role: "tabpanel", id: `${base}-panel` });
  const buttons = views.map(([name, label], v) =>
    h(
      "button",
      {
        type: "button",
        role: "tab",
        id: `${base}-tab-${name}`,
        "data-view": name,
        "aria-controls": `${base}-panel`,
        "aria-selected": "false",
        tabindex: "-1",
        onclick: () => show(v, false),
        onkeydown: (event) => {
          if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
            event.preventDefault();
            show((v + 1) % views.length, true);
          }
        },
      },
      label,
    ),
  );
  tabs.append(...buttons);

  function show(v, focus) {
    const [name, , url, alt] = views[v];
    buttons.forEach((b, i) => {
      b.setAttribute("aria-selected", String(i === v));
      b.tabIndex = i === v ? 0 : -1;
    });
    if (focus) buttons[v].focus();
    panel.setAttribute("aria-labelledby", buttons[v].id);
    panel.dataset.view = name;
    if (!url) {
      replace(panel, h("p", { class: "media-error" }, `No ${name === "shot" ? "collage" : "keyframe"} was stored for this track.`));
      return;
    }
    const img = h("img", { alt, class: `track-image track-${name}` });
    const frame = h("div", { class: "media-frame" }, img);
    replace(panel, frame);
    loadMedia(img, url, alt);
    zoomable(frame, img, { label: alt });
  }

  const keyTime = cluster.keyframe_time_s;
  const article = h(
    "article",
    { class: "track", "data-track": String(cluster.id), "data-score": String(cluster.score), style: { borderTopColor: rgb(c) } },
    h(
      "header",
      { class: "track-header" },
      h("h3", {}, `Face track ${k + 1}`),
      scoreChip(cluster.score, bands),
      bandChip(bandOf(cluster.score, bands)),
    ),
    h("p", { class: "hint" }, `${cluster.faces.length} face${cluster.faces.length === 1 ? "" : "s"}; the track's score is their mean.`),
    tabs,
    panel,
    keyTime !== null && keyTime !== undefined
      ? h("button", { type: "button", class: "link-button", onclick: () => seekTo(video, keyTime) }, `Play from the keyframe (${fmtTime(keyTime)})`)
      : null,
  );
  show(0, false);
  return article;
}

// -- Model card and about ---------------------------------------------------------------------

async function modelCardView(signal) {
  const root = startView("Model card");
  root.dataset.view = "model-card";
  const body = h("div", { id: "model-card", class: "loading" }, "Loading…");
  root.append(body);
  try {
    const card = await api("v1/model-card", { signal });
    if (signal.aborted) return;
    const known = new Set(["status", "detail", "service_version", "models", "warnings"]);
    const extra = Object.entries(card).filter(([k]) => !known.has(k));
    body.className = "";
    replace(body,
      card.status === "placeholder"
        ? h("div", { class: "notice", role: "note", id: "model-card-placeholder" }, h("strong", {}, "Placeholder. "), card.detail || "The model card has not been published yet.")
        : card.detail
          ? h("p", {}, card.detail)
          : null,
      untrainedWarning(card.models),
      card.service_version ? h("p", {}, `Service version ${card.service_version}.`) : null,
      modelsTable(card.models),
      warningsList(card.warnings),
      extra.length ? h("dl", { class: "facts" }, extra.map(([k, v]) => [h("dt", {}, k), h("dd", {}, typeof v === "object" ? JSON.stringify(v) : String(v))])) : null,
      rawJson(card),
    );
  } catch (error) {
    if (signal.aborted || error.name === "AbortError") return;
    body.className = "";
    replace(body, problemBox(errorFrom(error), { retry: () => route() }));
  }
}

function warningsList(warnings) {
  if (!warnings || !warnings.length) return null;
  return h("div", { class: "notice", role: "note" }, h("strong", {}, "Warnings from the service"), h("ul", {}, warnings.map((w) => h("li", {}, w))));
}

function rawJson(value) {
  return h("details", { class: "raw" }, h("summary", {}, "As JSON"), h("pre", {}, JSON.stringify(value, null, 2)));
}

async function aboutView(signal) {
  const root = startView("About this service");
  root.dataset.view = "about";
  const facts = h("div", { id: "about-facts", class: "loading" }, "Loading…");
  root.append(
    h(
      "section",
      { class: "card prose" },
      h("h2", {}, "What it does"),
      h(
        "p",
        {},
        "The service estimates, for every face in an image or a video, the probability that it was manipulated " +
          "(face swap, face reenactment and similar DeepFakes). It follows the method of the MeVer DeepFake " +
          "detection service (Baxevanakis et al., 2022):",
      ),
      h(
        "ol",
        {},
        h("li", {}, "A video is cut into shots where the picture changes abruptly."),
        h("li", {}, "Faces are detected in up to 64 frames of each shot."),
        h("li", {}, "Faces of the same person in a shot are grouped into a face track; tracks seen in fewer than 20% of the frames are left out."),
        h("li", {}, "The ensemble's detection models (five, as in the paper) score every face; their probabilities are averaged."),
        h("li", {}, "A track's score is the mean over its faces, a shot's score the highest of its tracks, the video's score the highest of its shots. For an image, the score is the highest over its faces."),
      ),
      h("h2", {}, "Reading the scores"),
      h(
        "p",
        {},
        "Scores are probabilities from 0% to 100%, shown with a plain-language reading (likely real, uncertain, likely manipulated). " +
          "Every result states the thresholds it used. Colours go from blue (low) through yellow to vermillion (high); " +
          "the numbers are always shown as text too.",
      ),
      h("h2", {}, "Limits"),
      h(
        "ul",
        {},
        h("li", {}, "Only faces are checked: a manipulated background, voice or a fully generated image without a face goes unnoticed."),
        h("li", {}, "Models can be fooled on purpose (adversarial attacks) and make mistakes on heavy compression, small faces or unusual lighting."),
        h("li", {}, "A score is evidence to weigh with the source and context, never a verdict on its own."),
      ),
    ),
    h("section", { class: "card", "aria-labelledby": "deployment-title" }, h("h2", { id: "deployment-title" }, "This deployment"), facts),
  );
  try {
    const version = await api("v1/version", { signal });
    if (signal.aborted) return;
    facts.className = "";
    replace(facts,
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "Service version"),
        h("dd", { id: "service-version" }, version.service_version),
        h("dt", {}, "Result schema"),
        h("dd", {}, version.schema_version),
        h("dt", {}, "API"),
        h("dd", {}, version.api_version, " · ", h("a", { href: "docs" }, "documentation")),
      ),
      h(
        "p",
        { class: "hint" },
        "Versions follow x.y.z: x changes when the output changes, y when the processing pipeline or models change, z for minor fixes.",
      ),
      untrainedWarning(version.models),
      version.models ? modelsTable(version.models, version.ensemble) : h("p", {}, "The models are still loading; reload in a moment to see them."),
    );
  } catch (error) {
    if (signal.aborted || error.name === "AbortError") return;
    facts.className = "";
    replace(facts, problemBox(errorFrom(error), { retry: () => route() }));
  }
}

function notFoundView() {
  const root = startView("Page not found");
  root.dataset.view = "not-found";
  root.append(h("p", {}, "There is no page at this address. ", h("a", { href: "#/" }, "Analyse an image or video.")));
}

// ---------------------------------------------------------------------------------------------
// Routing

let viewController = null;

function route() {
  const hash = location.hash || "#/";
  if (!hash.startsWith("#/")) return;
  viewController?.abort();
  viewController = new AbortController();
  const { signal } = viewController;
  const parts = hash.slice(2).split("/").filter(Boolean);
  for (const link of document.querySelectorAll("[data-nav]")) {
    const active = (parts[0] || "submit") === link.dataset.nav;
    if (active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const run = async () => {
    if (parts.length === 0) submitView(signal);
    else if (parts[0] === "jobs" && parts.length === 2) await jobView(decodeURIComponent(parts[1]), signal);
    else if (parts[0] === "model-card" && parts.length === 1) await modelCardView(signal);
    else if (parts[0] === "about" && parts.length === 1) await aboutView(signal);
    else notFoundView();
  };
  run().catch((error) => {
    if (signal.aborted || error?.name === "AbortError") return;
    // Never a blank page: whatever broke is shown.
    main().append(problemBox(errorFrom(error), { retry: () => route() }));
  });
}

function boot() {
  document.getElementById("skip-link").addEventListener("click", (event) => {
    event.preventDefault();
    main().focus();
  });
  document.getElementById("forget-key").addEventListener("click", () => {
    setKey(null);
    for (const src of blobUrls.values()) URL.revokeObjectURL(src);
    blobUrls.clear();
    route();
  });
  updateKeyStatus();
  window.addEventListener("hashchange", route);
  route();
}

window.addEventListener("error", (event) => {
  const root = main();
  if (root && !root.querySelector(".problem")) {
    root.append(problemBox({ title: "This page hit an error", detail: String(event.message) }));
  }
});

boot();
