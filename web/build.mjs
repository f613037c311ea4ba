// Bundles src/main.js (apache-arrow + Chart.js) into dist/assets/app.js and
// copies the page and stylesheet: dist/ is what the gateway serves (web.dir).
import { build } from "esbuild";
import { cpSync, mkdirSync, rmSync } from "node:fs";

rmSync("dist", { recursive: true, force: true });
mkdirSync("dist/assets", { recursive: true });
await build({
  entryPoints: ["src/main.js"],
  bundle: true,
  minify: true,
  sourcemap: true,
  format: "esm",
  target: ["es2022"],
  outfile: "dist/assets/app.js",
  logLevel: "warning",
});
cpSync("src/index.html", "dist/index.html");
cpSync("src/style.css", "dist/assets/style.css");
cpSync("src/favicon.svg", "dist/favicon.svg");
console.log("dashboard built into web/dist");
