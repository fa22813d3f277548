// The results API, called with the operator's token in the Authorization header.
//
// The token lives in sessionStorage (this tab, this session) and never goes into a URL: images
// and the live feed are fetched with the header too (an <img src> or an EventSource cannot
// send one), the images kept as blob: URLs.

const TOKEN_KEY = "skyeye.token";
// the page is served at <base>/ui/: the API is its parent, whatever prefix a proxy adds
export const API = new URL("..", window.location.href);

export class ApiError extends Error {
  constructor(status, code, description) {
    super(description || `the API answered ${status}`);
    this.status = status;
    this.code = code;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** Called with the error when the API refuses the token (401): the app signs out. */
let onUnauthorized = () => {};
export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

/** An absolute URL of an API path with query parameters (empty ones dropped). */
export function url(path, params = {}) {
  const out = new URL(path.replace(/^\//, ""), API);
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") out.searchParams.set(key, value);
  }
  return out;
}

function headers(extra = {}) {
  const out = { Accept: "application/json", ...extra };
  const t = token();
  if (t) out.Authorization = `Bearer ${t}`;
  return out;
}

async function failure(response) {
  let body = {};
  try {
    body = await response.json();
  } catch {
    // not every failure has the API's error body (a proxy's page, a dropped connection)
  }
  const error = new ApiError(response.status, body.code, body.description);
  if (response.status === 401) onUnauthorized(error);
  return error;
}

/** GET (or another method with a JSON body) an API path; the parsed JSON, or an ApiError. */
export async function call(path, params = {}, { method = "GET", body, signal } = {}) {
  const init = { method, headers: headers(), signal };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(url(path, params), init);
  if (!response.ok) throw await failure(response);
  if (response.status === 204) return null;
  return response.json();
}

/** Whether a token is good: one read the API answers (the list of collections). */
export async function check(candidate) {
  const response = await fetch(url("collections"), {
    headers: { Accept: "application/json", Authorization: `Bearer ${candidate}` },
  });
  if (response.ok) return null;
  let body = {};
  try {
    body = await response.json();
  } catch {
    // described below by the status alone
  }
  return body.description || `the API answered ${response.status}`;
}

// asset id -> Promise of a blob: URL of its preview; dropped when the asset changes
const previews = new Map();

/** A blob: URL of an asset's preview image (fetched with the token), cached per page load. */
export function previewUrl(assetId) {
  if (!previews.has(assetId)) {
    const made = fetch(url(`assets/${assetId}/preview`), { headers: headers({ Accept: "image/jpeg, image/png" }) }).then(
      async (response) => {
        if (!response.ok) throw await failure(response);
        return URL.createObjectURL(await response.blob());
      },
    );
    made.catch(() => previews.delete(assetId));
    previews.set(assetId, made);
  }
  return previews.get(assetId);
}

/** Forget an asset's cached preview (it was redrawn when the asset finished). */
export function forgetPreview(assetId) {
  const old = previews.get(assetId);
  previews.delete(assetId);
  if (old) old.then((u) => URL.revokeObjectURL(u)).catch(() => {});
}

/**
 * Follow the live feed (GET /api/events, Server-Sent Events) with fetch and a stream reader.
 *
 * `handlers.event({id, event, data})` gets each event; `handlers.state(word)` "connecting",
 * "live" or "reconnecting". It reconnects after a drop with Last-Event-ID, so nothing is missed.
 * `opened` resolves once the server has fixed where the feed starts (its response arrived).
 * Returns {stop, opened}.
 */
export function follow(handlers) {
  const controller = new AbortController();
  let lastId = null;
  let retryMs = 1000;
  let resolveOpened;
  const opened = new Promise((resolve) => {
    resolveOpened = resolve;
  });

  async function once() {
    handlers.state(lastId === null ? "connecting" : "reconnecting");
    const extra = { Accept: "text/event-stream" };
    if (lastId !== null) extra["Last-Event-ID"] = lastId;
    const response = await fetch(url("api/events"), { headers: headers(extra), signal: controller.signal });
    if (!response.ok) throw await failure(response);
    handlers.state("live");
    resolveOpened();
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let fields = {};
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let cut;
      while ((cut = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, cut);
        buffer = buffer.slice(cut + (buffer.startsWith("\r\n", cut) ? 2 : 1));
        if (line === "") {
          if (fields.id !== undefined) lastId = fields.id;
          if (data.length) {
            let payload;
            try {
              payload = JSON.parse(data.join("\n"));
            } catch {
              payload = data.join("\n");
            }
            handlers.event({ id: fields.id, event: fields.event || "message", data: payload });
          }
          fields = {};
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (name === "data") data.push(text);
        else if (name === "retry" && /^\d+$/.test(text)) retryMs = Number(text);
        else fields[name] = text;
      }
    }
  }

  (async () => {
    while (!controller.signal.aborted) {
      try {
        await once();
      } catch (error) {
        if (controller.signal.aborted) return;
        if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
          handlers.state(`stopped: ${error.message}`);
          resolveOpened();
          return;
        }
        // an id the feed no longer knows (its table was reset): start again from now
        if (error instanceof ApiError && error.status === 400) lastId = null;
      }
      if (controller.signal.aborted) return;
      handlers.state("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, retryMs));
    }
  })();
  return { stop: () => controller.abort(), opened };
}
