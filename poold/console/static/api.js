// The console's only way to the server: every call carries the token as
// "Authorization: Bearer", never in a URL, and every error becomes the
// server's own sentence ({"error": "..."}) so the page can show it as text.

const TOKEN_KEY = "poold.token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") {
      return body.error;
    }
  } catch {
    // not JSON: fall back to the status line
  }
  return `${response.status} ${response.statusText}`.trim();
}

// fetch() with the token; JSON bodies are encoded, Blobs (a .wasm file) go raw.
// Returns the Response when raw is set, else the decoded JSON.
export async function call(method, path, { body, headers, signal, raw = false } = {}) {
  const sent = new Headers(headers);
  sent.set("Authorization", `Bearer ${token() ?? ""}`);
  let payload = body;
  if (body !== undefined && !(body instanceof Blob)) {
    sent.set("Content-Type", "application/json");
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, {
      method, headers: sent, body: payload, signal,
      cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer",
    });
  } catch (e) {
    if (e.name === "AbortError") {
      throw e;
    }
    throw new ApiError(0, `poold did not answer (${e.message}); is it running?`);
  }
  if (!response.ok) {
    throw new ApiError(response.status, await errorText(response));
  }
  return raw ? response : response.json();
}

// The lines of a streaming body as they arrive (the last one may lack "\n").
export async function* lines(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) {
      break;
    }
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n")) >= 0) {
      yield buffer.slice(0, cut);
      buffer = buffer.slice(cut + 1);
    }
  }
  buffer += decoder.decode();
  if (buffer) {
    yield buffer;
  }
}

// Server-Sent Events read from a fetch() body: EventSource cannot send an
// Authorization header, so the stream is parsed here. Yields {event, data}.
export async function* events(response) {
  let event = "message";
  let data = [];
  for await (const line of lines(response)) {
    if (line === "") {
      if (data.length) {
        yield { event, data: data.join("\n") };
      }
      event = "message";
      data = [];
    } else if (line.startsWith("event:")) {
      event = line.slice(6).trim();
    } else if (line.startsWith("data:")) {
      data.push(line.slice(5).startsWith(" ") ? line.slice(6) : line.slice(5));
    }
  }
}
