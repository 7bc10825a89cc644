// One ACP client through the life of a session: initialize, session/new, a turn of the echo
// agent, a turn of the TypeScript SDK's example agent with its permission request answered, a
// cancelled turn, and an unknown agent type.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, TS_AGENT_ARGS } from "../lib/gateway.js";
import { connectAcp, agentText, agentTypeMeta, acp } from "../lib/acp.js";

let gateway;
before(async () => {
  gateway = await startGateway(["--dev", ...TS_AGENT_ARGS]);
});
after(async () => {
  await gateway?.stop();
});

test("initialize advertises load, list, resume and the agent types", async () => {
  const client = connectAcp(gateway);
  const init = await client.initialize();
  assert.equal(init.protocolVersion, acp.PROTOCOL_VERSION);
  assert.equal(init.agentCapabilities.loadSession, true);
  assert.ok(init.agentCapabilities.sessionCapabilities?.list, JSON.stringify(init));
  assert.ok(init.agentCapabilities.sessionCapabilities?.resume, JSON.stringify(init));
  const types = init._meta?.diminuendo?.agentTypes;
  assert.ok(Array.isArray(types), `agent types in initialize._meta: ${JSON.stringify(init._meta)}`);
  assert.ok(types.includes("echo") && types.includes("ts"), JSON.stringify(types));
  await client.close();
});

test("initialize answers version 1 to a client asking for a later one", async () => {
  const client = connectAcp(gateway);
  const init = await client.initialize({ protocolVersion: 7 });
  assert.equal(init.protocolVersion, 1);
  await client.close();
});

test("session/new then a prompt runs a turn of the echo agent", async () => {
  const client = connectAcp(gateway);
  await client.initialize();
  const session = await client.conn.newSession({ cwd: "/home/someone/project", mcpServers: [] });
  assert.equal(typeof session.sessionId, "string");
  assert.ok(session.sessionId.length > 0);
  const result = await client.conn.prompt({
    sessionId: session.sessionId,
    prompt: [{ type: "text", text: "hello over acp" }],
  });
  assert.equal(result.stopReason, "end_turn");
  const mine = client.updates.filter((u) => u.sessionId === session.sessionId);
  assert.equal(agentText(mine), "hello over acp");
  // The turn's updates arrive before the prompt's answer.
  const answerIndex = client.received.findIndex((m) => m.result?.stopReason);
  const lastUpdate = client.received.findLastIndex((m) => m.method === "session/update");
  assert.ok(lastUpdate < answerIndex, "every update of the turn precedes the session/prompt answer");
  // A second turn on the same session.
  const second = await client.conn.prompt({
    sessionId: session.sessionId,
    prompt: [{ type: "text", text: "think deeply" }],
  });
  assert.equal(second.stopReason, "end_turn");
  assert.equal(agentText(client.updates, "agent_thought_chunk"), "deeply");
  assert.equal(agentText(client.updates), "hello over acpdeeply");
  await client.close();
});

test("the SDK's example agent runs a turn with a permission request answered", async () => {
  const client = connectAcp(gateway);
  await client.initialize();
  const session = await client.conn.newSession({
    cwd: "/tmp",
    mcpServers: [],
    _meta: agentTypeMeta("ts"),
  });
  const result = await client.conn.prompt({
    sessionId: session.sessionId,
    prompt: [{ type: "text", text: "Please improve the configuration." }],
  });
  assert.equal(result.stopReason, "end_turn");
  assert.equal(client.permissions.length, 1, JSON.stringify(client.permissions));
  const question = client.permissions[0];
  assert.equal(question.sessionId, session.sessionId);
  assert.equal(question.toolCall.toolCallId, "call_2");
  assert.deepEqual(
    question.options.map((o) => [o.optionId, o.kind]),
    [
      ["allow", "allow_once"],
      ["reject", "reject_once"],
    ],
  );
  const updates = client.updates.filter((u) => u.sessionId === session.sessionId).map((u) => u.update);
  const calls = updates.filter((u) => u.sessionUpdate === "tool_call").map((u) => [u.toolCallId, u.kind]);
  assert.deepEqual(calls, [
    ["call_1", "read"],
    ["call_2", "edit"],
  ]);
  const done = (id) =>
    updates.findIndex((u) => u.sessionUpdate === "tool_call_update" && u.toolCallId === id && u.status === "completed");
  assert.ok(done("call_1") >= 0, JSON.stringify(updates));
  assert.ok(done("call_2") >= 0, "call_2 completes once allowed");
  const text = agentText(client.updates.filter((u) => u.sessionId === session.sessionId));
  assert.ok(text.startsWith("I'll help you with that."), text);
  assert.ok(text.endsWith("The changes have been applied."), text);
  // Its agent advertised no prompt capabilities: an image is refused before anything starts,
  // and the session's capabilities say so.
  await assert.rejects(
    client.conn.prompt({
      sessionId: session.sessionId,
      prompt: [
        { type: "text", text: "look" },
        { type: "image", data: Buffer.from("png").toString("base64"), mimeType: "image/png" },
      ],
    }),
    (error) => {
      assert.equal(error.code, -32602, JSON.stringify(error));
      return true;
    },
  );
  const other = connectAcp(gateway);
  await other.initialize();
  const resumed = await other.conn.resumeSession({ sessionId: session.sessionId, cwd: "/tmp", mcpServers: [] });
  assert.equal(resumed._meta?.diminuendo?.promptCapabilities?.image, false, JSON.stringify(resumed));
  await other.close();
  await client.close();
});

test("session/new takes the client's cwd and MCP servers without using them", async () => {
  // The client's paths and MCP servers are on the client's machine, not the gateway's.
  const client = connectAcp(gateway);
  await client.initialize();
  const { sessionId } = await client.conn.newSession({
    cwd: "/Users/someone/does/not/exist/here",
    mcpServers: [{ name: "local-tool", command: "/usr/local/bin/tool", args: ["--stdio"], env: [] }],
  });
  const result = await client.conn.prompt({ sessionId, prompt: [{ type: "text", text: "still works" }] });
  assert.equal(result.stopReason, "end_turn");
  assert.equal(agentText(client.updates.filter((u) => u.sessionId === sessionId)), "still works");
  await client.close();
});

test("session/new with an unknown agent type fails and names the agent types", async () => {
  const client = connectAcp(gateway);
  await client.initialize();
  // The flat form `_meta.agentType` is read too.
  await assert.rejects(
    client.conn.newSession({ cwd: "/tmp", mcpServers: [], _meta: { agentType: "no-such-agent" } }),
    (error) => error.code === -32602,
  );
  await assert.rejects(
    client.conn.newSession({ cwd: "/tmp", mcpServers: [], _meta: agentTypeMeta("no-such-agent") }),
    (error) => {
      assert.equal(typeof error.code, "number", String(error));
      assert.notEqual(error.code, -32603, `not an internal error: ${JSON.stringify(error)}`);
      const text = JSON.stringify(error.data ?? {});
      assert.ok(text.includes("echo") && text.includes("ts"), `the agent types in data: ${text}`);
      return true;
    },
  );
  await client.close();
});

test("session/cancel ends a streaming turn with stopReason cancelled", async () => {
  const client = connectAcp(gateway);
  await client.initialize();
  const { sessionId } = await client.conn.newSession({ cwd: "/tmp", mcpServers: [] });
  const prompt = client.conn.prompt({ sessionId, prompt: [{ type: "text", text: "slow 1000 20" }] });
  await client.until(
    (c) => c.updates.some((u) => u.sessionId === sessionId && u.update.sessionUpdate === "agent_message_chunk"),
    "the first chunk of the slow turn",
  );
  await client.conn.cancel({ sessionId });
  const result = await prompt;
  assert.equal(result.stopReason, "cancelled");
  assert.ok(!agentText(client.updates).includes("chunk 1000 of 1000"), "the turn did not run to its end");
  // The session takes the next turn.
  const next = await client.conn.prompt({ sessionId, prompt: [{ type: "text", text: "after cancel" }] });
  assert.equal(next.stopReason, "end_turn");
  await client.close();
});

test("session/cancel ends a turn the agent never ends by itself", async () => {
  const client = connectAcp(gateway);
  await client.initialize();
  const { sessionId } = await client.conn.newSession({ cwd: "/tmp", mcpServers: [] });
  // A first turn, so the agent is up and `hang` is prompted at once.
  await client.conn.prompt({ sessionId, prompt: [{ type: "text", text: "warm up" }] });
  const prompt = client.conn.prompt({ sessionId, prompt: [{ type: "text", text: "hang" }] });
  // The turn's own user_message_chunk says it started.
  await client.until(
    (c) =>
      c.updates.some(
        (u) => u.sessionId === sessionId && u.update.sessionUpdate === "user_message_chunk" && u.update.content.text === "hang",
      ),
    "the hang turn to start",
  );
  await client.conn.cancel({ sessionId });
  assert.equal((await prompt).stopReason, "cancelled");
  await client.close();
});
