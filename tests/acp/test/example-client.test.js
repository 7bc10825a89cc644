// A real ACP client nobody here wrote: the SDK's own `dist/examples/ws-client.js`, run as-is
// with `ACP_WS_URL=ws://ADDR/acp` against a gateway in dev mode, completes a turn. (It sends
// `Authorization: Bearer example-token`, which dev mode ignores.)
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { startGateway, packageDir } from "../lib/gateway.js";
import { connectAcp, agentText } from "../lib/acp.js";

const EXAMPLE = join(packageDir, "node_modules", "@agentclientprotocol", "sdk", "dist", "examples", "ws-client.js");
const RUN_TIMEOUT_MS = 30_000;

let gateway;
before(async () => {
  gateway = await startGateway(["--dev"]);
});
after(async () => {
  await gateway?.stop();
});

function run(script, env) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script], {
      cwd: packageDir,
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const out = [];
    const err = [];
    child.stdout.on("data", (chunk) => out.push(chunk));
    child.stderr.on("data", (chunk) => err.push(chunk));
    const timer = setTimeout(() => child.kill("SIGKILL"), RUN_TIMEOUT_MS);
    child.once("error", reject);
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      resolve({
        code,
        signal,
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
      });
    });
  });
}

test("the SDK's ws-client example completes a turn against the gateway", async () => {
  const result = await run(EXAMPLE, { ACP_WS_URL: gateway.url("/acp") });
  const output = `exit ${result.code ?? result.signal}\nstdout:\n${result.stdout}\nstderr:\n${result.stderr}`;
  assert.equal(result.code, 0, output);
  assert.ok(result.stdout.includes("Hello over WebSocket"), output);
  assert.ok(result.stdout.includes("Done: end_turn"), output);
  assert.ok(result.stdout.includes("loadSession=true"), output);
  const saved = /Saved session (\S+);/.exec(result.stdout);
  assert.ok(saved, output);

  // The session it left behind persists: another client loads it with its turn.
  const client = connectAcp(gateway);
  await client.initialize();
  await client.conn.loadSession({ sessionId: saved[1], cwd: "/tmp", mcpServers: [] });
  const history = client.updates.filter((u) => u.sessionId === saved[1]);
  assert.equal(agentText(history), "Hello over WebSocket");
  await client.close();
});
