// Disconnect, reconnect and session/load: the whole history replayed as session/update
// notifications, in order, before the answer, then live updates; session/list with cursors;
// session/resume (live only).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway } from "../lib/gateway.js";
import { MemoryAcpCookieStore } from "@agentclientprotocol/sdk/experimental/ws-client";
import { connectAcp, agentText, normalizeUpdates } from "../lib/acp.js";

let gateway;
before(async () => {
  // No rate limit: the listing test creates more sessions than one 10 s window allows.
  gateway = await startGateway(["--dev", "--rate-limit", "0"]);
});
after(async () => {
  await gateway?.stop();
});

const PROMPTS = ["hello history", "think about it", "tools", "plan", "usage", "diff", "last words"];

test("session/load after a reconnect replays the whole history in order", async () => {
  // One cookie store across both connections, as the SDK's reconnect recipe says.
  const cookieStore = new MemoryAcpCookieStore();
  const first = connectAcp(gateway, { cookieStore });
  await first.initialize();
  const { sessionId } = await first.conn.newSession({ cwd: "/tmp", mcpServers: [] });
  for (const text of PROMPTS) {
    const result = await first.conn.prompt({ sessionId, prompt: [{ type: "text", text }] });
    assert.equal(result.stopReason, "end_turn", text);
  }
  const live = first.updates.filter((u) => u.sessionId === sessionId);
  await first.close();

  const second = connectAcp(gateway, { cookieStore });
  const init = await second.initialize();
  assert.equal(init.agentCapabilities.loadSession, true);
  await second.conn.loadSession({ sessionId, cwd: "/tmp", mcpServers: [] });
  // Everything before the answer is the replay.
  const loadId = second.sent.find((m) => m.method === "session/load").id;
  const answerAt = second.received.findIndex((m) => !("method" in m) && m.id === loadId);
  assert.ok(answerAt >= 0, "the session/load answer was received");
  const replayed = second.received
    .slice(0, answerAt)
    .filter((m) => m.method === "session/update" && m.params.sessionId === sessionId)
    .map((m) => m.params);

  // Each prompt is in the history, as the user's message, in order, before its answer.
  const userTexts = replayed
    .filter((u) => u.update.sessionUpdate === "user_message_chunk")
    .map((u) => u.update.content.text);
  assert.deepEqual(userTexts, PROMPTS, "every prompt replayed as user_message_chunk, in order");
  // What the agent said, in order: the same as what the first connection saw live.
  const withoutUser = (updates) => normalizeUpdates(updates).filter((u) => u.sessionUpdate !== "user_message_chunk");
  assert.deepEqual(withoutUser(replayed), withoutUser(live), "the replay is the live history");
  // And the whole sequence matches when the live one had the prompts too.
  if (live.some((u) => u.update.sessionUpdate === "user_message_chunk")) {
    assert.deepEqual(normalizeUpdates(replayed), normalizeUpdates(live));
  }

  // Then live: a new turn on the loaded session, and the agent remembers (echo's `recall`).
  const before = second.updates.length;
  const result = await second.conn.prompt({ sessionId, prompt: [{ type: "text", text: "recall" }] });
  assert.equal(result.stopReason, "end_turn");
  const recalled = agentText(second.updates.slice(before));
  assert.ok(recalled.includes("1. hello history"), recalled);
  await second.close();
});

test("session/load of a session that does not exist is an error, not a crash", async () => {
  const client = connectAcp(gateway);
  await client.initialize();
  await assert.rejects(
    client.conn.loadSession({ sessionId: "00000000-0000-4000-8000-000000000000", cwd: "/", mcpServers: [] }),
    (error) => {
      assert.equal(typeof error.code, "number");
      assert.notEqual(error.code, -32603, JSON.stringify(error));
      return true;
    },
  );
  // The connection still serves.
  const { sessionId } = await client.conn.newSession({ cwd: "/", mcpServers: [] });
  assert.equal(typeof sessionId, "string");
  await client.close();
  assert.ok(gateway.alive());
});

test("session/resume attaches live without replaying the history", async () => {
  const first = connectAcp(gateway);
  await first.initialize();
  const { sessionId } = await first.conn.newSession({ cwd: "/tmp", mcpServers: [] });
  await first.conn.prompt({ sessionId, prompt: [{ type: "text", text: "before resume" }] });
  await first.close();

  const second = connectAcp(gateway);
  await second.initialize();
  await second.conn.resumeSession({ sessionId, cwd: "/tmp", mcpServers: [] });
  const request = second.sent.find((m) => m.method === "session/resume");
  const answerAt = second.received.findIndex((m) => m.id === request.id && !("method" in m));
  assert.ok(answerAt >= 0);
  const replayed = second.received.slice(0, answerAt).filter((m) => m.method === "session/update");
  assert.deepEqual(replayed, [], "session/resume replays nothing");
  const result = await second.conn.prompt({ sessionId, prompt: [{ type: "text", text: "after resume" }] });
  assert.equal(result.stopReason, "end_turn");
  assert.equal(agentText(second.updates.filter((u) => u.sessionId === sessionId)), "after resume");
  await second.close();
});

test("session/list lists the tenant's sessions, page by page with cursors", async () => {
  const client = connectAcp(gateway);
  await client.initialize();
  const created = new Set();
  // More than one page (the gateway's page holds 50).
  for (let i = 0; i < 53; i++) {
    const { sessionId } = await client.conn.newSession({ cwd: "/tmp", mcpServers: [] });
    created.add(sessionId);
  }
  const listed = [];
  let cursor;
  let pages = 0;
  do {
    const page = await client.conn.listSessions(cursor === undefined ? {} : { cursor });
    pages += 1;
    assert.ok(Array.isArray(page.sessions));
    for (const info of page.sessions) {
      assert.equal(typeof info.sessionId, "string");
      assert.equal(typeof info.cwd, "string");
      listed.push(info.sessionId);
    }
    cursor = page.nextCursor ?? undefined;
    assert.ok(pages <= 10, "the cursors end");
  } while (cursor !== undefined);
  assert.ok(pages >= 2, `more than one page (${pages})`);
  assert.equal(new Set(listed).size, listed.length, "no session listed twice");
  for (const id of created) assert.ok(listed.includes(id), `session ${id} listed`);
  await client.close();
});
