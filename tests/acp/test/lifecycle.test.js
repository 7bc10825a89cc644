// What a remote ACP agent has that a local subprocess has not: the turn goes on when the client
// disconnects, a client that loads mid-turn gets the history and then the rest live with no gap
// and no duplicate, a pending permission request reaches a client that attaches later, and any
// attached client can cancel. Also: a failing turn answers its prompt with an error (never
// leaves it unanswered), a second prompt during a turn is refused, and a long history is paged.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway } from "../lib/gateway.js";
import { connectAcp, connectWs, agentText } from "../lib/acp.js";

let gateway;
before(async () => {
  gateway = await startGateway(["--dev", "--rate-limit", "0", "--coalesce-deltas", "false"]);
});
after(async () => {
  await gateway?.stop();
});

const of = (client, sessionId) => client.updates.filter((u) => u.sessionId === sessionId);

function slowText(count) {
  let text = "";
  for (let i = 1; i <= count; i++) text += `chunk ${i} of ${count}\n`;
  return text;
}

async function newSession(client) {
  await client.initialize();
  return (await client.conn.newSession({ cwd: "/tmp", mcpServers: [] })).sessionId;
}

test("the turn goes on after its client disconnects; a later session/load has all of it", async () => {
  const a = connectAcp(gateway);
  const sessionId = await newSession(a);
  const ws = await connectWs(gateway);
  await ws.call({ type: "join_session", sessionId });
  const prompt = a.conn.prompt({ sessionId, prompt: [{ type: "text", text: "slow 8 40" }] });
  prompt.catch(() => undefined);
  await a.until((c) => agentText(of(c, sessionId)).includes("chunk 1 of 8"), "the first chunk");
  await a.close();
  // The turn ends without the client that started it.
  const complete = await ws.until(
    (r) => r.events(sessionId).find((e) => e.type === "turn_complete" || e.type === "turn_error"),
    "the turn's end on /ws",
  );
  assert.equal(complete.type, "turn_complete", JSON.stringify(complete));
  assert.equal(complete.stopReason, "end_turn");
  await ws.close();

  const b = connectAcp(gateway);
  await b.initialize();
  await b.conn.loadSession({ sessionId, cwd: "/tmp", mcpServers: [] });
  assert.equal(agentText(of(b, sessionId)), slowText(8));
  await b.close();
});

test("session/load in the middle of a turn: history, then the rest live, no gap, no duplicate", async () => {
  const a = connectAcp(gateway);
  const sessionId = await newSession(a);
  const prompt = a.conn.prompt({ sessionId, prompt: [{ type: "text", text: "slow 40 25" }] });
  await a.until((c) => agentText(of(c, sessionId)).includes("chunk 5 of 40"), "five chunks");
  const b = connectAcp(gateway);
  await b.initialize();
  await b.conn.loadSession({ sessionId, cwd: "/tmp", mcpServers: [] });
  assert.equal((await prompt).stopReason, "end_turn");
  await b.until((c) => agentText(of(c, sessionId)).includes("chunk 40 of 40"), "the last chunk on the loader");
  assert.equal(agentText(of(b, sessionId)), slowText(40));
  assert.equal(agentText(of(a, sessionId)), slowText(40));
  const prompts = of(b, sessionId).filter((u) => u.update.sessionUpdate === "user_message_chunk");
  assert.deepEqual(
    prompts.map((u) => u.update.content.text),
    ["slow 40 25"],
    "the prompt once",
  );
  await a.close();
  await b.close();
});

test("a long history (more than one page of events) loads whole and in order", async () => {
  const a = connectAcp(gateway);
  const sessionId = await newSession(a);
  // Uncoalesced, 2500 one-byte deltas: 2500 events in one turn.
  const result = await a.conn.prompt({ sessionId, prompt: [{ type: "text", text: "stream 2500 1" }] });
  assert.equal(result.stopReason, "end_turn");
  const live = agentText(of(a, sessionId));
  assert.equal(live.length, 2500);
  await a.close();
  const b = connectAcp(gateway);
  await b.initialize();
  await b.conn.loadSession({ sessionId, cwd: "/tmp", mcpServers: [] });
  assert.equal(agentText(of(b, sessionId)), live);
  await b.close();
});

test("a permission request still open reaches a client that attaches later, whose answer counts", async () => {
  const a = connectAcp(gateway, { onPermission: () => new Promise(() => {}) });
  const sessionId = await newSession(a);
  const prompt = a.conn.prompt({ sessionId, prompt: [{ type: "text", text: "permission" }] });
  await a.until((c) => c.permissions.length === 1, "the request on the first client");
  const b = connectAcp(gateway, {
    onPermission: (params) => ({ outcome: { outcome: "selected", optionId: params.options.find((o) => o.kind === "reject_once").optionId } }),
  });
  await b.initialize();
  await b.conn.resumeSession({ sessionId, cwd: "/tmp", mcpServers: [] });
  await b.until((c) => c.permissions.length === 1, "the open request on the attaching client");
  assert.equal(b.permissions[0].toolCall.toolCallId, a.permissions[0].toolCall.toolCallId);
  assert.equal((await prompt).stopReason, "end_turn");
  assert.ok(agentText(of(a, sessionId)).endsWith("permission: reject"), agentText(of(a, sessionId)));
  await a.close();
  await b.close();
});

test("any attached client can cancel the turn", async () => {
  const a = connectAcp(gateway);
  const sessionId = await newSession(a);
  const b = connectAcp(gateway);
  await b.initialize();
  await b.conn.resumeSession({ sessionId, cwd: "/tmp", mcpServers: [] });
  const prompt = a.conn.prompt({ sessionId, prompt: [{ type: "text", text: "slow 1000 20" }] });
  await b.until((c) => agentText(of(c, sessionId)).includes("chunk 1 of"), "the turn on the second client");
  await b.conn.cancel({ sessionId });
  assert.equal((await prompt).stopReason, "cancelled");
  await a.close();
  await b.close();
});

test("a second prompt while a turn runs is refused with the gateway's INVALID_STATE", async () => {
  const a = connectAcp(gateway);
  const sessionId = await newSession(a);
  const first = a.conn.prompt({ sessionId, prompt: [{ type: "text", text: "slow 1000 20" }] });
  await a.until((c) => agentText(of(c, sessionId)).includes("chunk 1 of"), "the first turn");
  await assert.rejects(a.conn.prompt({ sessionId, prompt: [{ type: "text", text: "me too" }] }), (error) => {
    assert.ok(JSON.stringify(error.data ?? {}).includes("INVALID_STATE"), JSON.stringify(error));
    return true;
  });
  await a.conn.cancel({ sessionId });
  assert.equal((await first).stopReason, "cancelled");
  await a.close();
});

test("a turn whose agent dies answers session/prompt with an error, and the session recovers", async () => {
  const a = connectAcp(gateway);
  const sessionId = await newSession(a);
  await assert.rejects(a.conn.prompt({ sessionId, prompt: [{ type: "text", text: "exit" }] }), (error) => {
    assert.equal(typeof error.code, "number");
    assert.ok(JSON.stringify(error.data ?? {}).includes("AGENT_UNAVAILABLE"), JSON.stringify(error));
    return true;
  });
  const next = await a.conn.prompt({ sessionId, prompt: [{ type: "text", text: "alive again" }] });
  assert.equal(next.stopReason, "end_turn");
  assert.ok(agentText(of(a, sessionId)).endsWith("alive again"));
  await a.close();
});

test("rich prompts: an image block reaches the agent; audio, which echo does not take, is refused", async () => {
  const a = connectAcp(gateway);
  const sessionId = await newSession(a);
  await a.conn.prompt({ sessionId, prompt: [{ type: "text", text: "start" }] });
  const png = Buffer.from("not really a png").toString("base64");
  const result = await a.conn.prompt({
    sessionId,
    prompt: [
      { type: "text", text: "blocks" },
      { type: "image", data: png, mimeType: "image/png" },
    ],
  });
  assert.equal(result.stopReason, "end_turn");
  assert.ok(agentText(of(a, sessionId)).includes("image image/png 16 bytes"), agentText(of(a, sessionId)));
  await assert.rejects(
    a.conn.prompt({
      sessionId,
      prompt: [
        { type: "text", text: "blocks" },
        { type: "audio", data: png, mimeType: "audio/wav" },
      ],
    }),
    (error) => {
      assert.equal(typeof error.code, "number");
      return true;
    },
  );
  await a.close();
});

test("a permission answered with the cancelled outcome cancels the turn", async () => {
  const a = connectAcp(gateway, { onPermission: () => ({ outcome: { outcome: "cancelled" } }) });
  const sessionId = await newSession(a);
  const result = await a.conn.prompt({ sessionId, prompt: [{ type: "text", text: "permission" }] });
  assert.equal(result.stopReason, "cancelled");
  assert.ok(agentText(of(a, sessionId)).endsWith("permission: cancelled"));
  await a.close();
});

test("a permission answer naming an option that was not offered does not leave the turn waiting", async () => {
  // On /ws such an answer is refused (INVALID_MESSAGE) and the client can answer again; an
  // ACP client has answered its request and will not answer it again unless asked again. So
  // the gateway must either ask again or settle the question: the turn may not wait for its
  // timeout (30 minutes).
  let asked = 0;
  const a = connectAcp(gateway, {
    onPermission: () => {
      asked += 1;
      return { outcome: { outcome: "selected", optionId: asked === 1 ? "not-offered" : "allow" } };
    },
  });
  const sessionId = await newSession(a);
  let settled = null;
  a.conn
    .prompt({ sessionId, prompt: [{ type: "text", text: "permission" }] })
    .then(
      (result) => (settled = { result }),
      (error) => (settled = { error }),
    )
    .finally(() => a.watch.notify());
  await a.until(() => settled !== null, "the prompt to be answered", 10_000);
  assert.ok(settled.result || settled.error, JSON.stringify(settled));
  await a.close();
});

test("a prompt of content blocks only (no text) runs a turn", async () => {
  const a = connectAcp(gateway);
  const sessionId = await newSession(a);
  const result = await a.conn.prompt({
    sessionId,
    prompt: [{ type: "resource_link", uri: "file:///notes/todo.txt", name: "todo.txt" }],
  });
  assert.equal(result.stopReason, "end_turn");
  await a.close();
});

test("session/load during a flood of events on a slow disk: every event once, in seq order", async () => {
  // Storage commits lag 300 ms behind what is published, so the stored pages end well before
  // the live stream: the load must stitch them to the live events without a gap.
  const own = await startGateway([
    "--dev",
    "--rate-limit",
    "0",
    "--coalesce-deltas",
    "false",
    "--storage-commit-delay-ms",
    "300",
  ]);
  try {
    const a = connectAcp(own);
    const sessionId = await newSession(a);
    const total = 5000;
    const prompt = a.conn.prompt({ sessionId, prompt: [{ type: "text", text: `stream ${total} 1` }] });
    await a.until((c) => agentText(of(c, sessionId)).length >= 1500, "1500 deltas");
    const b = connectAcp(own);
    await b.initialize();
    await b.conn.loadSession({ sessionId, cwd: "/tmp", mcpServers: [] });
    assert.equal((await prompt).stopReason, "end_turn");
    await b.until((c) => agentText(of(c, sessionId)).length >= total, `all ${total} deltas on the loader`);
    assert.equal(agentText(of(b, sessionId)), agentText(of(a, sessionId)));
    // Each delta is one event: its seq appears once, and seqs never step back.
    const seqs = of(b, sessionId)
      .filter((u) => u.update.sessionUpdate === "agent_message_chunk")
      .map((u) => u._meta.diminuendo.seq);
    assert.equal(seqs.length, total);
    assert.ok(
      seqs.every((seq, i) => i === 0 || seq > seqs[i - 1]),
      "every delta once, in seq order",
    );
    await a.close();
    await b.close();
  } finally {
    await own.stop();
  }
});

test("the editor quits while the agent waits for a permission; after session/load it answers", async () => {
  const a = connectAcp(gateway, { onPermission: () => new Promise(() => {}) });
  const sessionId = await newSession(a);
  const prompt = a.conn.prompt({ sessionId, prompt: [{ type: "text", text: "permission" }] });
  prompt.catch(() => undefined);
  await a.until((c) => c.permissions.length === 1, "the permission request");
  await a.close();
  const b = connectAcp(gateway);
  await b.initialize();
  await b.conn.loadSession({ sessionId, cwd: "/tmp", mcpServers: [] });
  await b.until((c) => c.permissions.length === 1, "the open request asked again after the load");
  await b.until((c) => agentText(of(c, sessionId)).endsWith("permission: allow"), "the turn to go on");
  await b.close();
});
