// The dashboard: sign-in, the search bar, the views (list, map, asset, alerts) chosen by the
// URL's query string, and the live feed that keeps them current.

import { alertsView } from "./alerts.js";
import { check, follow, setToken, token, whenUnauthorized } from "./api.js";
import { assetView } from "./asset.js";
import { h } from "./dom.js";
import { listView } from "./list.js";
import { mapView } from "./map.js";
import { FILTERS, filtersOf, isoToLocal, localToIso } from "./search.js";

const $ = (selector) => document.querySelector(selector);
const VIEWS = new Set(["list", "map", "asset", "alerts"]);

let feed = null;
let current = null; // the shown view's {onEvent, stop}
let rendering = 0; // which render is the latest (an older one finishing late is dropped)
let unseenAlerts = 0;
let config = { tile_url: null };

function params() {
  return new URLSearchParams(window.location.search);
}

function viewOf(p) {
  const view = p.get("view") || (p.get("id") ? "asset" : "list");
  return VIEWS.has(view) ? view : "list";
}

/** Go to a query string (pushing a history entry unless `replace`), and show it. */
function navigate(search, { replace = false } = {}) {
  const target = search.startsWith("?") ? search : `?${search}`;
  if (replace) window.history.replaceState(null, "", target);
  else window.history.pushState(null, "", target);
  render();
}

function fillSearch(filters) {
  const form = $("#search");
  for (const name of FILTERS) {
    const field = form.elements[name];
    const value = filters[name] || "";
    field.value = name === "start" || name === "end" ? isoToLocal(value) : value;
  }
  if (!form.elements.mode.value) form.elements.mode.value = "text";
}

function searchQuery(view) {
  const form = $("#search");
  const out = new URLSearchParams();
  out.set("view", view === "map" ? "map" : "list");
  for (const name of FILTERS) {
    let value = form.elements[name].value.trim();
    if (name === "start" || name === "end") value = localToIso(value);
    if (name === "mode" && value === "text") continue;
    if (value) out.set(name, value);
  }
  return `?${out}`;
}

function markNav(view) {
  for (const link of document.querySelectorAll("#nav a")) {
    const here = link.dataset.view === view;
    if (here) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  // the nav keeps the search's filters when moving between the list and the map
  const filters = new URLSearchParams(params());
  filters.delete("view");
  filters.delete("id");
  const rest = filters.toString();
  $('#nav a[data-view="list"]').href = `?view=list${rest ? `&${rest}` : ""}`;
  $('#nav a[data-view="map"]').href = `?view=map${rest ? `&${rest}` : ""}`;
}

async function render() {
  const mine = ++rendering;
  current?.stop?.();
  current = null;
  const p = params();
  const view = viewOf(p);
  const filters = filtersOf(p);
  fillSearch(filters);
  markNav(view);
  if (view === "alerts") {
    unseenAlerts = 0;
    showBadge();
  }
  const root = $("#view");
  root.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  document.title = `SkyEye Stream: ${{ list: "assets", map: "map", asset: "asset", alerts: "alerts" }[view]}`;
  try {
    let made;
    if (view === "map") {
      made = await mapView(root, filters, config, {
        open: (id) => navigate(`?view=asset&id=${id}`),
        setArea: (bbox) => {
          $("#bbox").value = bbox;
          navigate(searchQuery("map"));
        },
      });
    } else if (view === "asset") made = await assetView(root, p.get("id"));
    else if (view === "alerts") made = await alertsView(root);
    else made = await listView(root, filters);
    if (mine !== rendering) made?.stop?.();
    else current = made;
  } catch (error) {
    if (mine !== rendering) return;
    root.replaceChildren(
      h("section", { role: "alert" }, h("h2", { id: "view-title" }, "Something went wrong"), h("p", { class: "error" }, error.message)),
    );
  }
}

function showBadge() {
  const badge = $("#alert-badge");
  badge.hidden = unseenAlerts === 0;
  badge.textContent = unseenAlerts ? `${unseenAlerts} new` : "";
}

/** A short note in the corner for an alert that just fired (kept until dismissed or 30 s). */
function toast(alert) {
  const data = alert.data || {};
  const close = h("button", { type: "button", class: "quiet", "aria-label": "Dismiss" }, "×");
  const evidence = (data.evidence || []).map((e) => e.text).join(", ");
  const note = h(
    "div",
    { class: "toast", dataset: { alertId: data.alert_id || "" } },
    h("p", {}, h("b", {}, `Alert: ${data.rule_name}`), ` on `, h("a", { href: `?view=asset&id=${data.asset_id}` }, data.object_key || data.asset_id)),
    evidence ? h("p", { class: "muted" }, evidence) : null,
    close,
  );
  close.addEventListener("click", () => note.remove());
  $("#toasts").prepend(note);
  setTimeout(() => note.remove(), 30000);
}

function onFeedEvent(event) {
  if (event.event === "alert") {
    toast(event.data);
    if (viewOf(params()) !== "alerts") {
      unseenAlerts += 1;
      showBadge();
    }
  }
  current?.onEvent?.(event);
}

function setLive(state) {
  const live = $("#live");
  live.dataset.state = state.startsWith("stopped") ? "stopped" : state;
  live.textContent = `Live feed: ${state}`;
}

function signedIn(on) {
  $("#signin").hidden = on;
  for (const id of ["#nav", "#search", "#sign-out", "#live"]) $(id).hidden = !on;
  $("#main").hidden = !on;
}

async function start() {
  signedIn(true);
  feed?.stop();
  feed = follow({ event: onFeedEvent, state: setLive });
  // the feed's start is fixed before the views read the catalog: nothing falls in between
  await feed.opened;
  render();
}

function signOut(message = "") {
  feed?.stop();
  feed = null;
  current?.stop?.();
  current = null;
  setToken(null);
  $("#view").replaceChildren();
  signedIn(false);
  $("#signin-error").textContent = message;
  $("#token").focus();
}

async function main() {
  config = await fetch("config.json", { headers: { Accept: "application/json" } })
    .then((r) => (r.ok ? r.json() : config))
    .catch(() => config);
  whenUnauthorized((error) => signOut(`Signed out: ${error.message}`));

  $("#signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const candidate = $("#token").value.trim();
    const refused = await check(candidate);
    if (refused) {
      $("#signin-error").textContent = refused;
      return;
    }
    setToken(candidate);
    $("#token").value = "";
    $("#signin-error").textContent = "";
    await start();
    $("#main").focus();
  });
  $("#sign-out").addEventListener("click", () => signOut("Signed out."));
  $("#search").addEventListener("submit", (event) => {
    event.preventDefault();
    navigate(searchQuery(viewOf(params())));
  });
  $("#clear").addEventListener("click", () => {
    $("#search").reset();
    navigate(`?view=${viewOf(params()) === "map" ? "map" : "list"}`);
  });
  // links within the page change the view without reloading it (the feed stays connected)
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[href^='?']");
    if (!link || event.defaultPrevented || event.button !== 0) return;
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    navigate(link.getAttribute("href"));
    $("#main").focus({ preventScroll: false });
  });
  window.addEventListener("popstate", render);

  if (token()) await start();
  else signOut();
}

main();
