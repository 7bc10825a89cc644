// Builds the console into dist/ (index.html, app.js, app.css, favicon.svg): the files the
// gateway embeds (adapters/common/src/console.rs). `--check` builds into a temporary directory
// and fails when dist/ differs, so the committed assets always match their sources.
import { build } from "esbuild";
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL(".", import.meta.url));
const dist = join(root, "dist");
const check = process.argv.includes("--check");

async function buildInto(out) {
  await rm(out, { recursive: true, force: true });
  await mkdir(out, { recursive: true });
  const common = {
    bundle: true,
    minify: true,
    legalComments: "none",
    charset: "utf8",
    logLevel: "warning",
    absWorkingDir: root,
  };
  await build({
    ...common,
    entryPoints: ["src/main.ts"],
    outfile: join(out, "app.js"),
    format: "iife",
    target: "es2022",
    platform: "browser",
  });
  await build({
    ...common,
    entryPoints: ["src/app.css"],
    outfile: join(out, "app.css"),
  });
  await copyFile(join(root, "src/index.html"), join(out, "index.html"));
  await copyFile(join(root, "src/favicon.svg"), join(out, "favicon.svg"));
}

async function files(dir) {
  return (await readdir(dir)).sort();
}

if (check) {
  const temp = await mkdtemp(join(tmpdir(), "diminuendo-console-"));
  try {
    await buildInto(temp);
    const built = await files(temp);
    const committed = await files(dist).catch(() => []);
    const stale = [];
    for (const name of new Set([...built, ...committed])) {
      const a = await readFile(join(temp, name)).catch(() => null);
      const b = await readFile(join(dist, name)).catch(() => null);
      if (!a || !b || !a.equals(b)) stale.push(name);
    }
    if (stale.length > 0) {
      console.error(
        `console/dist is stale (${stale.join(", ")}): run \`npm run build\` in console/ and commit dist/`,
      );
      process.exitCode = 1;
    } else {
      console.log(`console/dist is up to date (${built.join(", ")})`);
    }
  } finally {
    await rm(temp, { recursive: true, force: true });
  }
} else {
  await buildInto(dist);
  console.log(`built ${(await files(dist)).join(", ")} into console/dist`);
}
