// A small client for the three REST APIs (the JavaScript side of sdk/): LAM-A2E whole-file and streaming sessions,
// Emotion-LLaMA's answers (whole, or token by token from the SSE route), Hallo2's task API.
// No dependencies: fetch, FormData and ReadableStream only, so it runs in any current browser as an ES module.

// The three APIs answer errors in three documented bodies: {"detail"} (LAM-A2E), {"error", "code", "details"}
// (Emotion-LLaMA), {"detail", "error_code"} (Hallo2). ApiError carries the body and says its text as the API wrote it.
export class ApiError extends Error {
  constructor(status, body) {
    const text = body?.detail ?? body?.error ?? `HTTP ${status}`;
    super(body?.details ? `${text} (${body.details})` : String(text));
    this.status = status;
    this.body = body;
    this.code = body?.error_code ?? body?.code ?? null;
  }
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = { detail: `${response.status} ${response.statusText}` };
  }
  return new ApiError(response.status, body);
}

function form(fields) {
  const data = new FormData();
  for (const [name, value] of Object.entries(fields)) {
    if (value === undefined || value === null) continue;
    if (value instanceof Blob) data.append(name, value, value.name || name);
    else data.append(name, String(value));
  }
  return data;
}

// The server-sent events of a response body: {event, data} with data parsed as JSON; comment lines (keep-alives)
// are skipped.
async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffered += value;
    let end;
    while ((end = buffered.indexOf("\n\n")) >= 0) {
      const lines = buffered.slice(0, end).split("\n");
      buffered = buffered.slice(end + 2);
      const data = lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(5));
      if (!data.length) continue;
      yield { event: lines.find((l) => l.startsWith("event:"))?.slice(6).trim(), data: JSON.parse(data.join("\n")) };
    }
  }
}

const FINISHED_TASK = ["completed", "failed", "cancelled"];

// 16-bit PCM WAV of mono float samples: what a streaming chunk is sent as (the server resamples any rate).
export function encodeWav(samples, sampleRate) {
  const buffer = new ArrayBuffer(44 + samples.length * 2);
  const view = new DataView(buffer);
  const text = (offset, s) => [...s].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, sampleRate, true); view.setUint32(28, sampleRate * 2, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, samples.length * 2, true);
  samples.forEach((s, i) => view.setInt16(44 + i * 2, Math.max(-1, Math.min(1, s)) * 0x7fff, true));
  return new Blob([buffer], { type: "audio/wav" });
}

// One LAM-A2E streaming session; chunks are sent one after another (the session's frames follow the audio's order).
export class LamStream {
  constructor(client, sessionId) {
    this.client = client;
    this.sessionId = sessionId;
    this.queue = Promise.resolve();
  }

  sendChunk(wav) {
    const sent = this.queue.then(() =>
      this.client.request("POST", "/api/infer_stream_chunk", { form: { session_id: this.sessionId, audio_chunk: wav } }));
    this.queue = sent.catch(() => {});
    return sent;
  }

  async close() {
    await this.queue;
    return this.client.request("DELETE", `/api/infer_stream_close/${encodeURIComponent(this.sessionId)}`);
  }
}

export class EmoserveClient {
  constructor({ baseUrl = "", apiKey = "" } = {}) {
    this.baseUrl = baseUrl.replace(/\/$/, "");
    this.apiKey = apiKey;
  }

  async fetch(method, path, { json, form: fields } = {}) {
    const headers = this.apiKey ? { "X-API-Key": this.apiKey } : {};
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (fields) {
      body = form(fields);
    }
    const response = await fetch(this.baseUrl + path, { method, headers, body });
    if (!response.ok) throw await errorFrom(response);
    return response;
  }

  async request(method, path, options) {
    return (await this.fetch(method, path, options)).json();
  }

  // ---- LAM-A2E ----
  infer(audioFile, { idIdx = 0, exVol = false, movementSmooth = false, browMovement = false } = {}) {
    return this.request("POST", "/api/infer", {
      form: { audio_file: audioFile, id_idx: idIdx, ex_vol: exVol, movement_smooth: movementSmooth, brow_movement: browMovement },
    });
  }

  async openStream({ idIdx = 0, movementSmooth = true, browMovement = false } = {}) {
    const opened = await this.request("POST", "/api/infer_stream_init", {
      json: { id_idx: idIdx, movement_smooth: movementSmooth, brow_movement: browMovement },
    });
    return new LamStream(this, opened.session_id);
  }

  // ---- Emotion-LLaMA ----
  // A server-side video (inside the server's media roots), token by token: yields {delta} for each token, then
  // returns the /process_video body. An `error` event is thrown as the ApiError of its body.
  async *askStream({ videoPath, question, maxNewTokens }) {
    const response = await this.fetch("POST", "/process_video/stream", {
      json: { video_path: videoPath, question, max_new_tokens: maxNewTokens },
    });
    for await (const { event, data } of sseEvents(response)) {
      if (event === "token") yield data;
      else if (event === "done") return data;
      else if (event === "error") throw new ApiError(data.code ?? 500, data);
    }
    throw new ApiError(500, { error: "the answer stream ended before its last event" });
  }

  // An uploaded video; the whole answer at once (the streaming route reads server-side paths only).
  analyze(videoFile, question, { maxNewTokens } = {}) {
    return this.request("POST", "/api/v1/emotion-llama/analyze", {
      form: { video_file: videoFile, question, max_new_tokens: maxNewTokens },
    });
  }

  // ---- Hallo2 ----
  hallo2Config() {
    return this.request("GET", "/api/v1/inference/hallo2/config");
  }

  setHallo2Config(changes) {
    return this.request("POST", "/api/v1/inference/hallo2/config", { json: changes });
  }

  async createTask(imageFile, audioFile, { useCache = true } = {}) {
    const created = await this.request("POST", "/api/v1/inference/hallo2", {
      form: { image_file: imageFile, audio_file: audioFile, use_cache: useCache },
    });
    return created.task_id;
  }

  task(taskId) {
    return this.request("GET", `/api/v1/tasks/${taskId}`);
  }

  tasks() {
    return this.request("GET", "/api/v1/tasks");
  }

  cancelTask(taskId) {
    return this.request("DELETE", `/api/v1/tasks/${taskId}`);
  }

  // The MP4 as a Blob: an <a href> or <video src> could not send the API key.
  async taskVideo(taskId) {
    return (await this.fetch("GET", `/api/v1/tasks/${taskId}/video`)).blob();
  }

  // Follows a task until it ends, calling onProgress with each status; the final status (completed, failed,
  // cancelled). The task's event stream tells each change as it happens; a server without one is polled every pollMs.
  async waitForTask(taskId, onProgress, pollMs = 500) {
    try {
      const response = await this.fetch("GET", `/api/v1/tasks/${taskId}/events`);
      for await (const { event, data } of sseEvents(response)) {
        if (event === "error") throw new ApiError(503, data);
        onProgress?.(data);
        if (FINISHED_TASK.includes(data.status)) return data;
      }
    } catch (error) {
      const noStream = error instanceof ApiError && [404, 405].includes(error.status) && error.code !== "TASK_NOT_FOUND";
      if (!noStream) throw error;
    }
    for (;;) {  // no stream, or it ended before the task did
      const status = await this.task(taskId);
      onProgress?.(status);
      if (FINISHED_TASK.includes(status.status)) return status;
      await new Promise((resolve) => setTimeout(resolve, pollMs));
    }
  }
}
