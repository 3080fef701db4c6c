// A Node resolve hook that reads the import map of frontend/index.html (the one list of the
// dashboard's module names) and maps each name to its file under frontend/.
import { readFileSync } from "node:fs";

const FRONTEND = new URL("../../frontend/", import.meta.url);
const STATIC = "/static/"; // where the dashboard serves frontend/ (backend/dashboard.py)

/** The import map's {name: url} from an HTML page's <script type="importmap">. */
export function importMap(html) {
  const found = html.match(/<script type="importmap">([\s\S]*?)<\/script>/);
  if (!found) throw new Error("frontend/index.html has no <script type=\"importmap\">");
  return JSON.parse(found[1]).imports;
}

/** The file URL of a module the page loads from ``url`` (a path under /static/). */
function fileOf(name, url) {
  if (!url.startsWith(STATIC)) throw new Error(`import map: ${name} -> ${url} is not under ${STATIC}`);
  return new URL(url.slice(STATIC.length), FRONTEND).href;
}

const MODULES = Object.fromEntries(
  Object.entries(importMap(readFileSync(new URL("index.html", FRONTEND), "utf8")))
    .map(([name, url]) => [name, fileOf(name, url)]));

/** Bare names of the import map resolve to frontend/ files, loaded as ES modules. */
export async function resolve(specifier, context, next) {
  if (Object.hasOwn(MODULES, specifier)) return { url: MODULES[specifier], format: "module", shortCircuit: true };
  const resolved = await next(specifier, context);
  // frontend/ has no package.json: its relative imports are ES modules too.
  return resolved.url.startsWith(FRONTEND.href) ? { ...resolved, format: "module" } : resolved;
}
