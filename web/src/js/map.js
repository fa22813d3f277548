// The map: the found assets' footprints, their detections and previews (lon/lat), on a plain
// background unless a tile URL is configured; a drawn or typed box becomes the search's area.

import { previewUrl } from "./api.js";
import { badge, h } from "./dom.js";
import { describe, findAssets, narrowed, parseBbox } from "./search.js";

const L = window.L;

function bounds(box) {
  const [w, s, e, n] = box;
  return L.latLngBounds([s, w], [n, e]);
}

/** The map view; `setArea(text)` runs the search with a new area. Returns its event handler. */
export async function mapView(root, filters, config, { open, setArea }) {
  const status = h("p", { class: "summary", id: "summary", role: "status" }, "Loading…");
  const draw = h("button", { type: "button", id: "draw-area", "aria-pressed": "false" }, "Draw an area");
  const showPreviews = h("input", { type: "checkbox", id: "show-previews", checked: true });
  const showDetections = h("input", { type: "checkbox", id: "show-detections", checked: true });
  const canvas = h("div", { id: "map", class: "map", role: "region", "aria-label": "Map of the found assets" });
  const unplaced = h("ul", { class: "plain unplaced", id: "map-list", "aria-label": "Assets found" });
  root.replaceChildren(
    h(
      "section",
      { "aria-labelledby": "view-title" },
      h("h2", { id: "view-title" }, "Map"),
      status,
      h(
        "div",
        { class: "map-tools" },
        draw,
        h("span", { class: "toggle" }, showPreviews, h("label", { for: "show-previews" }, " Previews")),
        h("span", { class: "toggle" }, showDetections, h("label", { for: "show-detections" }, " Detections")),
        config.tile_url ? null : h("span", { class: "muted" }, "No base map is configured: footprints on a plain background."),
      ),
      canvas,
      h("h3", {}, "Assets found"),
      unplaced,
    ),
  );

  const map = L.map(canvas, { attributionControl: Boolean(config.tile_url), worldCopyJump: true, keyboard: true }).setView([20, 0], 2);
  if (config.tile_url) L.tileLayer(config.tile_url, { maxZoom: 19, attribution: "base map" }).addTo(map);
  // previews lie under the footprints and boxes (the overlay pane is at z-index 400)
  map.createPane("previews").style.zIndex = "350";
  const previews = L.layerGroup().addTo(map);
  const footprints = L.featureGroup().addTo(map);
  const detections = L.layerGroup().addTo(map);
  const area = parseBbox(filters.bbox);
  if (area) L.rectangle(bounds(area), { className: "search-area", interactive: false, fill: false }).addTo(map);

  const assets = await findAssets(filters, 100);
  let placed = 0;
  for (const asset of assets) {
    unplaced.append(
      h("li", {}, h("a", { href: `?view=asset&id=${asset.asset_id}` }, asset.object_key), " ", badge(asset.status), asset.bbox ? "" : h("span", { class: "muted" }, " (no place)")),
    );
    if (!asset.item || !asset.item.geometry) continue;
    placed += 1;
    const footprint = L.geoJSON(asset.item.geometry, { style: { className: `footprint footprint-${asset.asset_id}` } });
    footprint.bindTooltip(asset.object_key);
    footprint.on("click", () => open(asset.asset_id));
    footprints.addLayer(footprint);
    if (asset.preview && asset.bbox && asset.bbox[0] <= asset.bbox[2]) {
      previewUrl(asset.asset_id)
        .then((src) => previews.addLayer(L.imageOverlay(src, bounds(asset.bbox), { opacity: 0.9, pane: "previews", alt: "" })))
        .catch(() => {});
    }
    const label = (filters.label || "").toLowerCase();
    for (const feature of asset.detections.features) {
      if (!feature.geometry || feature.properties.duplicate) continue;
      if (label && feature.properties.label.toLowerCase() !== label) continue;
      const box = L.geoJSON(feature.geometry, { style: { className: "detection" } });
      box.bindTooltip(feature.properties.label);
      box.on("click", () => open(asset.asset_id));
      detections.addLayer(box);
    }
  }
  const found = narrowed(filters) ? ` for ${describe(filters)}` : "";
  status.textContent = `${assets.length} asset${assets.length === 1 ? "" : "s"}${found}; ${placed} on the map.`;
  if (placed) map.fitBounds(footprints.getBounds(), { padding: [24, 24], maxZoom: 16 });
  else if (area) map.fitBounds(bounds(area));

  showPreviews.addEventListener("change", () => (showPreviews.checked ? previews.addTo(map) : previews.remove()));
  showDetections.addEventListener("change", () => (showDetections.checked ? detections.addTo(map) : detections.remove()));

  // drawing an area: press, drag, release; the map does not pan meanwhile
  let drawing = false;
  let corner = null;
  let rectangle = null;
  function stopDrawing() {
    drawing = false;
    corner = null;
    draw.setAttribute("aria-pressed", "false");
    canvas.classList.remove("drawing");
    map.dragging.enable();
  }
  draw.addEventListener("click", () => {
    if (drawing) return stopDrawing();
    drawing = true;
    draw.setAttribute("aria-pressed", "true");
    canvas.classList.add("drawing");
    map.dragging.disable();
  });
  map.on("mousedown", (event) => {
    if (!drawing) return;
    corner = event.latlng;
    rectangle?.remove();
    rectangle = L.rectangle(L.latLngBounds(corner, corner), { className: "search-area" }).addTo(map);
  });
  map.on("mousemove", (event) => {
    if (drawing && corner) rectangle.setBounds(L.latLngBounds(corner, event.latlng));
  });
  map.on("mouseup", (event) => {
    if (!drawing || !corner) return;
    const b = L.latLngBounds(corner, event.latlng);
    stopDrawing();
    const round = (v) => Number(v.toFixed(5));
    const west = round(L.Util.wrapNum(b.getWest(), [-180, 180], true));
    const east = round(L.Util.wrapNum(b.getEast(), [-180, 180], true));
    setArea([west, round(b.getSouth()), east, round(b.getNorth())].join(","));
  });

  // Leaflet measures its container when made: a view switch or a resize must be told
  const resize = () => map.invalidateSize();
  window.addEventListener("resize", resize);
  return {
    stop() {
      window.removeEventListener("resize", resize);
      map.remove();
    },
  };
}
