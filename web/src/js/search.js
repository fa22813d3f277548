// The search filters: read from and written to the page's URL (shareable), turned into API
// parameters, and the assets they find.

import { call } from "./api.js";

export const FILTERS = ["q", "mode", "bbox", "start", "end", "label", "kind"];

/** The filters in a URL query (only those set). */
export function filtersOf(params) {
  const out = {};
  for (const name of FILTERS) {
    const value = (params.get(name) || "").trim();
    if (value) out[name] = value;
  }
  if (out.mode === "text") delete out.mode;
  return out;
}

/** Whether any filter narrows the list (a search, not the live list of everything). */
export function narrowed(filters) {
  return FILTERS.some((name) => name !== "mode" && filters[name]);
}

/** A datetime-local field's value ("2026-01-02T03:04") as an RFC 3339 instant in UTC. */
export function localToIso(value) {
  if (!value) return "";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? "" : date.toISOString();
}

/** An RFC 3339 instant as a datetime-local field's value, in this browser's time zone. */
export function isoToLocal(value) {
  if (!value) return "";
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}` +
    `T${pad(date.getHours())}:${pad(date.getMinutes())}`
  );
}

/** The lon/lat box of a filter ("W,S,E,N"), or null. */
export function parseBbox(text) {
  if (!text) return null;
  const parts = text.split(",").map((p) => Number(p.trim()));
  return parts.length === 4 && parts.every(Number.isFinite) ? parts : null;
}

/** The filters as the API's parameters (bbox, datetime, label, asset_kind). */
export function apiParams(filters) {
  const out = {};
  if (filters.bbox) out.bbox = filters.bbox.replace(/\s+/g, "");
  if (filters.start || filters.end) out.datetime = `${filters.start || ".."}/${filters.end || ".."}`;
  if (filters.label) out.label = filters.label;
  if (filters.kind) out.asset_kind = filters.kind;
  return out;
}

/** A few words saying what the filters ask for. */
export function describe(filters) {
  const words = [];
  if (filters.q) words.push(`“${filters.q}” (${filters.mode || "text"})`);
  if (filters.bbox) words.push(`in ${filters.bbox}`);
  if (filters.start || filters.end) {
    words.push(`from ${filters.start ? new Date(filters.start).toLocaleString() : "the start"}`);
    words.push(`to ${filters.end ? new Date(filters.end).toLocaleString() : "now"}`);
  }
  if (filters.label) words.push(`class ${filters.label}`);
  if (filters.kind) words.push(`${filters.kind}s only`);
  return words.join(", ");
}

async function eachLimited(items, limit, work) {
  const out = new Array(items.length);
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const index = next++;
      out[index] = await work(items[index]);
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** One asset's detail (GET /assets/{id}); null when it is gone. */
export async function assetDetail(assetId) {
  try {
    return await call(`assets/${assetId}`);
  } catch (error) {
    if (error.status === 404) return null;
    throw error;
  }
}

/**
 * The assets the filters find, newest first (best match first with words), each as its
 * detail, with `matches`: the results (captions, answers) the words matched.
 *
 * Words search GET /results (text, meaning or both), a class keeping the assets
 * /collections/assets/items finds with it; without words that endpoint lists assets by place,
 * time, class and kind.
 */
export async function findAssets(filters, limit = 24) {
  const matches = new Map();
  let ids;
  if (filters.q) {
    // a class narrows assets (one of its detections), not results: /results would keep only
    // the grounding answers that found it, never the caption the words matched
    const { label, ...rest } = apiParams(filters);
    const [page, classed] = await Promise.all([
      call("results", { q: filters.q, mode: filters.mode || "text", ...rest, limit: 200 }),
      label ? call("collections/assets/items", { ...rest, label, limit: 1000 }) : null,
    ]);
    const allowed = classed ? new Set(classed.features.map((item) => item.id)) : null;
    for (const result of page.results) {
      if (allowed && !allowed.has(result.asset_id)) continue;
      if (!matches.has(result.asset_id)) matches.set(result.asset_id, []);
      matches.get(result.asset_id).push(result);
    }
    ids = [...matches.keys()].slice(0, limit);
  } else {
    const page = await call("collections/assets/items", { ...apiParams(filters), limit });
    ids = page.features.map((item) => item.id);
  }
  const details = await eachLimited(ids, 6, assetDetail);
  return details.filter(Boolean).map((asset) => ({ ...asset, matches: matches.get(asset.asset_id) || [] }));
}
