#!/usr/bin/env node
// Build a TypeScript plugin into a component.
//
//   node plugins/sdk-ts/build.mjs <plugin dir> <out.wasm>
//
// 1. types: `jco guest-types` turns wit/plugin.wit into the .d.ts modules
//    (`switchyard:plugin/db@0.1.0`, ...) the SDK and plugins import; made
//    again whenever the WIT is newer;
// 2. check: `tsc` type-checks the plugin with its own tsconfig.json;
// 3. bundle: esbuild joins the plugin and the SDK into one ES module (the
//    world's imports stay imports);
// 4. componentize: componentize-js (SpiderMonkey) makes the component for
//    the `plugin` world. `-d http fetch-event`: the host links no wasi:http.
//
// Every tool is pinned in this directory's package.json; scripts/lib.sh
// installs them (npm ci).
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const sdk = dirname(fileURLToPath(import.meta.url));
const root = resolve(sdk, "../..");
const wit = join(root, "wit", "plugin.wit");
const bin = (name) => join(sdk, "node_modules", ".bin", name);

function fail(message) {
  console.error(`build.mjs: ${message}`);
  process.exit(1);
}

const [dirArg, outArg] = process.argv.slice(2);
if (!dirArg || !outArg) fail("usage: node plugins/sdk-ts/build.mjs <plugin dir> <out.wasm>");
const dir = resolve(dirArg);
const out = resolve(outArg);
if (!existsSync(bin("componentize-js"))) {
  fail(`the TypeScript toolchain is not installed: run \`npm ci --prefix ${sdk}\` (scripts/build-plugins does)`);
}
const manifest = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
const entry = join(dir, manifest.switchyard?.entry ?? "src/plugin.ts");
if (!existsSync(entry)) fail(`${dir}: no ${entry} (package.json "switchyard": {"entry": ...} names the plugin's main file)`);

function run(step, cmd, args) {
  const started = Date.now();
  try {
    execFileSync(cmd, args, { stdio: ["ignore", "inherit", "inherit"], cwd: dir });
  } catch {
    fail(`${step} failed for ${dir} (see above)`);
  }
  return Date.now() - started;
}

const types = join(sdk, "types");
const typesStamp = join(types, "plugin.d.ts");
const times = {};
if (!existsSync(typesStamp) || statSync(typesStamp).mtimeMs < statSync(wit).mtimeMs) {
  times.types = run("jco guest-types", bin("jco"), ["guest-types", wit, "--world-name", "plugin", "-o", types, "-q"]);
}
times.check = run("tsc", bin("tsc"), ["-p", join(dir, "tsconfig.json")]);
const bundle = join(dirname(out), `.${manifest.name}.bundle.js`);
mkdirSync(dirname(out), { recursive: true });
times.bundle = run("esbuild", bin("esbuild"), [
  entry,
  "--bundle",
  "--format=esm",
  "--platform=neutral",
  "--target=es2022",
  "--external:switchyard:*",
  `--alias:@switchyard/plugin=${join(sdk, "src", "index.ts")}`,
  `--outfile=${bundle}`,
  "--log-level=warning",
]);
times.componentize = run("componentize-js", bin("componentize-js"), [
  bundle,
  "--wit",
  wit,
  "--world-name",
  "plugin",
  "-o",
  out,
  "-d",
  "http",
  "fetch-event",
]);
const size = statSync(out).size;
console.error(
  `built ${out} (${(size / 1048576).toFixed(1)} MiB): ` +
    Object.entries(times)
      .map(([k, v]) => `${k} ${(v / 1000).toFixed(1)} s`)
      .join(", "),
);
