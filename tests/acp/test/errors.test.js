// Malformed input on /acp: bad JSON, batch arrays, unknown methods, invalid params and an
// oversized message each get the right JSON-RPC error (or, for the oversized message, the
// documented close code 1009), every error reply fits ACP's schema, and the gateway goes on
// serving the same connection (when it stays open) and the next one.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway } from "../lib/gateway.js";
import { rawSocket, initializeRequest, connectAcp } from "../lib/acp.js";
import { checkAgentMessage } from "../lib/schema.js";

let gateway;
before(async () => {
  gateway = await startGateway(["--dev", "--rate-limit", "0"]);
});
after(async () => {
  await gateway?.stop();
});

async function initialized() {
  const raw = rawSocket(gateway.url("/acp"));
  await raw.opened;
  raw.send(initializeRequest(0));
  const reply = await raw.reply(0);
  assert.equal(reply.result?.protocolVersion, 1, JSON.stringify(reply));
  return raw;
}

function assertError(message, code, id) {
  assert.equal(message.jsonrpc, "2.0", JSON.stringify(message));
  assert.ok(message.error, `an error reply: ${JSON.stringify(message)}`);
  assert.equal(message.error.code, code, JSON.stringify(message));
  assert.equal(typeof message.error.message, "string");
  assert.ok(!("result" in message));
  assert.deepEqual(message.id, id, JSON.stringify(message));
  assert.deepEqual(checkAgentMessage(message), []);
}

/** The connection still answers a request (session/list). */
async function stillServes(raw, id) {
  raw.send({ jsonrpc: "2.0", id, method: "session/list", params: {} });
  const reply = await raw.reply(id);
  assert.ok(Array.isArray(reply.result?.sessions), JSON.stringify(reply));
}

test("bad JSON answers -32700 with id null, and the connection stays usable", async () => {
  const raw = await initialized();
  raw.send("{ this is not json");
  const error = await raw.until((r) => r.messages.find((m) => m.error), "an error");
  assertError(error, -32700, null);
  await stillServes(raw, 1);
  raw.send("");
  await raw.until((r) => r.messages.filter((m) => m.error?.code === -32700).length === 2, "a second -32700");
  await stillServes(raw, 2);
  await raw.close();
});

test("bad JSON before initialize answers -32700 too", async () => {
  const raw = rawSocket(gateway.url("/acp"));
  await raw.opened;
  raw.send("not json at all");
  const error = await raw.until((r) => r.messages[0], "a reply");
  assertError(error, -32700, null);
  raw.send(initializeRequest(5));
  assert.equal((await raw.reply(5)).result.protocolVersion, 1);
  await raw.close();
});

test("a request before initialize answers -32600, and initialize then works", async () => {
  const raw = rawSocket(gateway.url("/acp"));
  await raw.opened;
  raw.send({ jsonrpc: "2.0", id: 1, method: "session/list", params: {} });
  assertError(await raw.reply(1), -32600, 1);
  raw.send(initializeRequest(2));
  assert.equal((await raw.reply(2)).result?.protocolVersion, 1);
  raw.send(initializeRequest(3));
  assertError(await raw.reply(3), -32600, 3);
  await stillServes(raw, 4);
  await raw.close();
});

test("a batch array answers -32600 (batches are not supported), and the connection stays usable", async () => {
  const raw = await initialized();
  raw.send([
    { jsonrpc: "2.0", id: 10, method: "session/list", params: {} },
    { jsonrpc: "2.0", id: 11, method: "session/list", params: {} },
  ]);
  const error = await raw.until((r) => r.messages.find((m) => m.error), "an error");
  assertError(error, -32600, null);
  // Neither entry was executed.
  assert.ok(!raw.messages.some((m) => m.id === 10 || m.id === 11), JSON.stringify(raw.messages));
  raw.send([]);
  await raw.until((r) => r.messages.filter((m) => m.error?.code === -32600).length === 2, "a -32600 for []");
  await stillServes(raw, 12);
  await raw.close();
});

test("JSON that is not a request object answers -32600", async () => {
  const raw = await initialized();
  const texts = [
    "42",
    '"text"',
    "null",
    '{"jsonrpc":"1.0","id":7,"method":"session/list"}',
    '{"id":8}',
    // JSON-RPC 2.0: params, when present, must be an object or an array.
    '{"jsonrpc":"2.0","id":9,"method":"session/new","params":"not an object"}',
  ];
  for (const [index, text] of texts.entries()) {
    raw.send(text);
    const error = await raw.until(
      (r) => r.messages.filter((m) => m.error?.code === -32600).length === index + 1 && r.messages.at(-1),
      `-32600 for ${text}`,
    );
    assert.equal(error.error.code, -32600, `${text}: ${JSON.stringify(error)}`);
    assert.deepEqual(checkAgentMessage(error), []);
  }
  await stillServes(raw, 20);
  await raw.close();
});

test("an unknown method answers -32601 with the request's id; an unknown notification nothing", async () => {
  const raw = await initialized();
  raw.send({ jsonrpc: "2.0", method: "no/such_notification", params: {} });
  raw.send({ jsonrpc: "2.0", id: "abc", method: "no/such_method", params: {} });
  assertError(await raw.reply("abc"), -32601, "abc");
  raw.send({ jsonrpc: "2.0", id: 31, method: "_diminuendo/nothing", params: {} });
  assertError(await raw.reply(31), -32601, 31);
  await stillServes(raw, 32);
  // Nothing answered the notification: every message so far is a reply to an id we sent.
  assert.ok(
    raw.messages.every((m) => m.id === 0 || m.id === "abc" || m.id === 31 || m.id === 32),
    JSON.stringify(raw.messages),
  );
  await raw.close();
});

test("invalid params answer -32602 with the request's id", async () => {
  const raw = await initialized();
  const cases = [
    { id: 40, method: "session/new", params: { cwd: 42, mcpServers: [] } },
    { id: 41, method: "session/new", params: { cwd: "/tmp", mcpServers: "none" } },
    { id: 42, method: "session/prompt", params: { prompt: [{ type: "text", text: "x" }] } },
    { id: 43, method: "session/prompt", params: { sessionId: "s", prompt: "not an array" } },
    { id: 44, method: "session/load", params: { cwd: "/tmp", mcpServers: [] } },
    { id: 45, method: "session/list", params: { cursor: 17 } },
    { id: 46, method: "session/new", params: { cwd: "relative/path", mcpServers: [] } },
    { id: 48, method: "session/new", params: { cwd: "/tmp", mcpServers: [{ name: 5 }] } },
    { id: 49, method: "initialize", params: { protocolVersion: "1", clientCapabilities: {} } },
  ];
  for (const request of cases) {
    raw.send({ jsonrpc: "2.0", ...request });
    assertError(await raw.reply(request.id), -32602, request.id);
  }
  await stillServes(raw, 47);
  await raw.close();
});

test("a prompt on a session that does not exist is a gateway error with the code in data", async () => {
  const raw = await initialized();
  raw.send({
    jsonrpc: "2.0",
    id: 50,
    method: "session/prompt",
    params: { sessionId: "00000000-0000-4000-8000-000000000000", prompt: [{ type: "text", text: "x" }] },
  });
  const reply = await raw.reply(50);
  assert.ok(reply.error, JSON.stringify(reply));
  assert.ok(![-32700, -32600, -32601, -32602, -32603].includes(reply.error.code), JSON.stringify(reply));
  assert.equal(JSON.stringify(reply.error.data ?? {}).includes("SESSION_NOT_FOUND"), true, JSON.stringify(reply));
  assert.deepEqual(checkAgentMessage(reply), []);
  await raw.close();
});

test("an oversized message closes with 1009, and the gateway serves the next connection", async () => {
  const raw = await initialized();
  const big = JSON.stringify({
    jsonrpc: "2.0",
    id: 60,
    method: "session/new",
    params: { cwd: "/tmp", mcpServers: [], _meta: { pad: "x".repeat(2 * 1024 * 1024) } },
  });
  raw.send(big);
  const closed = await raw.closed();
  assert.equal(closed.code, 1009, JSON.stringify(closed));
  assert.ok(!raw.messages.some((m) => m.id === 60), "the oversized request was not executed");
  assert.ok(gateway.alive());
  const next = await initialized();
  await stillServes(next, 61);
  await next.close();
});

test("the SDK client still works after all of it", async () => {
  const client = connectAcp(gateway);
  await client.initialize();
  const { sessionId } = await client.conn.newSession({ cwd: "/tmp", mcpServers: [] });
  const result = await client.conn.prompt({ sessionId, prompt: [{ type: "text", text: "fine" }] });
  assert.equal(result.stopReason, "end_turn");
  await client.close();
  assert.ok(gateway.alive());
});
