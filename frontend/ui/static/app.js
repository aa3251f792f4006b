// The page: three panels over the REST APIs, through emoserve-client.js. What the page would otherwise hard-code
// (identities, prompt presets, labels, limits, sample videos) comes from /ui/config.json, i.e. from emoserve itself.
import { ApiError, EmoserveClient, encodeWav } from "./emoserve-client.js";
import { Blendshapes, drawCurves, drawFace } from "./face.js";

const $ = (id) => document.getElementById(id);
const config = await (await fetch("/ui/config.json")).json();
const client = new EmoserveClient();

// ---- shared: errors in place, the weights banner, the API key, tabs ----

function showError(id, error) {
  $(id).textContent = error instanceof ApiError ? error.message : String(error?.message ?? error);
}

async function guarded(errorId, button, work) {
  $(errorId).textContent = "";
  button.disabled = true;
  try {
    await work();
  } catch (error) {
    showError(errorId, error);
  } finally {
    button.disabled = false;
  }
}

const weights = new Map();
function noteWeights(model, metadata) {
  if (!metadata?.weights) return;
  weights.set(model, metadata.weights);
  $("weights").textContent = "Weights: " + [...weights].map(([name, text]) => `${name}: ${text}`).join(" · ");
}

$("api-key-row").hidden = !config.api_key_required;
$("api-key").addEventListener("change", (event) => {
  client.apiKey = event.target.value;
  loadHallo2Config();
});

const tabs = [...document.querySelectorAll('[role="tab"]')];
function selectTab(tab) {
  for (const each of tabs) {
    const selected = each === tab;
    each.setAttribute("aria-selected", String(selected));
    each.tabIndex = selected ? 0 : -1;
    $(each.getAttribute("aria-controls")).hidden = !selected;
  }
}
tabs.forEach((tab, i) => {
  tab.addEventListener("click", () => selectTab(tab));
  tab.addEventListener("keydown", (event) => {
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (!step) return;
    const next = tabs[(i + step + tabs.length) % tabs.length];
    selectTab(next);
    next.focus();
  });
});

// ---- Audio to expression ----

// 1 s chunks: within the documented 0.5-2 s, and a face that lags the voice by about one chunk
const CHUNK_SECONDS = 1;
const DEFAULT_CURVES = new Set(["jawOpen", "mouthSmileLeft", "eyeBlinkLeft", "browInnerUp"]);

const audio = $("a2e-audio");
const faceContext = $("face").getContext("2d");
const curvesContext = $("curves").getContext("2d");
const curveChoice = $("a2e-curves");
// what the face plays: frames at fps, timed by the audio element, or while recording by the clock since the first
// streamed frame arrived (`liveSince`)
const shown = { shapes: null, frames: [], fps: 30, liveSince: null };

for (let i = 0; i < config.lam_a2e.identities; i++) $("a2e-identity").add(new Option(String(i), String(i)));
$("a2e-smooth").checked = config.lam_a2e.movement_smooth;
$("a2e-brow").checked = config.lam_a2e.brow_movement;

function options() {
  return {
    idIdx: Number($("a2e-identity").value),
    exVol: $("a2e-ex-vol").checked,
    movementSmooth: $("a2e-smooth").checked,
    browMovement: $("a2e-brow").checked,
  };
}

function startShowing(names, fps) {
  shown.shapes = new Blendshapes(names);
  shown.fps = fps;
  shown.frames = [];
  const chosen = new Set([...curveChoice.selectedOptions].map((option) => option.text));
  const keep = chosen.size ? chosen : DEFAULT_CURVES;
  curveChoice.replaceChildren(...names.map((name, i) => new Option(name, String(i), false, keep.has(name))));
}

function offerDownload(body) {
  const link = $("a2e-download");
  URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([JSON.stringify(body, null, 1)], { type: "application/json" }));
  link.hidden = false;
}

function currentFrame() {
  const seconds = shown.liveSince !== null ? (performance.now() - shown.liveSince) / 1000 : audio.currentTime;
  return Math.min(shown.frames.length - 1, Math.floor(seconds * shown.fps));
}

function render() {
  const i = currentFrame();
  drawFace(faceContext, shown.shapes && i >= 0 ? shown.shapes.reader(shown.frames[i]) : () => 0);
  const series = [...curveChoice.selectedOptions].map((option) => [option.text, shown.frames.map((frame) => frame[option.value])]);
  drawCurves(curvesContext, series, shown.fps, i >= 0 ? i : null);
  requestAnimationFrame(render);
}
requestAnimationFrame(render);

function play(element) {
  // a browser may refuse to start sound without a click: the controls stay there for one
  element.play().catch(() => {});
}

$("a2e-animate").addEventListener("click", (event) => guarded("a2e-error", event.currentTarget, async () => {
  const file = $("a2e-file").files[0];
  if (!file) throw new Error("Choose an audio file first.");
  $("a2e-status").textContent = "Animating…";
  const result = await client.infer(file, options());
  startShowing(result.names, result.metadata.fps);
  shown.frames = result.frames.map((frame) => frame.weights);
  noteWeights("LAM-A2E", result.metadata);
  offerDownload(result);
  audio.src = URL.createObjectURL(file);
  play(audio);
  const { frame_count, fps, inference_time } = result.metadata;
  $("a2e-status").textContent = `${frame_count} frames at ${fps} fps in ${inference_time.toFixed(2)} s`;
}));

let recording = null;
const recordButton = $("a2e-record");

function concat(blocks) {
  const out = new Float32Array(blocks.reduce((n, block) => n + block.length, 0));
  let at = 0;
  for (const block of blocks) {
    out.set(block, at);
    at += block.length;
  }
  return out;
}

function sendPending(rec) {
  if (!rec.pending.length) return;
  const wav = encodeWav(concat(rec.pending), rec.sampleRate);
  rec.pending = [];
  rec.pendingSamples = 0;
  rec.sent.push(rec.stream.sendChunk(wav).then((result) => {
    if (!shown.shapes) startShowing(result.names, result.metadata.fps);
    shown.frames.push(...result.frames.map((frame) => frame.weights));
    shown.liveSince ??= performance.now();
    noteWeights("LAM-A2E", result.metadata);
    $("a2e-status").textContent = `streaming: chunk ${result.metadata.chunk_index}, ${shown.frames.length} frames`;
  }, (error) => showError("a2e-error", error)));
}

function setRecording(on) {
  recordButton.textContent = on ? "Stop recording" : "Record";
  recordButton.setAttribute("aria-pressed", String(on));
  $("a2e-animate").disabled = on;
}

async function startRecording() {
  const { idIdx, movementSmooth, browMovement } = options();
  const stream = await client.openStream({ idIdx, movementSmooth, browMovement });
  const media = await navigator.mediaDevices.getUserMedia({ audio: true });
  const context = new AudioContext();
  await context.audioWorklet.addModule("/ui/static/recorder-worklet.js");
  const node = new AudioWorkletNode(context, "recorder");
  context.createMediaStreamSource(media).connect(node);
  node.connect(context.destination); // pulls the worklet; it writes no output, so nothing is heard
  const rec = { stream, media, context, node, sampleRate: context.sampleRate, pending: [], pendingSamples: 0, all: [], sent: [] };
  node.port.onmessage = ({ data }) => {
    rec.pending.push(data);
    rec.all.push(data);
    rec.pendingSamples += data.length;
    if (rec.pendingSamples >= rec.sampleRate * CHUNK_SECONDS) sendPending(rec);
  };
  audio.pause();
  audio.removeAttribute("src");
  shown.shapes = null;
  shown.frames = [];
  shown.liveSince = null;
  recording = rec;
  setRecording(true);
  $("a2e-status").textContent = "recording…";
}

async function stopRecording() {
  const rec = recording;
  recording = null;
  setRecording(false);
  rec.node.port.onmessage = null;
  sendPending(rec);
  rec.media.getTracks().forEach((track) => track.stop());
  await rec.context.close();
  await Promise.all(rec.sent);
  shown.liveSince = null;
  await rec.stream.close();
  // the recording and its frames, played back together
  audio.src = URL.createObjectURL(encodeWav(concat(rec.all), rec.sampleRate));
  offerDownload({ names: shown.shapes?.names ?? [], metadata: { fps: shown.fps, frame_count: shown.frames.length },
                  frames: shown.frames.map((weights, i) => ({ weights, time: i / shown.fps })) });
  $("a2e-status").textContent = `recorded: ${shown.frames.length} frames`;
  play(audio);
}

recordButton.addEventListener("click", async () => {
  $("a2e-error").textContent = "";
  try {
    await (recording ? stopRecording() : startRecording());
  } catch (error) {
    showError("a2e-error", error);
    if (recording) await stopRecording().catch(() => {});
    setRecording(false);
  }
});

// ---- Emotion-LLaMA ----

const llama = config.emotion_llama;
const sample = $("llama-sample");
for (const path of llama.samples) sample.add(new Option(path.split("/").pop(), path));
if (!llama.samples.length) sample.add(new Option("(none: upload a video)", ""));
const prompt = $("llama-prompt");
prompt.value = llama.presets.emotion;
document.querySelectorAll("[data-preset]").forEach((button) => {
  button.addEventListener("click", () => (prompt.value = llama.presets[button.dataset.preset]));
});
const maxTokens = $("llama-max-tokens");
maxTokens.value = llama.max_new_tokens;
maxTokens.max = llama.max_new_tokens_limit;
const answer = $("llama-answer");

function showLabels(result) {
  const box = $("llama-labels");
  box.replaceChildren();
  if (!result.label_probs) return;
  const heading = document.createElement("p");
  heading.innerHTML = `Emotion: <strong></strong> (${Math.round(100 * result.confidence)} %)`;
  heading.querySelector("strong").textContent = result.emotion;
  box.append(heading);
  for (const label of llama.labels.filter((name) => name in result.label_probs)) {
    const p = result.label_probs[label];
    const row = document.createElement("label");
    row.className = "bar";
    row.textContent = label;
    const meter = Object.assign(document.createElement("meter"), { min: 0, max: 1, value: p });
    meter.setAttribute("aria-label", `${label} confidence`);
    row.append(meter, `${(100 * p).toFixed(1)} %`);
    box.append(row);
  }
}

$("llama-ask").addEventListener("click", (event) => guarded("llama-error", event.currentTarget, async () => {
  answer.textContent = "";
  $("llama-labels").replaceChildren();
  $("llama-status").textContent = "asking…";
  const file = $("llama-file").files[0];
  const maxNewTokens = maxTokens.value ? Number(maxTokens.value) : undefined;
  let result;
  if (file) {
    result = await client.analyze(file, prompt.value, { maxNewTokens });
  } else {
    const tokens = client.askStream({ videoPath: sample.value, question: prompt.value, maxNewTokens });
    for (let n = 1; ; n++) {
      const { value, done } = await tokens.next();
      if (done) {
        result = value;
        break;
      }
      answer.textContent += value.delta;
      $("llama-status").textContent = `streaming: ${n} tokens`;
    }
  }
  answer.textContent = result.response;
  showLabels(result);
  noteWeights("Emotion-LLaMA", result.metadata);
  $("llama-status").textContent = `answered in ${result.duration.toFixed(2)} s`;
}));

// ---- Talking head ----

const guidance = $("hallo2-guidance");
const steps = $("hallo2-steps");
guidance.min = config.hallo2.min_guidance_scale;
guidance.max = config.hallo2.max_guidance_scale;
steps.max = config.hallo2.max_inference_steps;
const progress = $("hallo2-progress");
const video = $("hallo2-video");
let hallo2Config = null;

async function loadHallo2Config() {
  if (config.api_key_required && !client.apiKey) return;
  try {
    hallo2Config = await client.hallo2Config();
    guidance.value = hallo2Config.guidance_scale;
    steps.value = hallo2Config.inference_steps;
    await refreshTasks();
  } catch (error) {
    showError("hallo2-error", error);
  }
}

async function videoUrl(taskId) {
  return URL.createObjectURL(await client.taskVideo(taskId));
}

async function showVideo(taskId) {
  URL.revokeObjectURL(video.src);
  video.src = await videoUrl(taskId);
  const link = $("hallo2-download");
  link.href = video.src;
  link.download = `${taskId}.mp4`;
  link.hidden = false;
  play(video);
}

async function download(taskId) {
  const link = Object.assign(document.createElement("a"), { href: await videoUrl(taskId), download: `${taskId}.mp4` });
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
}

function actionButton(text, taskId, work) {
  const button = document.createElement("button");
  button.textContent = text;
  button.setAttribute("aria-label", `${text} task ${taskId}`);
  button.addEventListener("click", () => guarded("hallo2-error", button, work));
  return button;
}

function taskRow(task) {
  const row = document.createElement("tr");
  for (const text of [task.task_id.slice(0, 8), task.status, `${task.progress} %`, task.created_at]) {
    row.insertCell().textContent = text;
  }
  row.cells[0].title = task.task_id;
  const actions = row.insertCell();
  if (task.status === "queued" || task.status === "processing") {
    actions.append(actionButton("Cancel", task.task_id, async () => {
      await client.cancelTask(task.task_id);
      await refreshTasks();
    }));
  }
  if (task.status === "completed") {
    actions.append(actionButton("Play", task.task_id, () => showVideo(task.task_id)),
                   actionButton("Download", task.task_id, () => download(task.task_id)));
  }
  return row;
}

async function refreshTasks() {
  const { tasks } = await client.tasks();
  $("hallo2-tasks").replaceChildren(...Object.values(tasks).reverse().map(taskRow));
}

$("hallo2-refresh").addEventListener("click", (event) => guarded("hallo2-error", event.currentTarget, refreshTasks));

$("hallo2-generate").addEventListener("click", (event) => guarded("hallo2-error", event.currentTarget, async () => {
  const image = $("hallo2-image").files[0];
  const speech = $("hallo2-audio").files[0];
  if (!image || !speech) throw new Error("Choose a portrait image and a driving audio file first.");
  // the configuration is the server's, for every task created after it: sent only when it was changed here
  const changes = {};
  if (guidance.value !== "" && Number(guidance.value) !== hallo2Config?.guidance_scale) changes.guidance_scale = Number(guidance.value);
  if (steps.value !== "" && Number(steps.value) !== hallo2Config?.inference_steps) changes.inference_steps = Number(steps.value);
  if (Object.keys(changes).length) hallo2Config = (await client.setHallo2Config(changes)).config;
  const taskId = await client.createTask(image, speech, { useCache: $("hallo2-cache").checked });
  progress.value = 0;
  video.removeAttribute("src");
  $("hallo2-download").hidden = true;
  await refreshTasks();
  const final = await client.waitForTask(taskId, (task) => {
    progress.value = task.progress;
    $("hallo2-status").textContent = `${task.status} ${task.progress} %${task.status_message ? `: ${task.status_message}` : ""}`;
  });
  await refreshTasks();
  if (final.status !== "completed") throw new Error(`The task ${final.status}: ${final.error ?? final.status_message ?? ""}`);
  await showVideo(taskId);
}));

loadHallo2Config();
