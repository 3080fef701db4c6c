// `node --import ./tests/js/register.mjs --test tests/js/`: lets Node resolve the dashboard's
// bare module names ("run-state", "figures", ...) the way the browser does, through the
// import map of frontend/index.html, so the tests run the modules exactly as served.
import { register } from "node:module";

register("./import-map-hook.mjs", import.meta.url);
