// Copies the dashboard's files and Leaflet's built files (from node_modules, installed by
// `npm ci`) into the folder the API serves at /ui/static/. No bundler: the page's scripts are
// plain ES modules, and Leaflet ships its own minified build.
import { cpSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "services", "api", "dashboard_static");
const leaflet = join(here, "node_modules", "leaflet", "dist");

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
cpSync(join(here, "src"), out, { recursive: true });
for (const name of ["leaflet.js", "leaflet.css", "images"]) {
  cpSync(join(leaflet, name), join(out, "vendor", "leaflet", name), { recursive: true });
}
// what `make` compares against the sources to know the build is current
writeFileSync(join(out, ".built"), `${new Date().toISOString()}\n`);
console.log(`dashboard built in ${out}`);
