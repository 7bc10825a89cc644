// A real gateway process for one test file: started with `--listen 127.0.0.1:0` and a fresh
// temporary data directory, its address read from its first stdout line (`listening on ADDR`),
// stopped by PID (SIGTERM, a bounded wait, then SIGKILL) and always reaped.
//
// The binary is `$DIMINUENDO_BIN`, else `<repo>/target/debug/diminuendo-tokio` (scripts/test
// runs the suite once per binary).
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

export const packageDir = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const repoDir = resolve(packageDir, "..", "..");

const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;

export function binaryPath() {
  return process.env.DIMINUENDO_BIN ?? join(repoDir, "target", "debug", "diminuendo-tokio");
}

// The SDK's example agent from this package's own install (scripts/test runs `npm ci` here).
export const tsAgentPath = join(
  packageDir,
  "node_modules",
  "@agentclientprotocol",
  "sdk",
  "dist",
  "examples",
  "agent.js",
);

// `--agent ts=node <agent.js>`, as tests/tests/gateway/real_agent.rs configures it.
export const TS_AGENT_ARGS = ["--agent", `ts=${process.execPath} ${tsAgentPath}`];

export class Gateway {
  constructor(child, dir, addr, log) {
    this.child = child;
    this.dir = dir;
    this.addr = addr;
    this.logChunks = log;
    this.exited = new Promise((resolveExit) => {
      if (child.exitCode !== null || child.signalCode !== null) {
        resolveExit({ code: child.exitCode, signal: child.signalCode });
        return;
      }
      child.once("exit", (code, signal) => resolveExit({ code, signal }));
    });
  }

  get pid() {
    return this.child.pid;
  }

  url(path = "/acp") {
    return `ws://${this.addr}${path}`;
  }

  httpUrl(path) {
    return `http://${this.addr}${path}`;
  }

  log() {
    return Buffer.concat(this.logChunks).toString("utf8");
  }

  /** Whether the process is still running (it must be after every bad input). */
  alive() {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Stops the process but keeps its directory for a successor (`startGateway(args, env, dir)`). */
  async stopKeepingData() {
    this.keepDir = true;
    await this.stop();
    return this.dir;
  }

  async stop() {
    if (this.alive()) {
      this.child.kill("SIGTERM");
      const timer = setTimeout(() => {
        if (this.alive()) this.child.kill("SIGKILL");
      }, STOP_TIMEOUT_MS);
      await this.exited;
      clearTimeout(timer);
    } else {
      await this.exited;
    }
    if (!this.keepDir) rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Starts the gateway with `args` (e.g. `["--dev"]`). The test's own `DIMINUENDO_*` variables
 * are not passed on (they are settings' fallbacks), except those in `env`. `reuseDir`: the
 * directory of a stopped predecessor (`stopKeepingData`), whose data it takes over.
 */
export async function startGateway(args, env = {}, reuseDir = undefined) {
  const binary = binaryPath();
  if (!existsSync(binary)) {
    throw new Error(`gateway binary ${binary} not found (build it, or set DIMINUENDO_BIN)`);
  }
  const dir = reuseDir ?? mkdtempSync(join(tmpdir(), "diminuendo-acp-test-"));
  const childEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith("DIMINUENDO_")) childEnv[key] = value;
  }
  Object.assign(childEnv, env);
  const child = spawn(
    binary,
    ["--listen", "127.0.0.1:0", "--data-dir", join(dir, "data"), ...args],
    { cwd: dir, env: childEnv, stdio: ["ignore", "pipe", "pipe"] },
  );
  // Should the test process end without its after hooks (an uncaught error, the runner's
  // timeout), the gateway still does not outlive it.
  const reap = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  };
  process.once("exit", reap);
  child.once("exit", () => process.off("exit", reap));
  const log = [];
  child.stderr.on("data", (chunk) => log.push(chunk));
  const lines = createInterface({ input: child.stdout });
  const first = await new Promise((resolveLine, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`${binary} printed no line in ${START_TIMEOUT_MS} ms`));
    }, START_TIMEOUT_MS);
    lines.once("line", (line) => {
      clearTimeout(timer);
      resolveLine(line);
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(
        new Error(
          `${binary} exited (${code ?? signal}) before listening:\n${Buffer.concat(log).toString()}`,
        ),
      );
    });
    child.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
  lines.on("line", (line) => log.push(Buffer.from(`[stdout] ${line}\n`)));
  const match = /^listening on (\S+)$/.exec(first.trim());
  if (!match) {
    child.kill("SIGKILL");
    throw new Error(`${binary}: unexpected first line ${JSON.stringify(first)}`);
  }
  return new Gateway(child, dir, match[1], log);
}
