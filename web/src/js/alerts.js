// Rules, recent alerts with their evidence, and how each webhook delivery went.

import { call } from "./api.js";
import { degrees, h, time } from "./dom.js";

// how often the view looks again while a webhook delivery is still going on
const RECHECK_MS = 2000;
const FRESH_MS = 60000;

function condition(rule) {
  const c = rule.condition;
  if (c.kind === "detection") return `at least ${c.min_count} × “${c.phrase}”`;
  if (c.kind === "text") return `text matches “${c.query}”`;
  if (c.kind === "ask") return `asks “${c.question}”, fires on ${c.fires_on}`;
  return c.kind;
}

function scope(rule) {
  const parts = [];
  parts.push(rule.bbox ? `in ${degrees(rule.bbox)}` : rule.area ? "in its area" : "anywhere");
  if (rule.start || rule.end) parts.push(`${rule.start || "…"} to ${rule.end || "…"}`);
  if (rule.asset_kind) parts.push(`${rule.asset_kind}s`);
  return parts.join(", ");
}

function endpointState(webhook) {
  if (webhook.disabled) return `disabled: ${webhook.disabled_why || "too many failures"}`;
  if (webhook.failures) return `${webhook.failures} failure${webhook.failures > 1 ? "s" : ""} in a row`;
  return "healthy";
}

function deliveryRow(d) {
  const outcome =
    d.status === "delivered"
      ? `delivered ${d.finished_at ? new Date(d.finished_at).toLocaleTimeString() : ""}`
      : d.status === "pending"
        ? `retrying${d.next_attempt_at ? ` at ${new Date(d.next_attempt_at).toLocaleTimeString()}` : ""}`
        : `failed${d.last_error ? `: ${d.last_error}` : ""}`;
  return h(
    "tr",
    { dataset: { deliveryStatus: d.status, alertId: d.alert_id } },
    h("td", {}, h("span", { class: `delivery delivery-${d.status}` }, d.status)),
    h("td", { class: "url" }, d.url),
    h("td", {}, String(d.attempts)),
    h("td", {}, d.last_status_code ?? "—"),
    h("td", {}, outcome),
  );
}

function rulesPanel(rules, deliveries) {
  if (!rules.length) return h("p", { class: "muted" }, "No rules. Create one with `skyeye rules create` or POST /rules.");
  return h(
    "ul",
    { class: "rules" },
    rules.map((rule) => {
      const log = deliveries.get(rule.name) || [];
      return h(
        "li",
        { class: "rule", dataset: { rule: rule.name } },
        h("h4", {}, rule.name),
        h("p", {}, `${condition(rule)}; ${scope(rule)}`),
        rule.webhooks.length
          ? h(
              "ul",
              { class: "plain webhooks", "aria-label": "webhooks" },
              rule.webhooks.map((w) => h("li", {}, h("span", { class: "url" }, w.url), ` — ${endpointState(w)}`)),
            )
          : h("p", { class: "muted" }, "No webhooks: its alerts go to the feed and the alerts topic."),
        log.length
          ? h(
              "table",
              { class: "table" },
              h("caption", {}, "Latest webhook deliveries"),
              h("thead", {}, h("tr", {}, ["Status", "Endpoint", "Tries", "Last code", "Outcome"].map((t) => h("th", { scope: "col" }, t)))),
              h("tbody", {}, log.slice(0, 10).map(deliveryRow)),
            )
          : null,
      );
    }),
  );
}

function alertItem(alert) {
  const webhooks = alert.deliveries ? `webhooks: ${alert.delivered} of ${alert.deliveries} delivered` : "no webhooks";
  return h(
    "li",
    { class: "alert", dataset: { alertId: alert.alert_id, assetId: alert.asset_id } },
    h("p", {}, h("b", {}, alert.rule_name), " fired on ", h("a", { href: `?view=asset&id=${alert.asset_id}` }, alert.object_key), " ", time(alert.created_at)),
    h(
      "ul",
      { class: "evidence", "aria-label": "evidence" },
      alert.evidence.map((e) =>
        h(
          "li",
          {},
          `${e.task_kind} on ${e.item_kind}${e.tile_index >= 0 ? ` ${e.tile_index}` : ""}: ${e.text}`,
          e.pixel_box ? ` [${e.pixel_box.map((v) => Math.round(v)).join(", ")}]` : "",
          e.lon_lat_bbox ? ` at ${degrees(e.lon_lat_bbox)}` : "",
        ),
      ),
    ),
    h("p", { class: "muted" }, webhooks),
  );
}

/** The alerts view; returns its live-event handler. */
export async function alertsView(root) {
  const rulesBox = h("div", {});
  const list = h("ol", { class: "alerts", id: "alert-list", reversed: true });
  root.replaceChildren(
    h(
      "section",
      { "aria-labelledby": "view-title" },
      h("h2", { id: "view-title" }, "Alerts"),
      h("div", { class: "two" }, h("section", { "aria-labelledby": "recent-title" }, h("h3", { id: "recent-title" }, "Recent alerts"), list), h("section", { "aria-labelledby": "rules-title" }, h("h3", { id: "rules-title" }, "Rules and webhooks"), rulesBox)),
    ),
  );

  async function load() {
    const [{ rules }, { alerts }] = await Promise.all([call("rules"), call("alerts", { limit: 50 })]);
    const deliveries = new Map();
    await Promise.all(
      rules
        .filter((r) => r.webhooks.length)
        .map(async (r) => {
          try {
            deliveries.set(r.name, (await call(`rules/${encodeURIComponent(r.name)}/deliveries`, { limit: 20 })).deliveries);
          } catch {
            deliveries.set(r.name, []);
          }
        }),
    );
    rulesBox.replaceChildren(rulesPanel(rules, deliveries));
    // a delivery being retried changes without an event: look again while one is pending
    const pendingNow = [...deliveries.values()].some((log) => log.some((d) => d.status === "pending"));
    // and while a fresh alert of a rule with webhooks has no delivery yet (the sender is behind)
    const hooked = new Set(rules.filter((r) => r.webhooks.length).map((r) => r.name));
    const waiting = alerts.some(
      (a) => hooked.has(a.rule_name) && a.deliveries === 0 && Date.now() - Date.parse(a.created_at) < FRESH_MS,
    );
    clearTimeout(again);
    if (!stopped && (pendingNow || waiting)) again = setTimeout(() => load().catch(() => {}), RECHECK_MS);
    list.replaceChildren(...(alerts.length ? alerts.map(alertItem) : [h("li", { class: "muted" }, "No alert has fired yet.")]));
  }
  let again = null;
  let stopped = false;
  await load();
  let pending = null;
  return {
    onEvent(event) {
      if (event.event !== "alert" && event.event !== "asset.finished") return;
      // a burst of events reloads once
      clearTimeout(pending);
      pending = setTimeout(() => load().catch(() => {}), 300);
    },
    stop() {
      stopped = true;
      clearTimeout(pending);
      clearTimeout(again);
    },
  };
}
