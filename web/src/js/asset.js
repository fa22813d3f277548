// One asset: its preview at full size with every box and phrase (duplicates on demand), its
// tiles or frames on a strip, caption, answers, errors, alerts, and a box to ask a question.

import { ApiError, call, forgetPreview, previewUrl } from "./api.js";
import { answerText, badge, degrees, h, svg, time } from "./dom.js";
import { caption, classCounts } from "./list.js";
import { assetDetail } from "./search.js";

const TASKS = [
  ["vqa", "Question (yes/no, how many, what)"],
  ["detection", "Find every instance of a phrase"],
  ["refer", "Locate one described object"],
  ["caption", "Describe"],
  ["identify", "What is in a pixel box x1,y1,x2,y2"],
];

function where(result) {
  if (result.frame_index !== null && result.frame_index !== undefined) {
    const at = result.frame_time_s !== null && result.frame_time_s !== undefined ? ` (${result.frame_time_s.toFixed(1)} s)` : "";
    return `frame ${result.frame_index}${at}`;
  }
  if (result.item_kind === "tile") return `tile ${result.tile_index}`;
  return result.item_kind || "whole asset";
}

/** The preview with an SVG layer of every box (in the asset's pixels), duplicates hidden. */
function scene(asset, selection) {
  const figure = h("figure", { class: "scene-figure" });
  const holder = h("div", { class: "scene" });
  figure.append(holder);
  if (!asset.preview) {
    holder.append(h("p", { class: "no-preview" }, `No preview yet (the asset is ${asset.status}).`));
    return { figure, layer: null };
  }
  const img = h("img", { alt: `Preview of ${asset.object_key} with its detections drawn`, id: "preview" });
  previewUrl(asset.asset_id).then((src) => {
    img.src = src;
  });
  holder.append(img);
  // clip detections are in their frames' pixels, not the preview's: listed below, not drawn
  if (asset.kind === "clip" || !asset.width || !asset.height) return { figure, layer: null };
  const layer = svg("svg", {
    class: "boxes",
    viewBox: `0 0 ${asset.width} ${asset.height}`,
    preserveAspectRatio: "none",
    role: "img",
    "aria-label": "boxes of the detections",
  });
  const fontSize = Math.max(10, Math.round(Math.max(asset.width, asset.height) / 40));
  asset.detections.features.forEach((feature, index) => {
    const p = feature.properties;
    const [x1, y1, x2, y2] = p.pixel_box;
    const group = svg(
      "g",
      {
        class: `box${p.duplicate ? " duplicate" : ""}`,
        "data-index": index,
        "data-label": p.label,
        "data-tile": p.tile,
      },
      svg("title", {}, `${p.label}${p.duplicate ? " (duplicate from an overlapping tile)" : ""}`),
      svg("rect", { x: x1, y: y1, width: Math.max(1, x2 - x1), height: Math.max(1, y2 - y1) }),
      svg("text", { x: x1 + 2, y: Math.max(fontSize, y1 - 3), "font-size": fontSize }, p.label),
    );
    layer.append(group);
  });
  if (selection.tile !== null) {
    const item = asset.work_items.find((w) => w.kind === "tile" && w.tile_index === selection.tile);
    if (item) {
      layer.append(
        svg("rect", { class: "tile-outline", x: item.px_x, y: item.px_y, width: item.px_width, height: item.px_height }),
      );
    }
  }
  holder.append(layer);
  return { figure, layer };
}

function boxTable(asset, selection) {
  const rows = asset.detections.features.filter((f) => selection.tile === null || f.properties.tile === selection.tile);
  if (!rows.length) return h("p", { class: "muted" }, "No boxes here.");
  return h(
    "table",
    { class: "table", id: "box-table" },
    h("caption", {}, "Boxes and their phrases"),
    h("thead", {}, h("tr", {}, ["Phrase", "Task", asset.kind === "clip" ? "Frame" : "Tile", "Pixel box", "Lon/lat box", "Duplicate"].map((t) => h("th", { scope: "col" }, t)))),
    h(
      "tbody",
      {},
      rows.map((f) => {
        const p = f.properties;
        return h(
          "tr",
          { class: p.duplicate ? "duplicate" : "", dataset: { label: p.label } },
          h("td", {}, p.label),
          h("td", {}, p.task),
          h("td", {}, p.tile ?? ""),
          h("td", {}, p.pixel_box.map((v) => Math.round(v)).join(", ")),
          h("td", {}, degrees(f.bbox)),
          h("td", {}, p.duplicate ? "yes" : "no"),
        );
      }),
    ),
  );
}

/** Tiles or sampled frames, in order along a strip; choosing one narrows boxes and answers. */
function strip(asset, selection, choose) {
  const frames = asset.frames || [];
  const items = frames.length
    ? frames.map((f) => ({ key: f.frame_index, label: `frame ${f.frame_index}`, detail: `${Number(f.time_s).toFixed(1)} s`, at: f.time_s }))
    : asset.work_items
        .filter((w) => w.kind === "tile")
        .map((w) => ({ key: w.tile_index, label: `tile ${w.tile_index}`, detail: w.status, at: null }));
  if (!items.length) return null;
  const name = frames.length ? "Frames in time" : "Tiles";
  const group = h("div", { class: "strip", role: "group", "aria-label": name });
  const button = (key, text, detail) =>
    h(
      "button",
      { type: "button", class: "chip", "aria-pressed": String(selection.tile === key), onclick: () => choose(key) },
      text,
      detail ? h("small", {}, ` ${detail}`) : null,
    );
  group.append(button(null, "all", ""));
  for (const item of items) group.append(button(item.key, item.label, item.detail));
  const parts = [h("h3", {}, name), group];
  if (frames.length && asset.duration_s) {
    const track = h("div", { class: "track", "aria-hidden": "true" });
    for (const item of items) {
      const tick = h("span", { class: "tick" });
      tick.style.left = `${Math.min(100, (100 * item.at) / asset.duration_s)}%`;
      track.append(tick);
    }
    parts.splice(1, 0, track);
  }
  return h("section", { class: "panel" }, parts);
}

function answers(asset, selection) {
  const rows = asset.results.filter(
    (r) => selection.tile === null || r.tile_index === selection.tile || r.frame_index === selection.tile,
  );
  return h(
    "section",
    { class: "panel", "aria-labelledby": "answers-title", id: "answers" },
    h("h3", { id: "answers-title" }, "Answers"),
    rows.length
      ? h(
          "table",
          { class: "table" },
          h("thead", {}, h("tr", {}, ["Where", "Task", "Asked", "Answer"].map((t) => h("th", { scope: "col" }, t)))),
          h(
            "tbody",
            {},
            rows.map((r) =>
              h("tr", { dataset: { resultId: r.result_id } }, h("td", {}, where(r)), h("td", {}, r.task_kind), h("td", {}, r.task_text || ""), h("td", {}, answerText(r))),
            ),
          ),
        )
      : h("p", { class: "muted" }, "No answers yet."),
  );
}

function errorsPanel(asset) {
  if (!asset.errors.length) return null;
  return h(
    "section",
    { class: "panel", "aria-labelledby": "errors-title" },
    h("h3", { id: "errors-title", class: "error" }, "Errors"),
    h(
      "ul",
      { class: "errors" },
      asset.errors.map((e) => h("li", {}, h("b", {}, `${e.stage || e.source}: ${e.kind}`), ` ${e.message}`)),
    ),
  );
}

function alertsPanel(alerts) {
  return h(
    "section",
    { class: "panel", "aria-labelledby": "asset-alerts-title" },
    h("h3", { id: "asset-alerts-title" }, "Alerts"),
    alerts.length
      ? h(
          "ul",
          { class: "plain" },
          alerts.map((a) =>
            h(
              "li",
              {},
              h("b", {}, a.rule_name),
              " fired ",
              time(a.created_at),
              `: ${a.evidence.map((e) => e.text).join("; ")}`,
            ),
          ),
        )
      : h("p", { class: "muted" }, "No rule fired on this asset."),
  );
}

function askForm(asset, onAnswered) {
  const tiles = asset.frames && asset.frames.length
    ? asset.work_items.filter((w) => w.kind === "frame")
    : asset.work_items.filter((w) => w.kind === "tile");
  const out = h("div", { class: "ask-answer", id: "ask-answer", role: "status", "aria-live": "polite" });
  const form = h(
    "form",
    { class: "ask", id: "ask-form" },
    h("h3", {}, "Ask a question"),
    h(
      "div",
      { class: "field" },
      h("label", { for: "ask-task" }, "Task"),
      h("select", { id: "ask-task", name: "task" }, TASKS.map(([v, t]) => h("option", { value: v }, t))),
    ),
    h(
      "div",
      { class: "field grow" },
      h("label", { for: "ask-text" }, "Question or phrase"),
      h("input", { id: "ask-text", name: "text", placeholder: "Is there a ship in the harbour?", maxlength: "500" }),
    ),
    h(
      "div",
      { class: "field" },
      h("label", { for: "ask-tile" }, asset.kind === "clip" ? "Frame" : "Tile"),
      h(
        "select",
        { id: "ask-tile", name: "tile" },
        h("option", { value: "" }, "all"),
        tiles.map((w) => {
          const n = w.kind === "frame" ? w.frame_index : w.tile_index;
          return h("option", { value: n }, `${w.kind} ${n}`);
        }),
      ),
    ),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Ask")),
    out,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const body = { task: data.get("task"), text: String(data.get("text") || "") };
    if (data.get("tile") !== "") body.tile = Number(data.get("tile"));
    const submit = form.querySelector("button[type=submit]");
    submit.disabled = true;
    out.replaceChildren(h("p", { class: "muted" }, "Asking the model…"));
    try {
      const answer = await call(`assets/${asset.asset_id}/ask`, {}, { method: "POST", body });
      out.replaceChildren(
        h("p", {}, `Answer (${answer.cached ? "from cached embeddings" : "encoded afresh"}, ${Math.round(answer.timings_ms.total)} ms):`),
        h(
          "ul",
          { class: "plain", id: "ask-answers" },
          answer.answers.map((a) =>
            h(
              "li",
              { class: "answer" },
              h("b", {}, `${asset.kind === "clip" ? "frame" : "tile"} ${a.tile}: `),
              answerText(a),
              a.detections.length ? ` (${a.detections.length} box${a.detections.length > 1 ? "es" : ""})` : "",
            ),
          ),
        ),
      );
      onAnswered();
    } catch (error) {
      const why = error instanceof ApiError && error.status === 403 ? `${error.message}` : error.message;
      out.replaceChildren(h("p", { class: "error", role: "alert" }, `The question was not answered: ${why}`));
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

/** The asset view; returns its live-event handler. */
export async function assetView(root, assetId) {
  let asset = await assetDetail(assetId);
  if (!asset) {
    root.replaceChildren(h("section", {}, h("h2", { id: "view-title" }, "No such asset"), h("p", {}, `The catalog has no asset ${assetId}.`)));
    return {};
  }
  const selection = { tile: null, duplicates: false };
  let alerts = [];
  const body = h("div", { class: "asset-body" });
  const ask = askForm(asset, () => refresh().catch(() => {}));

  function choose(tile) {
    selection.tile = tile;
    draw();
  }

  function draw() {
    const counts = classCounts(asset);
    const { figure, layer } = scene(asset, selection);
    const toggle = h("input", { type: "checkbox", id: "show-duplicates", checked: selection.duplicates });
    toggle.addEventListener("change", () => {
      selection.duplicates = toggle.checked;
      figure.classList.toggle("show-duplicates", toggle.checked);
    });
    figure.classList.toggle("show-duplicates", selection.duplicates);
    const duplicates = asset.detections.features.filter((f) => f.properties.duplicate).length;
    const text = caption(asset);
    body.replaceChildren(
      ...[
        h(
          "div",
          { class: "asset-top" },
          h(
            "div",
            { class: "asset-picture" },
            figure,
            layer
              ? h(
                  "p",
                  { class: "toggle" },
                  toggle,
                  h("label", { for: "show-duplicates" }, ` Show duplicates (${duplicates} box${duplicates === 1 ? "" : "es"} also found by an overlapping tile)`),
                )
              : null,
          ),
          h(
            "div",
            { class: "asset-facts" },
            h("p", { class: "caption", id: "asset-caption" }, text || "No caption yet."),
            h(
              "dl",
              { class: "facts" },
              h("dt", {}, "Status"),
              h("dd", {}, badge(asset.status)),
              h("dt", {}, "Kind"),
              h("dd", {}, `${asset.kind || "?"} (${asset.media_format || "?"}${asset.width ? `, ${asset.width}×${asset.height}` : ""})`),
              h("dt", {}, "Registered"),
              h("dd", {}, time(asset.created_at)),
              asset.start_time ? [h("dt", {}, "Recorded"), h("dd", {}, time(asset.start_time), asset.duration_s ? ` for ${asset.duration_s.toFixed(1)} s` : "")] : null,
              h("dt", {}, "Place"),
              h("dd", {}, asset.bbox ? degrees(asset.bbox) : "not georeferenced"),
              h("dt", {}, "Found"),
              h("dd", {}, counts.length ? counts.map(([n, c]) => `${c} ${n}`).join(", ") : "nothing located"),
            ),
            asset.bbox
              ? h("p", { class: "links" }, h("a", { href: `?view=map&bbox=${asset.bbox.join(",")}` }, "On the map"))
              : null,
          ),
        ),
        strip(asset, selection, choose),
        h("section", { class: "panel" }, h("h3", {}, "Boxes"), boxTable(asset, selection)),
        answers(asset, selection),
        errorsPanel(asset),
        alertsPanel(alerts),
      ].filter(Boolean),
    );
  }

  async function refresh() {
    const [fresh, found] = await Promise.all([
      assetDetail(assetId),
      call("alerts", { asset_id: assetId, limit: 50 }).catch(() => ({ alerts: [] })),
    ]);
    if (fresh) asset = fresh;
    alerts = found.alerts;
    header.replaceChildren(h("h2", { id: "view-title" }, asset.object_key.split("/").pop()), " ", badge(asset.status));
    draw();
  }

  const header = h("div", { class: "asset-header" });
  root.replaceChildren(
    h(
      "section",
      { "aria-labelledby": "view-title", class: "asset", dataset: { assetId } },
      h("p", { class: "back" }, h("a", { href: "?view=list" }, "← All assets")),
      header,
      h("p", { class: "muted key" }, asset.object_key),
      body,
      ask,
    ),
  );
  await refresh();
  return {
    onEvent(event) {
      const id = event.data && (event.data.asset_id || (event.data.data && event.data.data.asset_id));
      if (id !== assetId) return;
      if (event.event === "asset.finished") forgetPreview(assetId);
      refresh().catch(() => {});
    },
  };
}
