#!/usr/bin/env node
// Build a TypeScript plugin into a component.
//
//   node plugins/sdk-ts/build.mjs <plugin dir> <out.wasm>
//   node plugins/sdk-ts/build.mjs --test <plugin dir>
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
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
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

// `--test <plugin dir>`: bundle the plugin's test/*.test.ts for Node and
// run them with `node --test`, the host's interfaces answered by the fakes
// of testing/ (testing/host.mjs: `fakeHost()` records calls, sets rows,
// errors and settings). `--test plugins/sdk-ts` runs the SDK's own.
if (process.argv[2] === "--test") {
  const dir = resolve(process.argv[3] ?? fail("usage: node plugins/sdk-ts/build.mjs --test <plugin dir>"));
  const testDir = join(dir, "test");
  const tests = existsSync(testDir) ? readdirSync(testDir).filter((f) => f.endsWith(".test.ts")) : [];
  if (tests.length === 0) fail(`${dir}: no test/*.test.ts to run`);
  const outDir = mkdtempSync(join(tmpdir(), "switchyard-ts-test-"));
  const bundles = tests.map((t) => {
    const out = join(outDir, t.replace(/\.ts$/, ".mjs"));
    execFileSync(
      bin("esbuild"),
      [
        join(testDir, t),
        "--bundle",
        "--format=esm",
        "--platform=node",
        "--target=node20",
        "--external:switchyard:*",
        `--alias:@switchyard/plugin=${join(sdk, "src", "index.ts")}`,
        `--outfile=${out}`,
        "--log-level=warning",
      ],
      { stdio: "inherit" },
    );
    return out;
  });
  try {
    // The host's interfaces resolve to testing/'s fakes.
    execFileSync(process.execPath, ["--import", join(sdk, "testing", "register.mjs"), "--test", ...bundles], {
      stdio: "inherit",
    });
  } catch {
    fail(`tests failed in ${dir}`);
  } finally {
    rmSync(outDir, { recursive: true, force: true });
  }
  process.exit(0);
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
// Written under a temporary name and renamed: a failed build leaves no
// newer, broken component behind.
const partial = `${out}.partial`;
times.componentize = run("componentize-js", bin("componentize-js"), [
  bundle,
  "--wit",
  wit,
  "--world-name",
  "plugin",
  "-o",
  partial,
  "-d",
  "http",
  "fetch-event",
]);
renameSync(partial, out);
const size = statSync(out).size;
console.error(
  `built ${out} (${(size / 1048576).toFixed(1)} MiB): ` +
    Object.entries(times)
      .map(([k, v]) => `${k} ${(v / 1000).toFixed(1)} s`)
      .join(", "),
);
