// The HTTP edges of /acp on a gateway that is not in dev mode: the upgrade's answers, origins,
// authentication by `Authorization: Bearer` or the `bearer.<JWT>` subprotocol, and tenant
// isolation between two tenants' ACP clients.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { startGateway } from "../lib/gateway.js";
import { connectAcp, rawSocket, initializeRequest, acp } from "../lib/acp.js";
import { startBridge } from "../lib/bridge.js";

const SECRET = "an-hs256-secret-of-at-least-32-bytes-for-the-tests";
const ORIGIN = "https://app.example.com";

function base64url(value) {
  return Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");
}

function token(claims) {
  const now = Math.floor(Date.now() / 1000);
  const body = `${base64url({ alg: "HS256", typ: "JWT" })}.${base64url({ exp: now + 3600, role: "owner", ...claims })}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

const alice = token({ sub: "alice", tenant_id: "tenant-a" });
const bob = token({ sub: "bob", tenant_id: "tenant-b" });

let gateway;
before(async () => {
  gateway = await startGateway(["--jwt-secret", SECRET, "--allowed-origins", ORIGIN]);
});
after(async () => {
  await gateway?.stop();
});

async function httpGet(path, headers = {}) {
  const response = await fetch(gateway.httpUrl(path), { headers });
  return { status: response.status, headers: response.headers, body: await response.text() };
}

test("GET /acp without an upgrade answers 426 with Upgrade: websocket", async () => {
  const response = await httpGet("/acp");
  assert.equal(response.status, 426);
  assert.equal(response.headers.get("upgrade")?.toLowerCase(), "websocket");
});

test("a wrong path answers 404, for an upgrade too", async () => {
  assert.equal((await httpGet("/acp/x")).status, 404);
  assert.equal((await httpGet("/acpx")).status, 404);
  const raw = rawSocket(gateway.url("/acp/"), { headers: { Authorization: `Bearer ${alice}` } });
  await raw.until((r) => r.refused || r.closeEvent, "the refusal");
  assert.equal(raw.refused?.status, 404, JSON.stringify(raw.refused));
});

test("an upgrade from an origin outside --allowed-origins answers 403", async () => {
  const raw = rawSocket(gateway.url("/acp"), {
    headers: { Authorization: `Bearer ${alice}`, Origin: "https://evil.example.com" },
  });
  await raw.until((r) => r.refused || r.closeEvent, "the refusal");
  assert.equal(raw.refused?.status, 403, JSON.stringify(raw.refused));
  // The allowed origin passes.
  const client = connectAcp(gateway, { headers: { Authorization: `Bearer ${alice}`, Origin: ORIGIN } });
  await client.initialize();
  await client.close();
});

async function refusal(headers) {
  const raw = rawSocket(gateway.url("/acp"), { headers });
  const opened = await raw.opened.then(
    () => true,
    () => false,
  );
  if (opened) raw.send(initializeRequest(1));
  await raw.until((r) => r.refused || r.closeEvent, "a refusal or a close");
  assert.ok(
    !raw.messages.some((m) => m.id === 1 && m.result),
    `no initialize answered without authentication: ${JSON.stringify(raw.messages)}`,
  );
  return raw;
}

test("without a token: 401 with WWW-Authenticate: Bearer, no upgrade", async () => {
  const raw = await refusal({});
  assert.equal(raw.refused?.status, 401, JSON.stringify(raw.refused ?? raw.closeEvent));
  assert.equal(raw.refused.headers["www-authenticate"], "Bearer");
});

test("with a bad token: the upgrade, then close 4001", async () => {
  for (const authorization of ["Bearer example-token", `Bearer ${alice.slice(0, -4)}AAAA`]) {
    const raw = await refusal({ Authorization: authorization });
    assert.equal(raw.closeEvent?.code, 4001, JSON.stringify(raw.refused ?? raw.closeEvent));
  }
  assert.ok(gateway.alive());
});

test("a bearer token in the Authorization header authenticates", async () => {
  const client = connectAcp(gateway, { headers: { Authorization: `Bearer ${alice}` } });
  const init = await client.initialize();
  assert.equal(init.agentCapabilities.loadSession, true);
  const { sessionId } = await client.conn.newSession({ cwd: "/tmp", mcpServers: [] });
  const result = await client.conn.prompt({ sessionId, prompt: [{ type: "text", text: "as alice" }] });
  assert.equal(result.stopReason, "end_turn");
  await client.close();
});

test("a bearer.<JWT> subprotocol authenticates (browsers)", async () => {
  // The token next to `acp.v1`, which the server selects (a browser fails a handshake whose
  // answer selects none of the offered subprotocols, and the token must not be echoed).
  const raw = rawSocket(gateway.url("/acp"), { protocols: ["acp.v1", `bearer.${alice}`] });
  await raw.opened;
  assert.equal(raw.socket.protocol, "acp.v1", "the selected subprotocol is not the token");
  // The 101 names the connection (the transports proposal, as the SDK's reference server does)
  // and sets no cookie.
  assert.match(raw.upgrade.headers["acp-connection-id"] ?? "", /^[0-9a-f-]{36}$/, JSON.stringify(raw.upgrade));
  assert.equal(raw.upgrade.headers["set-cookie"], undefined);
  raw.send(initializeRequest(1));
  assert.equal((await raw.reply(1)).result?.protocolVersion, 1);
  await raw.close();
});

test("a tenant's sessions are invisible to another tenant", async () => {
  const a = connectAcp(gateway, { headers: { Authorization: `Bearer ${alice}` } });
  await a.initialize();
  const { sessionId } = await a.conn.newSession({ cwd: "/tmp", mcpServers: [] });
  await a.conn.prompt({ sessionId, prompt: [{ type: "text", text: "secret of tenant a" }] });
  const listedA = await a.conn.listSessions({});
  assert.ok(listedA.sessions.some((s) => s.sessionId === sessionId));

  const b = connectAcp(gateway, { headers: { Authorization: `Bearer ${bob}` } });
  await b.initialize();
  const listedB = await b.conn.listSessions({});
  assert.ok(!listedB.sessions.some((s) => s.sessionId === sessionId), JSON.stringify(listedB));
  await assert.rejects(b.conn.loadSession({ sessionId, cwd: "/tmp", mcpServers: [] }), (error) => {
    assert.equal(typeof error.code, "number");
    return true;
  });
  await assert.rejects(b.conn.prompt({ sessionId, prompt: [{ type: "text", text: "intrude" }] }));
  assert.ok(!JSON.stringify(b.received).includes("secret of tenant a"), "nothing of tenant a reached tenant b");
  await a.close();
  await b.close();
});

test("a viewer may load a session of its tenant but not prompt it or create one", async () => {
  const viewer = token({ sub: "carol", tenant_id: "tenant-a", role: "viewer" });
  const a = connectAcp(gateway, { headers: { Authorization: `Bearer ${alice}` } });
  await a.initialize();
  const { sessionId } = await a.conn.newSession({ cwd: "/tmp", mcpServers: [] });
  await a.conn.prompt({ sessionId, prompt: [{ type: "text", text: "for everyone to read" }] });
  const v = connectAcp(gateway, { headers: { Authorization: `Bearer ${viewer}` } });
  await v.initialize();
  await v.conn.loadSession({ sessionId, cwd: "/tmp", mcpServers: [] });
  assert.ok(JSON.stringify(v.updates).includes("for everyone to read"));
  const forbidden = (error) => {
    assert.equal(error.code, -32040, JSON.stringify(error));
    assert.equal(error.data?.code, "FORBIDDEN");
    return true;
  };
  await assert.rejects(v.conn.prompt({ sessionId, prompt: [{ type: "text", text: "may I?" }] }), forbidden);
  await assert.rejects(v.conn.newSession({ cwd: "/tmp", mcpServers: [] }), forbidden);
  await a.close();
  await v.close();
});

test("the stdio bridge authenticates with ACP_TOKEN (the bearer.<JWT> subprotocol)", async () => {
  const bridge = startBridge(gateway.url("/acp"), { ACP_TOKEN: alice });
  try {
    await bridge.conn.initialize({ protocolVersion: acp.PROTOCOL_VERSION, clientCapabilities: {} });
    const listed = await bridge.conn.listSessions({});
    assert.ok(Array.isArray(listed.sessions));
    assert.equal((await bridge.end()).code, 0, bridge.stderr());
  } finally {
    await bridge.kill();
  }
  // Without the token the gateway refuses the upgrade, and the bridge exits with an error.
  const refused = startBridge(gateway.url("/acp"), { ACP_TOKEN: "" });
  try {
    const exit = await refused.exited;
    assert.notEqual(exit.code, 0);
  } finally {
    await refused.kill();
  }
});
