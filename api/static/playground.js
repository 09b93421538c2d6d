// The playground: submit a job with celery: true, then long-poll its task until it ends.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "easel.apiKey";
const POLL_WAIT_S = 1; // short long-polls, so queue position and progress stay fresh
const form = $("job-form");
let upload = null; // the picked or dropped File, sent as multipart
let apps = [];
let run = 0; // bumped by every submit, so an older poll loop stops

function authHeaders() {
  return { Authorization: `Bearer ${$("api-key").value.trim()}` };
}

async function readEnvelope(response) {
  try {
    return await response.json();
  } catch {
    return { status: "FAILED", error: `HTTP ${response.status}: the answer was not JSON` };
  }
}

function showStatus(text) {
  $("status").textContent = text;
}

function showError(envelope) {
  const box = $("error");
  box.replaceChildren();
  const message = typeof envelope === "string" ? envelope : envelope.error || "failed";
  box.append(Object.assign(document.createElement("p"), { textContent: message }));
  const details = envelope && envelope.error_data && envelope.error_data.errors;
  if (Array.isArray(details)) {
    const list = document.createElement("ul");
    for (const e of details) {
      list.append(Object.assign(document.createElement("li"), {
        textContent: `${e.field}: ${e.message}`,
      }));
    }
    box.append(list);
  }
  box.hidden = false;
}

function setProgress(percent) {
  $("progress").hidden = percent === null;
  $("progress-bar").style.width = `${percent || 0}%`;
}

// --- models --------------------------------------------------------------------

async function loadApps() {
  const select = $("app_id");
  try {
    const response = await fetch(form.dataset.appsUrl);
    apps = (await response.json()).output || [];
  } catch (err) {
    showError(`could not list the models: ${err}`);
    return;
  }
  select.replaceChildren(...apps.map((app) => new Option(`${app.app_id} (${app.family})`, app.app_id)));
  allowInferenceTypes();
}

function allowInferenceTypes() {
  const app = apps.find((a) => a.app_id === $("app_id").value);
  const select = $("inference_type");
  for (const option of select.options) {
    option.disabled = Boolean(app) && !app.inference_types.includes(option.value);
  }
  if (select.selectedOptions[0] && select.selectedOptions[0].disabled) {
    const allowed = [...select.options].find((o) => !o.disabled);
    if (allowed) select.value = allowed.value;
  }
}

// --- the image -------------------------------------------------------------------

function setUpload(file) {
  upload = file || null;
  const preview = $("image-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.hidden = !upload;
  $("clear-file").hidden = !upload;
  if (upload) preview.src = URL.createObjectURL(upload);
  else {
    preview.removeAttribute("src");
    $("image-file").value = "";
  }
}

function wireDropZone() {
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) {
      $("image-file").value = ""; // the picker's earlier choice is not what will be sent
      setUpload(file);
      return;
    }
    // An image dragged from another page arrives as a link, not a file: send that URL
    // (a file would win over it, so drop the file). Anything else changes nothing.
    const link = (event.dataTransfer.getData("text/uri-list") || "")
      .split(/\r?\n/)
      .map((line) => line.trim())
      .find((line) => line && !line.startsWith("#")); // RFC 2483: "#" lines are comments
    if (link) {
      setUpload(null);
      $("image-url").value = link;
    }
  });
  $("image-file").addEventListener("change", (event) => setUpload(event.target.files[0]));
  $("clear-file").addEventListener("click", () => setUpload(null));
}

// --- submitting --------------------------------------------------------------------

const NUMBERS = ["strength", "guidance_scale", "batch", "width", "height", "seed", "output_quality"];
const TEXTS = ["app_id", "prompt", "negative_prompt", "inference_type", "output_format"];

function fields() {
  const body = { celery: true };
  for (const name of TEXTS) {
    const value = $(name).value.trim();
    if (value) body[name] = value;
  }
  for (const name of NUMBERS) {
    const value = $(name).value.trim();
    if (value !== "") body[name] = Number(value);
  }
  return body;
}

function requestBody() {
  const body = fields();
  if (upload) {
    const form = new FormData();
    for (const [name, value] of Object.entries(body)) form.append(name, String(value));
    form.append("image", upload, upload.name || "image.png");
    return form;
  }
  const image = $("image-url").value.trim();
  if (!image) throw new Error("give an image URL or data URI, or pick a file");
  return JSON.stringify({ ...body, image });
}

async function submit(event) {
  event.preventDefault();
  const mine = ++run;
  $("error").hidden = true;
  $("results").replaceChildren();
  setProgress(null);
  let body;
  try {
    body = requestBody();
  } catch (err) {
    showError(err.message);
    return;
  }
  const headers = authHeaders();
  if (typeof body === "string") headers["Content-Type"] = "application/json";
  $("submit").disabled = true;
  showStatus("Submitting…");
  try {
    const response = await fetch(form.dataset.submitUrl, { method: "POST", headers, body });
    const envelope = await readEnvelope(response);
    if (!response.ok || envelope.status === "FAILED") {
      showStatus(`Refused (HTTP ${response.status})`);
      showError(envelope);
      return;
    }
    const location = response.headers.get("Location") || `/tasks/${envelope.task_id}`;
    await follow(mine, location, envelope);
  } catch (err) {
    showStatus("");
    showError(`request failed: ${err}`);
  } finally {
    if (mine === run) {
      $("submit").disabled = false;
      $("cancel").hidden = true;
    }
  }
}

async function follow(mine, location, envelope) {
  const cancel = $("cancel");
  cancel.hidden = false;
  cancel.onclick = () => fetch(`${location}/cancel`, { method: "POST", headers: authHeaders() });
  while (envelope.status === "PENDING") {
    if (mine !== run) return;
    render(envelope);
    const response = await fetch(`${location}?wait=${POLL_WAIT_S}`, { headers: authHeaders() });
    envelope = await readEnvelope(response);
    if (!response.ok) break;
  }
  finish(envelope);
}

function render(envelope) {
  const state = envelope.state;
  if (state === "queued") {
    const eta = envelope.eta_seconds == null ? "" : `, starts in about ${envelope.eta_seconds} s`;
    const position = envelope.queue_position == null ? "" : ` at position ${envelope.queue_position}`;
    showStatus(`Queued${position}${eta}`);
    setProgress(null);
  } else if (state === "running") {
    const p = envelope.progress;
    showStatus(p ? `Running: step ${p.step} of ${p.total}` : "Running: loading the model");
    setProgress(p ? p.percent : 0);
  } else {
    showStatus("Uploading the images…");
    setProgress(100);
  }
}

function finish(envelope) {
  if (envelope.status !== "SUCCESS") {
    showStatus(envelope.status || "FAILED");
    setProgress(null);
    showError(envelope);
    return;
  }
  setProgress(100);
  const total = envelope.time_required && envelope.time_required.total;
  showStatus(total == null ? "Done" : `Done in ${total.toFixed(2)} s`);
  const output = envelope.output;
  $("results").replaceChildren(...output.result.map((url, i) => figure(output, url, i)));
}

function figure(output, url, i) {
  const item = document.createElement("figure");
  const image = Object.assign(document.createElement("img"), {
    src: url, alt: `output ${i + 1}`, className: "result",
  });
  const caption = document.createElement("figcaption");
  caption.append(`seed ${output.seeds[i]} · ${output.width}×${output.height} · `);
  caption.append(Object.assign(document.createElement("a"), {
    href: url, textContent: "Download", className: "download", download: "", target: "_blank",
  }));
  if (output.Has_NSFW_Content && output.Has_NSFW_Content[i]) {
    caption.append(" · ", Object.assign(document.createElement("span"), {
      textContent: "flagged by the safety checker", className: "nsfw",
    }));
  }
  if (output.low_res_urls && output.low_res_urls[i]) {
    caption.append(" · ", Object.assign(document.createElement("a"), {
      href: output.low_res_urls[i], textContent: "Low-res preview", className: "preview",
      target: "_blank",
    }));
  }
  item.append(image, caption);
  return item;
}

// --- start ----------------------------------------------------------------------------

$("api-key").value = localStorage.getItem(KEY_STORAGE) || "";
$("api-key").addEventListener("input", (event) => {
  localStorage.setItem(KEY_STORAGE, event.target.value.trim());
});
$("app_id").addEventListener("change", allowInferenceTypes);
form.addEventListener("submit", submit);
wireDropZone();
loadApps();
