// An ACP client that only speaks ACP's stdio transport (as Zed does with its agents) reaches the
// gateway through acp-stdio-bridge.mjs: the SDK's ClientSideConnection over ndJsonStream on
// the bridge's stdin/stdout runs a turn; closing stdin ends the bridge with status 0.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { Readable, Writable } from "node:stream";
import * as acp from "@agentclientprotocol/sdk";
import { startGateway, packageDir } from "../lib/gateway.js";

const BRIDGE = join(packageDir, "acp-stdio-bridge.mjs");

let gateway;
before(async () => {
  gateway = await startGateway(["--dev"]);
});
after(async () => {
  await gateway?.stop();
});

test("a stdio ACP client runs a turn on the gateway through the bridge", async () => {
  const child = spawn(process.execPath, [BRIDGE, gateway.url("/acp")], {
    cwd: packageDir,
    stdio: ["pipe", "pipe", "pipe"],
  });
  const stderr = [];
  child.stderr.on("data", (chunk) => stderr.push(chunk));
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  const kill = setTimeout(() => child.kill("SIGKILL"), 30_000);
  try {
    const updates = [];
    const stream = acp.ndJsonStream(Writable.toWeb(child.stdin), Readable.toWeb(child.stdout));
    const conn = new acp.ClientSideConnection(
      () => ({
        async sessionUpdate(params) {
          updates.push(params);
        },
        async requestPermission(params) {
          return { outcome: { outcome: "selected", optionId: params.options[0].optionId } };
        },
      }),
      stream,
    );
    const init = await conn.initialize({ protocolVersion: acp.PROTOCOL_VERSION, clientCapabilities: {} });
    assert.equal(init.agentCapabilities.loadSession, true);
    const { sessionId } = await conn.newSession({ cwd: "/home/editor/project", mcpServers: [] });
    const result = await conn.prompt({ sessionId, prompt: [{ type: "text", text: "hello via stdio" }] });
    assert.equal(result.stopReason, "end_turn");
    const text = updates
      .filter((u) => u.update.sessionUpdate === "agent_message_chunk")
      .map((u) => u.update.content.text)
      .join("");
    assert.equal(text, "hello via stdio");
    child.stdin.end();
    const exit = await exited;
    assert.equal(exit.code, 0, `${JSON.stringify(exit)} ${Buffer.concat(stderr)}`);
  } finally {
    clearTimeout(kill);
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGKILL");
      await exited;
    }
  }
});
