// The client against the real gateway binary (DIMINUENDO_BIN, default target/debug/diminuendo-tokio)
// in dev mode with its built-in echo agent: a full turn, a permission answered, errors, and the
// gateway stopped (SIGTERM, and SIGKILL) and started again on the same data directory while a turn
// streams. Every gateway is stopped by its PID in an after hook.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { fileURLToPath } from "node:url";
import { after, afterEach, before, describe, test } from "node:test";
import WebSocket from "ws";

import { DiminuendoClient, GatewayError } from "../dist/index.js";
import { binary, makeDataDir, removeDataDir, startGateway, startProxy, waitFor } from "./gateway.mjs";

const gateways = new Set();
const clients = new Set();
const dataDirs = new Set();
const proxies = new Set();

async function gateway(options) {
  const started = await startGateway(options);
  gateways.add(started);
  return started;
}

function client(options) {
  const made = new DiminuendoClient({ WebSocket, requestTimeoutMs: 20_000, ...options });
  clients.add(made);
  return made;
}

function dataDir() {
  const dir = makeDataDir();
  dataDirs.add(dir);
  return dir;
}

afterEach(async () => {
  for (const made of clients) made.close();
  clients.clear();
  for (const proxy of proxies) await proxy.close();
  proxies.clear();
  for (const started of gateways) await started.stop("SIGKILL");
  gateways.clear();
});

after(() => {
  for (const dir of dataDirs) removeDataDir(dir);
});

const SECRET = "a-test-secret-of-at-least-32-bytes-long";

/** An HS256 JWT signed with `secret`. */
function jwt(claims, secret = SECRET) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ exp: Math.floor(Date.now() / 1000) + 3600, ...claims })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

/** `diminuendo_events_persisted_total` from the gateway's /metrics. */
async function eventsPersisted(address) {
  const text = await (await fetch(`http://${address}/metrics`)).text();
  const match = /^diminuendo_events_persisted_total (\d+)$/m.exec(text);
  if (!match) throw new Error(`no diminuendo_events_persisted_total in /metrics:\n${text}`);
  return Number(match[1]);
}

/** The echo agent's `stream N SIZE` text: byte i is 'a' + i % 26. */
function streamText(count, size) {
  let text = "";
  for (let i = 0; i < count * size; i++) text += String.fromCharCode(97 + (i % 26));
  return text;
}

/** The echo agent's `slow N MS` text. */
function slowText(count) {
  let text = "";
  for (let i = 1; i <= count; i++) text += `chunk ${i} of ${count}\n`;
  return text;
}

/** Collects a stream's events; `turnEnd(turnId)` waits for that turn's end. */
function collect(stream) {
  const events = [];
  const reloads = [];
  stream.on("event", (event) => events.push(event));
  stream.on("reload", (info) => reloads.push(info));
  return {
    events,
    reloads,
    turnEnd(turnId, timeoutMs = 30_000) {
      return waitFor(() => events.find((e) => e.turnId === turnId && (e.type === "turn_complete" || e.type === "turn_error")), {
        timeoutMs,
        what: `the end of turn ${turnId}`,
      }).then(() => events.find((e) => e.turnId === turnId && (e.type === "turn_complete" || e.type === "turn_error")));
    },
    text(turnId) {
      return events
        .filter((e) => e.type === "text_delta" && e.turnId === turnId)
        .map((e) => e.text)
        .join("");
    },
  };
}

/** Every seq from `from` to the last one, once each, in order. */
function assertContiguous(events, from = 1) {
  const seqs = events.map((e) => e.seq);
  const expected = Array.from({ length: seqs.length }, (_, i) => from + i);
  assert.deepEqual(seqs, expected, `seqs ${seqs.join(",")} have a gap or a duplicate`);
}

describe(`the client against ${binary}`, () => {
  before(() => {
    assert.ok(binary, "DIMINUENDO_BIN");
  });

  test("a full turn: create, join, run, stream to the end; tenant notification; history", async () => {
    const gw = await gateway({ dataDir: dataDir() });
    const c = client({ url: gw.url });
    const identity = await c.connect();
    assert.equal(identity.userId, "dev-user-001");
    assert.equal(c.state, "open");
    const created = [];
    c.on("session_created", (session) => created.push(session));
    const session = await c.createSession({ agentType: "echo", name: "full turn" });
    assert.equal(session.name, "full turn");
    await waitFor(() => created.some((s) => s.id === session.id), { what: "the session_created broadcast" });
    assert.ok((await c.listSessions()).some((s) => s.id === session.id));

    const stream = c.session(session.id);
    const seen = collect(stream);
    const joined = await stream.join();
    assert.equal(joined.lastSeq, 0);
    const turnId = await c.runTurn(session.id, "stream 50 8");
    const end = await seen.turnEnd(turnId);
    assert.equal(end.type, "turn_complete");
    assert.equal(end.stopReason, "end_turn");
    assert.equal(seen.text(turnId), streamText(50, 8));
    assert.equal(end.finalText, streamText(50, 8));
    assertContiguous(seen.events);
    assert.ok(seen.events.some((e) => e.type === "turn_started" && e.turnId === turnId && e.text === "stream 50 8"));
    assert.deepEqual(seen.reloads, []);

    // The stream's events are the gateway's log, exactly.
    const log = await c.getEvents(session.id, 0);
    const upTo = log.events.filter((e) => e.seq <= stream.lastSeq);
    assert.deepEqual(seen.events.slice(0, upTo.length), upTo);

    const history = await c.getHistory(session.id);
    assert.equal(history.turns.length, 1);
    assert.equal(history.turns[0].turnId, turnId);
    assert.equal(history.turns[0].finalText, streamText(50, 8));
  });

  test("the README's example (examples/hello.mjs) talks to the agent", async () => {
    const gw = await gateway({ dataDir: dataDir() });
    const example = fileURLToPath(new URL("../examples/hello.mjs", import.meta.url));
    // spawnSync kills the example by its PID when the timeout passes.
    const run = spawnSync(process.execPath, [example, gw.url], { encoding: "utf8", timeout: 20_000 });
    assert.equal(run.status, 0, run.stderr);
    assert.equal(run.stdout, "Hello, agent!");
  });

  test("close() while the connection opens: no stray error, connect() rejects, a new connect() works", async () => {
    const gw = await gateway({ dataDir: dataDir() });
    const c = client({ url: gw.url });
    const connecting = c.connect();
    c.close();
    await assert.rejects(connecting, (error) => error.name === "ConnectionClosedError");
    assert.equal(c.state, "closed");
    await c.connect();
    assert.equal(c.state, "open");
    assert.equal((await c.ping()).type, "pong");
  });

  test("with a token: in the bearer subprotocol, in an authenticate message; a bad one stops the client", async () => {
    const gw = await gateway({ dataDir: dataDir(), dev: false, args: ["--jwt-secret", SECRET] });
    const claims = { sub: "user-7", email: "u7@example.com", tenant_id: "acme", role: "member" };
    const expected = { userId: "user-7", email: "u7@example.com", tenantId: "acme", role: "member" };

    const viaSubprotocol = client({ url: gw.url, token: jwt(claims) });
    assert.deepEqual(await viaSubprotocol.connect(), expected);
    assert.equal(viaSubprotocol.welcome.requiresAuth, true);
    const session = await viaSubprotocol.createSession();
    assert.equal(session.tenantId, "acme");

    let calls = 0;
    const viaMessage = client({ url: gw.url, token: async () => (calls++, jwt(claims)), tokenVia: "message" });
    assert.deepEqual(await viaMessage.connect(), expected);
    assert.equal(calls, 1);
    assert.ok((await viaMessage.listSessions()).some((s) => s.id === session.id));

    const errors = [];
    const bad = client({ url: gw.url, token: jwt(claims, "another-secret-of-at-least-32-bytes!!") });
    bad.on("error", (error) => errors.push(error));
    await assert.rejects(bad.connect(), (error) => error instanceof GatewayError && error.code === "AUTH_FAILED");
    assert.equal(bad.state, "closed");
    assert.ok(errors.some((error) => error instanceof GatewayError && error.code === "AUTH_FAILED"));

    const none = client({ url: gw.url });
    await assert.rejects(none.connect(), (error) => error instanceof GatewayError && error.code === "NOT_AUTHENTICATED");
    assert.equal(none.state, "closed");
  });

  test("a permission request answered with one of its options", async () => {
    const gw = await gateway({ dataDir: dataDir() });
    const c = client({ url: gw.url });
    await c.connect();
    const session = await c.createSession();
    const stream = c.session(session.id);
    const seen = collect(stream);
    await stream.join();
    const turnId = await c.runTurn(session.id, "permission");
    await waitFor(() => seen.events.some((e) => e.type === "permission_requested"), { what: "permission_requested" });
    const asked = seen.events.find((e) => e.type === "permission_requested");
    assert.equal(asked.turnId, turnId);
    assert.deepEqual(
      asked.options.map((o) => o.optionId),
      ["allow", "reject"],
    );
    await c.answerQuestion(session.id, asked.questionId, "allow");
    const end = await seen.turnEnd(turnId);
    assert.equal(end.type, "turn_complete");
    assert.equal(seen.text(turnId), "permission: allow");
    const resolved = seen.events.find((e) => e.type === "permission_resolved");
    assert.equal(resolved.questionId, asked.questionId);
    assert.equal(resolved.optionId, "allow");
    // A second answer is refused with the protocol's code.
    await assert.rejects(c.answerQuestion(session.id, asked.questionId, "reject"), (error) => {
      assert.ok(error instanceof GatewayError);
      assert.equal(error.code, "INVALID_STATE");
      return true;
    });
    assertContiguous(seen.events);
  });

  test("errors carry the protocol's code; rename, archive and delete with their notifications", async () => {
    const gw = await gateway({ dataDir: dataDir() });
    const c = client({ url: gw.url });
    await c.connect();
    await assert.rejects(c.runTurn("00000000-0000-0000-0000-000000000000", "hi"), (error) => {
      assert.ok(error instanceof GatewayError);
      assert.equal(error.code, "SESSION_NOT_FOUND");
      return true;
    });
    await assert.rejects(c.createSession({ agentType: "no-such-agent" }), (error) => error instanceof GatewayError && error.code === "AGENT_UNAVAILABLE");
    const session = await c.createSession();
    await assert.rejects(c.renameSession(session.id, ""), (error) => error instanceof GatewayError && error.code === "INVALID_MESSAGE");
    const renamed = await c.renameSession(session.id, "renamed");
    assert.equal(renamed.name, "renamed");
    const archived = await c.archiveSession(session.id);
    assert.equal(archived.archived, true);
    assert.ok(!(await c.listSessions()).some((s) => s.id === session.id));
    assert.ok((await c.listSessions({ includeArchived: true })).some((s) => s.id === session.id));
    const deleted = [];
    c.on("session_deleted", (id) => deleted.push(id));
    await c.deleteSession(session.id);
    await waitFor(() => deleted.includes(session.id), { what: "session_deleted" });
  });

  test("the connection cut while a turn streams: the re-join replays what was missed, no duplicate, no gap", async () => {
    const gw = await gateway({ dataDir: dataDir() });
    const proxy = await startProxy(gw.address);
    proxies.add(proxy);
    const c = client({ url: proxy.url, reconnect: { initialDelayMs: 20, maxDelayMs: 100 } });
    const observer = client({ url: gw.url });
    await Promise.all([c.connect(), observer.connect()]);
    const session = await c.createSession();
    const stream = c.session(session.id);
    const seen = collect(stream);
    const joins = [];
    stream.on("joined", (reply) => joins.push(reply));
    await stream.join();
    const turnId = await c.runTurn(session.id, "slow 30 30");
    await waitFor(() => seen.events.filter((e) => e.type === "text_delta").length >= 3, { what: "the turn to stream" });

    // Cut the link and keep it down until the session has moved on by a few events.
    proxy.refuse(true);
    proxy.cut();
    await waitFor(() => c.state === "reconnecting", { what: "the client to notice" });
    // Read once the client saw the close: bytes already in its socket buffer may still have come.
    const cutAt = stream.lastSeq;
    let lastSeq = cutAt;
    await waitFor(
      () => {
        observer.getEvents(session.id, 0).then((page) => (lastSeq = page.lastSeq), () => {});
        return lastSeq >= cutAt + 3;
      },
      { what: "the session to move on", poll: 50 },
    );
    proxy.refuse(false);

    const end = await seen.turnEnd(turnId);
    assert.equal(end.type, "turn_complete");
    assert.equal(seen.text(turnId), slowText(30));
    assertContiguous(seen.events);
    assert.deepEqual(seen.reloads, []);
    const resumed = joins[joins.length - 1];
    assert.equal(resumed.recovered, true);
    assert.ok(resumed.events.length >= 3, `the re-join replayed ${resumed.events.length} events`);
    assert.equal(resumed.events[0].seq, cutAt + 1);
    const log = await c.getEvents(session.id, 0);
    assert.deepEqual(seen.events, log.events.slice(0, seen.events.length));
  });

  test("SIGTERM while a turn streams, the gateway started again on the same data directory: no duplicate, no gap", async () => {
    const dir = dataDir();
    const first = await gateway({ dataDir: dir });
    const address = first.address;
    const c = client({ url: `ws://${address}/ws`, reconnect: { initialDelayMs: 50, maxDelayMs: 400 } });
    const states = [];
    c.on("state", (state) => states.push(state));
    const shutdowns = [];
    const reconnects = [];
    c.on("shutdown", (message) => shutdowns.push(message));
    c.on("reconnect", (info) => reconnects.push(info));
    await c.connect();
    const session = await c.createSession();
    const stream = c.session(session.id);
    const seen = collect(stream);
    await stream.join();
    const turnId = await c.runTurn(session.id, "slow 30 60");
    await waitFor(() => seen.events.filter((e) => e.type === "text_delta").length >= 3, { what: "the turn to stream" });

    await first.stop("SIGTERM");
    assert.equal((await first.exited).code, 0, `the gateway's shutdown log:\n${first.log()}`);
    assert.equal(shutdowns.length, 1);
    assert.equal(reconnects[0].delayMs, shutdowns[0].reconnectAfterMs);
    const second = await gateway({ dataDir: dir, listen: address });
    await waitFor(() => c.state === "open" && states.includes("catching-up"), { what: "the client to reconnect and catch up" });

    // The turn ended in the first gateway's grace (the whole text) or was cut at the shutdown.
    const end = await seen.turnEnd(turnId);
    if (end.type === "turn_complete") assert.equal(seen.text(turnId), slowText(30));
    else {
      assert.equal(end.code, "SHUTTING_DOWN");
      assert.ok(slowText(30).startsWith(seen.text(turnId)));
    }

    // The session goes on in the second gateway.
    const next = await c.runTurn(session.id, "stream 20 8");
    const nextEnd = await seen.turnEnd(next);
    assert.equal(nextEnd.type, "turn_complete");
    assert.equal(seen.text(next), streamText(20, 8));

    assert.deepEqual(seen.reloads, [], "a clean stop keeps the epoch: the resume is recovered");
    assertContiguous(seen.events);
    const log = await c.getEvents(session.id, 0);
    assert.deepEqual(seen.events, log.events.slice(0, seen.events.length));
    assert.ok(states.includes("reconnecting"));
    await second.stop("SIGTERM");
  });

  test("SIGKILL while a turn streams: the new epoch is reported as a reload, and reload() gives the whole log", async () => {
    const dir = dataDir();
    const first = await gateway({ dataDir: dir });
    const address = first.address;
    const c = client({ url: `ws://${address}/ws`, reconnect: { initialDelayMs: 50, maxDelayMs: 400 } });
    await c.connect();
    const session = await c.createSession();
    const stream = c.session(session.id);
    const seen = collect(stream);
    await stream.join();
    const turnId = await c.runTurn(session.id, "slow 50 50");
    await waitFor(() => seen.events.filter((e) => e.type === "text_delta").length >= 3, { what: "the turn to stream" });
    // Events are published before storage commits them, and a crash loses what was not committed
    // (then a turn_started may be lost with its turn). Kill once the turn's start is on disk,
    // which /metrics counts (this gateway has no other session).
    const started = seen.events.find((e) => e.type === "turn_started" && e.turnId === turnId);
    let persisted = 0;
    await waitFor(
      () => {
        eventsPersisted(address).then((count) => (persisted = count), () => {});
        return persisted >= started.seq;
      },
      { what: "the turn's start to be committed", poll: 25 },
    );
    await first.stop("SIGKILL");
    await gateway({ dataDir: dir, listen: address });
    await waitFor(() => seen.reloads.length > 0 && c.state === "open", { what: "the reload report" });
    const [reload] = seen.reloads;
    assert.equal(reload.reason, "not-recovered");
    assert.notEqual(reload.epoch, session.epoch);
    assert.equal(stream.epoch, reload.epoch);

    const all = await stream.reload({ pageSize: 7 });
    assertContiguous(all);
    assert.equal(all[all.length - 1].seq, stream.lastSeq);
    const interrupted = all.find((e) => e.type === "turn_error" && e.turnId === turnId);
    assert.ok(interrupted, "the cut-off turn is closed at recovery");
    assert.equal(interrupted.code, "INTERRUPTED");
    assert.equal(all[0].type, "session_state");
    assert.ok(all.some((e) => e.type === "turn_started" && e.turnId === turnId));

    // Live events go on after the reload, contiguous with it.
    const afterReload = seen.events.length;
    const next = await c.runTurn(session.id, "stream 3 4");
    await seen.turnEnd(next);
    const live = seen.events.slice(afterReload);
    assertContiguous(live, all[all.length - 1].seq + 1);
  });
});
