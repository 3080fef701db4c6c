// The dashboard's router: #/ experiments, #/new, #/experiments/<id>, #/compare?ids=a,b,
// #/sweeps, #/sweeps/<id>.
import { installDownloads } from "api";
import { fill, h } from "dom";
import * as compare from "./pages/compare.js";
import * as detail from "./pages/detail.js";
import * as list from "./pages/list.js";
import * as launch from "./pages/new.js";
import * as sweep from "./pages/sweep.js";
import * as sweeps from "./pages/sweeps.js";

const ROUTES = [
  [/^\/?$/, list, "experiments"],
  [/^\/new$/, launch, "new"],
  [/^\/experiments\/([\w-]+)$/, detail, "experiments"],
  [/^\/compare$/, compare, "experiments"],
  [/^\/sweeps$/, sweeps, "sweeps"],
  [/^\/sweeps\/([\w-]+)$/, sweep, "sweeps"],
];

let cleanup = null;

function route() {
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query);
  const app = document.getElementById("app");
  cleanup?.();
  cleanup = null;
  for (const [pattern, page, nav] of ROUTES) {
    const match = path.match(pattern);
    if (!match) continue;
    for (const a of document.querySelectorAll("nav a")) a.classList.toggle("current", a.dataset.nav === nav);
    fill(app, h("p.loading", {}, "Loading…"));
    cleanup = page.render(app, { id: match[1], params }) ?? null;
    return;
  }
  fill(app, h("div.card.empty-state", {}, h("h2", {}, "Page not found"), h("a", { href: "#/" }, "Back to the experiments")));
}

window.addEventListener("hashchange", route);
installDownloads();
route();
