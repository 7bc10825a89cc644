// An ACP client that only speaks ACP's stdio transport (as Zed does with its agents) reaches the
// gateway through acp-stdio-bridge.mjs: the SDK's ClientSideConnection over ndJsonStream on
// the bridge's stdin/stdout runs a turn; closing stdin ends the bridge with status 0.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import * as acp from "@agentclientprotocol/sdk";
import { startGateway } from "../lib/gateway.js";
import { startBridge } from "../lib/bridge.js";

let gateway;
before(async () => {
  gateway = await startGateway(["--dev"]);
});
after(async () => {
  await gateway?.stop();
});

test("a stdio ACP client runs a turn on the gateway through the bridge", async () => {
  const bridge = startBridge(gateway.url("/acp"));
  try {
    const init = await bridge.conn.initialize({ protocolVersion: acp.PROTOCOL_VERSION, clientCapabilities: {} });
    assert.equal(init.agentCapabilities.loadSession, true);
    const { sessionId } = await bridge.conn.newSession({ cwd: "/home/editor/project", mcpServers: [] });
    const result = await bridge.conn.prompt({ sessionId, prompt: [{ type: "text", text: "hello via stdio" }] });
    assert.equal(result.stopReason, "end_turn");
    const text = bridge.updates
      .filter((u) => u.update.sessionUpdate === "agent_message_chunk")
      .map((u) => u.update.content.text)
      .join("");
    assert.equal(text, "hello via stdio");
    const exit = await bridge.end();
    assert.equal(exit.code, 0, `${JSON.stringify(exit)} ${bridge.stderr()}`);
  } finally {
    await bridge.kill();
  }
});
