// Small helpers to build elements without HTML strings (nothing from the API is parsed as HTML).

/** An element: h("a", {href: "?", class: "x", onclick: f}, "text", child, [more]). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

/** An SVG element (the box overlay). */
export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** A time as the operator reads it: local date and time to the second. */
export function when(text) {
  if (!text) return "";
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? text : date.toLocaleString(undefined, { hour12: false });
}

/** A <time> element for an RFC 3339 instant. */
export function time(text) {
  return h("time", { datetime: text }, when(text));
}

/** The pipeline's stored status as the operator's four words. */
export function statusWord(status) {
  return (
    { registered: "queued", planned: "processing", finishing: "processing", done: "done", error: "error" }[
      status
    ] || status
  );
}

/** A status badge; `data-status` carries the word, for styling and for tests. */
export function badge(status) {
  const word = statusWord(status);
  return h("span", { class: `status status-${word}`, dataset: { status: word }, title: `stored status: ${status}` }, word);
}

/** The text of a result's answer: its text, its boxes' phrases, or the model's raw words. */
export function answerText(result) {
  const answer = result.answer;
  if (answer && typeof answer.text === "string") return answer.text;
  if (answer && Array.isArray(answer.boxes)) {
    return answer.boxes.length ? answer.boxes.map((b) => b.label).join(", ") : "nothing located";
  }
  if (answer && answer.answer !== undefined) return String(answer.answer);
  return result.raw_text ? `(unparsed) ${result.raw_text}` : "(no answer)";
}

/** Rounded degrees for showing a lon/lat box. */
export function degrees(box) {
  return box ? box.map((v) => Number(v).toFixed(4)).join(", ") : "";
}
