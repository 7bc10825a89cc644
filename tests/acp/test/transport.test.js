// The WebSocket rules /acp shares with /ws (docs/PROTOCOL.md, "WebSocket rules"): close codes
// for a binary message and invalid UTF-8, heartbeats as pings only (a JSON heartbeat would not
// be ACP), the rate limit as a JSON-RPC error then 4101, shutdown as 1001; and stray input
// (an answer to nothing, a second initialize) that must not break the connection.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway } from "../lib/gateway.js";
import { rawSocket, initializeRequest } from "../lib/acp.js";
import { checkAgentMessage } from "../lib/schema.js";

let gateway;
before(async () => {
  gateway = await startGateway(["--dev", "--rate-limit", "10"]);
});
after(async () => {
  await gateway?.stop();
});

async function initialized(target = gateway) {
  const raw = rawSocket(target.url("/acp"));
  await raw.opened;
  raw.send(initializeRequest(0));
  assert.equal((await raw.reply(0)).result?.protocolVersion, 1);
  return raw;
}

test("a binary message closes with 1003, invalid UTF-8 with 1007", async () => {
  const a = await initialized();
  a.socket.send(Buffer.from(JSON.stringify(initializeRequest(1))), { binary: true });
  assert.equal((await a.closed()).code, 1003);
  const b = await initialized();
  b.socket.send(Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d]), { binary: false });
  assert.equal((await b.closed()).code, 1007);
  assert.ok(gateway.alive());
});

// Heartbeats every 200 ms, on a gateway of their own (a client that misses 2.5 of them is closed).
async function withFastHeartbeats(body) {
  const own = await startGateway(["--dev", "--heartbeat-interval-ms", "200"]);
  try {
    await body(own);
  } finally {
    await own.stop();
  }
}

test("heartbeats on /acp are WebSocket pings only, never a JSON message", () =>
  withFastHeartbeats(async (own) => {
    const raw = await initialized(own);
    let pings = 0;
    raw.socket.on("ping", () => {
      pings += 1;
      raw.watch.notify();
    });
    // Three heartbeat intervals of silence from the gateway's side.
    await raw.until(() => pings >= 3, "three pings");
    assert.deepEqual(
      raw.messages.filter((m) => m.id !== 0),
      [],
      "nothing but the initialize answer was sent as a message",
    );
    // `ws` answered every ping, so the connection is alive and serves.
    raw.send({ jsonrpc: "2.0", id: 1, method: "session/list", params: {} });
    assert.ok(Array.isArray((await raw.reply(1)).result?.sessions));
    await raw.close();
  }));

test("a client that answers no ping is closed 4103", () =>
  withFastHeartbeats(async (own) => {
    const raw = rawSocket(own.url("/acp"), { autoPong: false });
    await raw.opened;
    raw.send(initializeRequest(0));
    await raw.reply(0);
    assert.equal((await raw.closed()).code, 4103);
  }));

test("an answer to no request of the gateway's, and a second initialize, break nothing", async () => {
  const raw = await initialized();
  raw.send({ jsonrpc: "2.0", id: 4242, result: { outcome: { outcome: "cancelled" } } });
  raw.send({ jsonrpc: "2.0", id: "nope", error: { code: -32603, message: "whatever" } });
  raw.send(initializeRequest(2));
  const second = await raw.reply(2);
  assert.ok(second.result || second.error, JSON.stringify(second));
  assert.deepEqual(checkAgentMessage(second, "initialize"), []);
  raw.send({ jsonrpc: "2.0", id: 3, method: "session/list", params: {} });
  assert.ok(Array.isArray((await raw.reply(3)).result?.sessions));
  assert.ok(!raw.messages.some((m) => m.id === 4242 || m.id === "nope"), JSON.stringify(raw.messages));
  await raw.close();
});

test("over the rate limit: RATE_LIMITED errors with retryAfterMs, then close 4101", async () => {
  const raw = await initialized();
  // --rate-limit 10 per 10 s; initialize was the first message. Far more than twice the limit.
  for (let i = 1; i <= 40; i++) raw.send({ jsonrpc: "2.0", id: i, method: "session/list", params: {} });
  const limited = await raw.until((r) => r.messages.find((m) => m.error), "a refusal");
  assert.equal(limited.error.data?.code, "RATE_LIMITED", JSON.stringify(limited));
  assert.equal(typeof limited.error.data?.retryAfterMs, "number");
  assert.deepEqual(checkAgentMessage(limited), []);
  assert.equal((await raw.closed()).code, 4101);
  assert.ok(gateway.alive());
});

test("SIGTERM closes /acp clients with 1001 and answers a running prompt", async () => {
  const own = await startGateway(["--dev", "--turn-grace-ms", "100"]);
  try {
    const raw = await initialized(own);
    raw.send({ jsonrpc: "2.0", id: 1, method: "session/new", params: { cwd: "/tmp", mcpServers: [] } });
    const { sessionId } = (await raw.reply(1)).result;
    raw.send({ jsonrpc: "2.0", id: 2, method: "session/prompt", params: { sessionId, prompt: [{ type: "text", text: "hang" }] } });
    await raw.until(
      (r) => r.messages.some((m) => m.method === "session/update" && m.params.update.sessionUpdate === "user_message_chunk"),
      "the turn to start",
    );
    own.child.kill("SIGTERM");
    const closed = await raw.closed();
    assert.equal(closed.code, 1001, JSON.stringify(closed));
    const answer = raw.messages.find((m) => m.id === 2 && !("method" in m));
    assert.ok(answer, `the prompt was answered before the close: ${JSON.stringify(raw.messages.slice(-3))}`);
    assert.ok(answer.error || answer.result?.stopReason, JSON.stringify(answer));
    for (const message of raw.messages) assert.deepEqual(checkAgentMessage(message), [], JSON.stringify(message));
    const exit = await own.exited;
    assert.equal(exit.code, 0, JSON.stringify(exit));
  } finally {
    await own.stop();
  }
});
