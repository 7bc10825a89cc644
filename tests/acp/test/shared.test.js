// One session, many observers: a `/ws` client (the gateway's own protocol, docs/PROTOCOL.md)
// and an `/acp` client on the same session see the same turns, whichever side starts them, and
// a permission request is answered once, by whoever answers first.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway } from "../lib/gateway.js";
import { connectAcp, connectWs, agentText } from "../lib/acp.js";

let gateway;
before(async () => {
  gateway = await startGateway(["--dev"]);
});
after(async () => {
  await gateway?.stop();
});

function wsTurnEnd(ws, sessionId, count = 1) {
  return ws.until(
    (r) => r.events(sessionId).filter((e) => e.type === "turn_complete" || e.type === "turn_error").length >= count,
    `${count} turn end(s) on /ws`,
  );
}

function deferred() {
  let resolve;
  const promise = new Promise((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

test("a turn started on /acp is seen live on /ws, and one started on /ws on /acp", async () => {
  const client = connectAcp(gateway);
  await client.initialize();
  const { sessionId } = await client.conn.newSession({ cwd: "/tmp", mcpServers: [] });
  const ws = await connectWs(gateway);
  const joined = await ws.call({ type: "join_session", sessionId });
  assert.equal(joined.type, "session_joined", JSON.stringify(joined));

  // /acp → /ws
  const result = await client.conn.prompt({ sessionId, prompt: [{ type: "text", text: "hello both" }] });
  assert.equal(result.stopReason, "end_turn");
  await wsTurnEnd(ws, sessionId);
  const events = ws.events(sessionId);
  const started = events.find((e) => e.type === "turn_started");
  assert.equal(started?.text, "hello both", JSON.stringify(events));
  const text = events.filter((e) => e.type === "text_delta").map((e) => e.text).join("");
  assert.equal(text, "hello both");
  const complete = events.find((e) => e.type === "turn_complete");
  assert.equal(complete.stopReason, "end_turn");
  assert.equal(complete.finalText, "hello both");

  // /ws → /acp
  const accepted = await ws.call({ type: "run_turn", sessionId, text: "from the browser" });
  assert.equal(accepted.type, "turn_accepted", JSON.stringify(accepted));
  await client.until((c) => agentText(c.updates.filter((u) => u.sessionId === sessionId)).endsWith("from the browser"), "the /ws turn's text on /acp");
  await wsTurnEnd(ws, sessionId, 2);
  assert.equal(agentText(client.updates.filter((u) => u.sessionId === sessionId)), "hello bothfrom the browser");

  await ws.close();
  await client.close();
});

test("a permission request is forwarded to /acp and /ws; the /acp answer wins", async () => {
  const client = connectAcp(gateway);
  await client.initialize();
  const { sessionId } = await client.conn.newSession({ cwd: "/tmp", mcpServers: [] });
  const ws = await connectWs(gateway);
  await ws.call({ type: "join_session", sessionId });
  const result = await client.conn.prompt({ sessionId, prompt: [{ type: "text", text: "permission" }] });
  assert.equal(result.stopReason, "end_turn");
  assert.equal(client.permissions.length, 1);
  assert.ok(agentText(client.updates.filter((u) => u.sessionId === sessionId)).endsWith("permission: allow"));
  await wsTurnEnd(ws, sessionId);
  const events = ws.events(sessionId);
  const asked = events.find((e) => e.type === "permission_requested");
  assert.ok(asked, JSON.stringify(events));
  assert.equal(asked.toolCallId, client.permissions[0].toolCall.toolCallId);
  const resolved = events.find((e) => e.type === "permission_resolved");
  assert.equal(resolved?.optionId, "allow", JSON.stringify(events));
  // A late answer from /ws loses.
  const late = await ws.call({ type: "answer_question", sessionId, questionId: asked.questionId, optionId: "reject" });
  assert.equal(late.type, "error");
  assert.equal(late.code, "INVALID_STATE");
  await ws.close();
  await client.close();
});

test("a permission request answered first on /ws is resolved for the /acp client", async () => {
  const answer = deferred();
  const client = connectAcp(gateway, { onPermission: () => answer.promise });
  await client.initialize();
  const { sessionId } = await client.conn.newSession({ cwd: "/tmp", mcpServers: [] });
  const ws = await connectWs(gateway);
  await ws.call({ type: "join_session", sessionId });
  const prompt = client.conn.prompt({ sessionId, prompt: [{ type: "text", text: "permission" }] });
  await client.until((c) => c.permissions.length === 1, "the permission request on /acp");
  const asked = await ws.until(
    (r) => r.events(sessionId).find((e) => e.type === "permission_requested"),
    "permission_requested on /ws",
  );
  const answered = await ws.call({ type: "answer_question", sessionId, questionId: asked.questionId, optionId: "reject" });
  assert.equal(answered.type, "question_answered", JSON.stringify(answered));
  // The turn goes on without the /acp client's answer.
  const result = await prompt;
  assert.equal(result.stopReason, "end_turn");
  const mine = client.updates.filter((u) => u.sessionId === sessionId);
  assert.ok(agentText(mine).endsWith("permission: reject"), agentText(mine));
  // The /acp client is told: an update about that tool call after its request.
  const toolCallId = client.permissions[0].toolCall.toolCallId;
  const requestAt = client.received.findIndex((m) => m.method === "session/request_permission");
  const toldAt = client.received.findIndex(
    (m, i) => i > requestAt && m.method === "session/update" && m.params.update.toolCallId === toolCallId,
  );
  assert.ok(toldAt > requestAt, "a session/update about the resolved tool call reaches the /acp client");
  // Its late answer changes nothing; the session serves the next turn.
  answer.resolve({ outcome: { outcome: "selected", optionId: "allow" } });
  const next = await client.conn.prompt({ sessionId, prompt: [{ type: "text", text: "next" }] });
  assert.equal(next.stopReason, "end_turn");
  const resolvedEvents = ws.events(sessionId).filter((e) => e.type === "permission_resolved");
  assert.equal(resolvedEvents.length, 1, JSON.stringify(resolvedEvents));
  assert.equal(resolvedEvents[0].optionId, "reject");
  await ws.close();
  await client.close();
});

test("two /acp clients on one session: the second sees the first one's turn", async () => {
  const a = connectAcp(gateway);
  await a.initialize();
  const { sessionId } = await a.conn.newSession({ cwd: "/tmp", mcpServers: [] });
  const b = connectAcp(gateway);
  await b.initialize();
  await b.conn.resumeSession({ sessionId, cwd: "/tmp", mcpServers: [] });
  await a.conn.prompt({ sessionId, prompt: [{ type: "text", text: "seen by two" }] });
  await b.until((c) => agentText(c.updates.filter((u) => u.sessionId === sessionId)) === "seen by two", "b to see the turn");
  await a.close();
  await b.close();
});

test("a session deleted on /ws while an /acp prompt waits: the prompt is answered with an error", async () => {
  // Every request gets exactly one answer (docs/PROTOCOL.md): a turn cut short by the session's
  // deletion must not leave its session/prompt waiting for the connection's whole life.
  const client = connectAcp(gateway);
  await client.initialize();
  const { sessionId } = await client.conn.newSession({ cwd: "/tmp", mcpServers: [] });
  await client.conn.prompt({ sessionId, prompt: [{ type: "text", text: "warm up" }] });
  let settled = null;
  client.conn
    .prompt({ sessionId, prompt: [{ type: "text", text: "hang" }] })
    .then(
      (result) => (settled = { result }),
      (error) => (settled = { error }),
    )
    .finally(() => client.watch.notify());
  await client.until(
    (c) => c.updates.some((u) => u.update.sessionUpdate === "user_message_chunk" && u.update.content.text === "hang"),
    "the hang turn to start",
  );
  const ws = await connectWs(gateway);
  const deleted = await ws.call({ type: "delete_session", sessionId });
  assert.equal(deleted.type, "session_deleted", JSON.stringify(deleted));
  await client.until(() => settled !== null, "the prompt to be answered", 10_000);
  assert.ok(settled.error, `an error answer: ${JSON.stringify(settled)}`);
  assert.equal(typeof settled.error.code, "number", JSON.stringify(settled.error));
  await ws.close();
  await client.close();
});

test("five /acp observers see one turn identically, in seq order", async () => {
  const driver = connectAcp(gateway);
  await driver.initialize();
  const { sessionId } = await driver.conn.newSession({ cwd: "/tmp", mcpServers: [] });
  const observers = [];
  for (let i = 0; i < 5; i++) {
    const observer = connectAcp(gateway);
    await observer.initialize();
    await observer.conn.resumeSession({ sessionId, cwd: "/tmp", mcpServers: [] });
    observers.push(observer);
  }
  assert.equal((await driver.conn.prompt({ sessionId, prompt: [{ type: "text", text: "diff" }] })).stopReason, "end_turn");
  const seen = (client) => client.updates.filter((u) => u.sessionId === sessionId);
  const expected = seen(driver);
  const seqs = expected.map((u) => u._meta?.diminuendo?.seq);
  assert.ok(seqs.every((seq) => Number.isInteger(seq)), JSON.stringify(seqs));
  assert.ok(seqs.every((seq, i) => i === 0 || seq >= seqs[i - 1]), `seq order: ${seqs}`);
  for (const observer of observers) {
    await observer.until((c) => seen(c).length >= expected.length, "the observer to see the whole turn");
    assert.deepEqual(seen(observer), expected);
    await observer.close();
  }
  await driver.close();
});
