// The live asset list: newest first, each with its preview, caption, counts and status; the
// status follows the live feed, and new assets appear at the top while no search narrows it.

import { forgetPreview, previewUrl } from "./api.js";
import { answerText, badge, h, statusWord, time } from "./dom.js";
import { assetDetail, describe, findAssets, narrowed } from "./search.js";

const UNFINISHED = new Set(["queued", "processing"]);
// while an asset is unfinished its card is re-read this often: the feed says when an asset
// arrives and when it finishes, the steps between (planned, finishing) only the catalog knows
const REFRESH_MS = 2000;

/** The caption of an asset: its whole-asset caption first (the detail lists those first). */
export function caption(asset) {
  const found = asset.results.find((r) => r.task_kind === "caption" && r.answer);
  return found ? answerText(found) : "";
}

/** Kept detections per class, most first. */
export function classCounts(asset) {
  const counts = new Map();
  for (const feature of asset.detections.features) {
    if (feature.properties.duplicate) continue;
    const name = feature.properties.label;
    counts.set(name, (counts.get(name) || 0) + 1);
  }
  return [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
}

function fileName(key) {
  return key.split("/").pop() || key;
}

function thumbnail(asset) {
  const link = h("a", { href: `?view=asset&id=${asset.asset_id}`, class: "thumb", tabindex: "-1", "aria-hidden": "true" });
  if (!asset.preview) {
    link.append(h("span", { class: "no-preview" }, statusWord(asset.status) === "error" ? "no preview" : "preview when done"));
    return link;
  }
  const img = h("img", { alt: "", width: asset.width || undefined, height: asset.height || undefined });
  previewUrl(asset.asset_id)
    .then((src) => {
      img.src = src;
    })
    .catch(() => link.replaceChildren(h("span", { class: "no-preview" }, "preview unavailable")));
  link.append(img);
  return link;
}

/** One asset's card. */
export function card(asset) {
  const counts = classCounts(asset);
  const text = caption(asset);
  const titleId = `title-${asset.asset_id}`;
  const errors = asset.errors.length;
  return h(
    "article",
    { class: "card", dataset: { assetId: asset.asset_id }, "aria-labelledby": titleId },
    thumbnail(asset),
    h(
      "div",
      { class: "card-body" },
      h(
        "h3",
        { id: titleId },
        h("a", { href: `?view=asset&id=${asset.asset_id}`, title: asset.object_key }, fileName(asset.object_key)),
      ),
      h("p", { class: "meta" }, badge(asset.status), ` ${asset.kind || "asset"}`, asset.width ? ` · ${asset.width}×${asset.height}` : "", " · ", time(asset.created_at)),
      text ? h("p", { class: "caption" }, text) : h("p", { class: "caption muted" }, "no caption yet"),
      h(
        "ul",
        { class: "counts", "aria-label": "counts" },
        counts.map(([name, n]) => h("li", { class: "count" }, `${n} ${name}`)),
        h("li", {}, `${asset.results.length} results`),
        h("li", {}, `${asset.work_items.length} ${asset.kind === "clip" ? "work items" : "tiles"}`),
        errors ? h("li", { class: "error" }, `${errors} error${errors > 1 ? "s" : ""}`) : null,
      ),
      asset.matches.length
        ? h(
            "ul",
            { class: "matches", "aria-label": "what matched" },
            asset.matches.slice(0, 2).map((r) => h("li", {}, h("b", {}, `${r.task_kind}: `), answerText(r))),
          )
        : null,
    ),
  );
}

/** The list view; returns its live-event handler and its cleanup. */
export async function listView(root, filters) {
  const searching = narrowed(filters);
  const heading = h("h2", { id: "view-title" }, searching ? "Search results" : "Assets, newest first");
  const summary = h("p", { class: "summary", id: "summary" }, "Loading…");
  const notice = h("p", { class: "notice", role: "status", "aria-live": "polite" });
  const cards = h("div", { class: "cards", id: "cards" });
  root.replaceChildren(h("section", { "aria-labelledby": "view-title" }, heading, summary, notice, cards));

  const assets = await findAssets(filters);
  const shown = new Map();
  function put(asset, atTop) {
    const made = card(asset);
    const old = shown.get(asset.asset_id);
    shown.set(asset.asset_id, { asset, el: made });
    if (old) old.el.replaceWith(made);
    else if (atTop) cards.prepend(made);
    else cards.append(made);
    count();
  }
  function count() {
    const n = shown.size;
    summary.textContent = searching
      ? `${n} asset${n === 1 ? "" : "s"} for ${describe(filters)}`
      : `${n} asset${n === 1 ? "" : "s"}; new ones appear here as they arrive`;
    if (!n) {
      cards.replaceChildren(
        h("p", { class: "empty", id: "empty" }, searching ? "No assets match this search." : "No assets yet: put an object in the bucket."),
      );
    } else cards.querySelector("#empty")?.remove();
  }
  for (const asset of assets) put(asset, false);
  count();

  async function reread(assetId, atTop) {
    const asset = await assetDetail(assetId);
    if (!asset) return;
    asset.matches = shown.get(assetId)?.asset.matches || [];
    put(asset, atTop);
  }

  const timer = setInterval(() => {
    for (const { asset } of shown.values()) {
      if (UNFINISHED.has(statusWord(asset.status))) reread(asset.asset_id, false).catch(() => {});
    }
  }, REFRESH_MS);

  let unseen = 0;
  return {
    onEvent(event) {
      const id = event.data && event.data.asset_id;
      if (!id || (event.event !== "asset.registered" && event.event !== "asset.finished")) return;
      if (event.event === "asset.finished") forgetPreview(id);
      if (shown.has(id)) reread(id, false).catch(() => {});
      else if (!searching) reread(id, true).catch(() => {});
      else if (event.event === "asset.registered") {
        unseen += 1;
        notice.replaceChildren(
          `${unseen} new asset${unseen === 1 ? "" : "s"} arrived since this search ran. `,
          h("a", { href: window.location.search || "?" }, "Search again"),
        );
      }
    },
    stop() {
      clearInterval(timer);
    },
  };
}
