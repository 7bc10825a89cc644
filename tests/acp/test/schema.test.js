// Every message the gateway sends on /acp fits the ACP JSON Schema shipped with the SDK. Every
// client in this suite checks what it receives (lib/acp.js, at close); this file drives every
// kind of update the echo agent can produce, the session controls, and an update kind ACP does
// not define, through one session.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway } from "../lib/gateway.js";
import { connectAcp } from "../lib/acp.js";

let gateway;
before(async () => {
  gateway = await startGateway(["--dev", "--rate-limit", "0"]);
});
after(async () => {
  await gateway?.stop();
});

const COMMANDS = ["plain text", "think hard", "tools", "plan", "permission", "usage", "diff", "controls", "stream 20 100", "recall", "unknown"];

test("every update kind the echo agent produces is sent in ACP's schema", async () => {
  const client = connectAcp(gateway);
  await client.initialize();
  const session = await client.conn.newSession({ cwd: "/tmp", mcpServers: [] });
  const { sessionId } = session;
  for (const text of COMMANDS) {
    const result = await client.conn.prompt({ sessionId, prompt: [{ type: "text", text }] });
    assert.equal(result.stopReason, "end_turn", text);
  }
  const kinds = new Set(client.updates.map((u) => u.update.sessionUpdate));
  for (const kind of [
    "user_message_chunk",
    "agent_message_chunk",
    "agent_thought_chunk",
    "tool_call",
    "tool_call_update",
    "plan",
    "usage_update",
    "available_commands_update",
    "current_mode_update",
    "config_option_update",
  ]) {
    assert.ok(kinds.has(kind), `a ${kind} reached the client (got ${[...kinds]})`);
  }
  assert.ok(!kinds.has("echo_unknown_kind"), "an update kind ACP does not define is not sent as one");
  // The whole exchange was schema-checked message by message (also at close).
  assert.deepEqual(client.schemaProblems, []);
  assert.ok(client.received.length > 40, `${client.received.length} messages checked`);
  await client.close();
});

test("session/set_mode and session/set_config_option reach the agent and answer in schema", async () => {
  const client = connectAcp(gateway);
  await client.initialize();
  const session = await client.conn.newSession({ cwd: "/tmp", mcpServers: [] });
  const { sessionId } = session;
  // The agent runs once a turn has started it.
  await client.conn.prompt({ sessionId, prompt: [{ type: "text", text: "start" }] });
  await client.conn.setSessionMode({ sessionId, modeId: "code" });
  await client.until(
    (c) => c.updates.some((u) => u.update.sessionUpdate === "current_mode_update" && u.update.currentModeId === "code"),
    "current_mode_update code",
  );
  const options = await client.conn.setSessionConfigOption({ sessionId, configId: "speed", value: "fast" });
  const speed = options.configOptions.find((o) => o.id === "speed");
  assert.equal(speed?.currentValue, "fast", JSON.stringify(options));
  await assert.rejects(client.conn.setSessionMode({ sessionId, modeId: "no-such-mode" }), (error) => {
    assert.equal(typeof error.code, "number");
    return true;
  });
  await client.close();
});
