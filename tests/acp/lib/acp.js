// ACP clients for the tests: the SDK's `ClientSideConnection` over the SDK's
// `createWebSocketStream` (with the `ws` package), its stream tapped so that every message the
// gateway sends is recorded and checked against the ACP JSON Schema; a raw `ws` client for
// malformed input; and a plain `/ws` client of the gateway's own protocol.
import assert from "node:assert/strict";
import WebSocket from "ws";
import * as acp from "@agentclientprotocol/sdk";
import { createWebSocketStream } from "@agentclientprotocol/sdk/experimental/ws-client";
import { checkAgentMessage } from "./schema.js";

export const DEFAULT_TIMEOUT_MS = 20_000;
export { acp };

/**
 * How a session names its agent type in `session/new` (the issue: "agent type from `_meta`"):
 * namespaced as the gateway's own `_meta` (docs/ACP.md; `_meta.agentType` is accepted too).
 */
export function agentTypeMeta(agentType) {
  return { diminuendo: { agentType } };
}

/** Waiters on a growing list: resolve when `predicate(list)` holds, reject at a deadline. */
class Watch {
  constructor() {
    this.waiters = new Set();
  }
  notify() {
    for (const waiter of [...this.waiters]) waiter();
  }
  until(predicate, what, timeoutMs = DEFAULT_TIMEOUT_MS, describe = () => "") {
    return new Promise((resolve, reject) => {
      const check = () => {
        let value;
        try {
          value = predicate();
        } catch (error) {
          cleanup();
          reject(error);
          return;
        }
        if (value) {
          cleanup();
          resolve(value);
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}${describe()}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }
}

/**
 * An ACP client connected to `gateway` at `/acp` (or `options.url`).
 * - `updates`: every `session/update`'s params, in order of arrival;
 * - `received`: every message the gateway sent (parsed), in order;
 * - `schemaProblems`: violations of the ACP schema among them (checked at `close()`);
 * - `permissions`: every `session/request_permission`'s params; `options.onPermission(params)`
 *   answers them (default: the first `allow_once`/`allow_always` option).
 */
export function connectAcp(gateway, options = {}) {
  const url = options.url ?? gateway.url("/acp");
  const base = createWebSocketStream(url, {
    WebSocket,
    headers: options.headers,
    protocols: options.protocols,
    cookieStore: options.cookieStore,
  });
  const client = {
    updates: [],
    received: [],
    sent: [],
    permissions: [],
    schemaProblems: [],
    watch: new Watch(),
    closed: false,
  };
  const methodsById = new Map();
  const tapIn = new TransformStream({
    transform(message, controller) {
      client.received.push(message);
      let method;
      if (message && typeof message === "object" && "id" in message && !("method" in message)) {
        method = methodsById.get(JSON.stringify(message.id));
      }
      for (const problem of checkAgentMessage(message, method)) {
        client.schemaProblems.push(`${problem} in ${JSON.stringify(message).slice(0, 400)}`);
      }
      controller.enqueue(message);
      client.watch.notify();
    },
    flush() {
      client.closed = true;
      client.watch.notify();
    },
  });
  const writer = base.writable.getWriter();
  const tapOut = new WritableStream({
    async write(message) {
      client.sent.push(message);
      if (message && typeof message === "object" && "method" in message && "id" in message) {
        methodsById.set(JSON.stringify(message.id), message.method);
      }
      await writer.write(message);
    },
    async close() {
      await writer.close();
    },
    async abort(reason) {
      await writer.abort(reason);
    },
  });
  const stream = { readable: base.readable.pipeThrough(tapIn), writable: tapOut };
  const onPermission =
    options.onPermission ??
    ((params) => {
      const allow = params.options.find((o) => o.kind === "allow_once" || o.kind === "allow_always");
      return { outcome: { outcome: "selected", optionId: (allow ?? params.options[0]).optionId } };
    });
  client.conn = new acp.ClientSideConnection(
    () => ({
      async sessionUpdate(params) {
        client.updates.push(params);
        client.watch.notify();
      },
      async requestPermission(params) {
        client.permissions.push(params);
        client.watch.notify();
        return await onPermission(params);
      },
    }),
    stream,
  );
  client.conn.signal.addEventListener("abort", () => {
    client.closed = true;
    client.watch.notify();
  });

  client.until = (predicate, what, timeoutMs) =>
    client.watch.until(() => predicate(client), what, timeoutMs, () =>
      `; updates so far: ${JSON.stringify(client.updates).slice(-1500)}`,
    );

  /** `initialize` with protocol version 1 (the ACP version the SDK speaks). */
  client.initialize = (params = {}) =>
    client.conn.initialize({
      protocolVersion: acp.PROTOCOL_VERSION,
      clientCapabilities: {},
      clientInfo: { name: "diminuendo-acp-tests", version: "0.0.0" },
      ...params,
    });

  /** Closes the socket and asserts that everything the gateway sent fits the ACP schema. */
  client.close = async () => {
    try {
      await stream.writable.close();
    } catch {
      // already closed by the server
    }
    await client.watch.until(() => client.closed, "the connection to close", 5_000);
    assert.deepEqual(client.schemaProblems, [], "messages the gateway sent on /acp break the ACP schema");
  };
  return client;
}

/** The text of consecutive `agent_message_chunk`s among `updates` (of one session). */
export function agentText(updates, kind = "agent_message_chunk") {
  return updates
    .filter((u) => u.update.sessionUpdate === kind && u.update.content?.type === "text")
    .map((u) => u.update.content.text)
    .join("");
}

/**
 * The updates of a session without `_meta` and with adjacent text chunks of one kind merged,
 * so that two sequences can be compared whatever their chunking.
 */
export function normalizeUpdates(updates) {
  const out = [];
  for (const params of updates) {
    const update = structuredClone(params.update);
    delete update._meta;
    if (update.content && typeof update.content === "object") delete update.content._meta;
    const last = out[out.length - 1];
    const chunk = /_chunk$/.test(update.sessionUpdate) && update.content?.type === "text";
    if (chunk && last && last.sessionUpdate === update.sessionUpdate && last.content?.type === "text") {
      last.content.text += update.content.text;
      continue;
    }
    out.push(update);
  }
  return out;
}

// ------------------------------------------------------------------------ raw WebSocket

/**
 * A raw WebSocket (the `ws` package) to `url`: every text message parsed into `messages`,
 * `close` resolved with `{code, reason}` when the socket closes, `unexpected` with the HTTP
 * response when the server refused the upgrade.
 */
export function rawSocket(url, { headers, protocols, maxPayload, autoPong = true } = {}) {
  const socket = new WebSocket(url, protocols, { headers, perMessageDeflate: false, maxPayload, autoPong });
  const raw = { socket, messages: [], texts: [], watch: new Watch(), closeEvent: null, refused: null, upgrade: null };
  socket.on("upgrade", (response) => {
    raw.upgrade = { status: response.statusCode, headers: response.headers };
  });
  socket.on("message", (data, isBinary) => {
    const text = isBinary ? null : data.toString("utf8");
    raw.texts.push(text);
    try {
      raw.messages.push(text === null ? { binary: true } : JSON.parse(text));
    } catch {
      raw.messages.push({ unparsable: text });
    }
    raw.watch.notify();
  });
  socket.on("close", (code, reason) => {
    raw.closeEvent = { code, reason: reason.toString() };
    raw.watch.notify();
  });
  let refuse;
  // With this listener `ws` leaves the refused request to us: read the answer, then end it.
  socket.on("unexpected-response", (request, response) => {
    const chunks = [];
    const done = (body) => {
      if (raw.refused) return;
      raw.refused = { status: response.statusCode, headers: response.headers, body };
      request.destroy();
      refuse?.(new Error(`upgrade refused with ${response.statusCode}`));
      raw.watch.notify();
    };
    response.on("data", (chunk) => chunks.push(chunk));
    response.on("end", () => done(Buffer.concat(chunks).toString("utf8")));
    response.on("error", () => done(""));
  });
  socket.on("error", (error) => {
    raw.error = error;
    raw.watch.notify();
  });
  raw.opened = new Promise((resolve, reject) => {
    refuse = reject;
    socket.once("open", resolve);
    socket.once("error", reject);
    socket.once("close", () => reject(new Error("closed before open")));
  });
  raw.opened.catch(() => undefined);
  raw.send = (value) => socket.send(typeof value === "string" ? value : JSON.stringify(value));
  raw.until = (predicate, what, timeoutMs) =>
    raw.watch.until(() => predicate(raw), what, timeoutMs, () =>
      `; received: ${JSON.stringify(raw.messages).slice(-1500)}; close: ${JSON.stringify(raw.closeEvent)}; refused: ${JSON.stringify(raw.refused)}`,
    );
  /** The reply with this id (waits for it). */
  raw.reply = (id, timeoutMs) =>
    raw.until(
      (r) => r.messages.find((m) => m && m.id === id && !("method" in m)),
      `the reply to id ${JSON.stringify(id)}`,
      timeoutMs,
    );
  /** The first message after the first `count` ones (waits for it). */
  raw.nth = (index, timeoutMs) =>
    raw.until((r) => r.messages.length > index && { value: r.messages[index] }, `message #${index}`, timeoutMs).then(
      (found) => found.value,
    );
  raw.closed = () => raw.until((r) => r.closeEvent, "the socket to close");
  raw.close = async () => {
    if (!raw.closeEvent) {
      socket.close();
      await raw.closed();
    }
  };
  return raw;
}

/** An `initialize` request object. */
export function initializeRequest(id = 0, protocolVersion = acp.PROTOCOL_VERSION) {
  return {
    jsonrpc: "2.0",
    id,
    method: "initialize",
    params: { protocolVersion, clientCapabilities: {} },
  };
}

// --------------------------------------------------------------------------- /ws client

/** A client of the gateway's own protocol on `/ws` (docs/PROTOCOL.md), authenticated. */
export async function connectWs(gateway, { headers, protocols } = {}) {
  const raw = rawSocket(gateway.url("/ws"), { headers, protocols: protocols ?? ["diminuendo.v1"] });
  await raw.opened;
  await raw.until((r) => r.messages.some((m) => m.type === "authenticated"), "authenticated");
  let next = 0;
  raw.call = async (message) => {
    const requestId = `r${next++}`;
    raw.send({ ...message, requestId });
    const reply = await raw.until(
      (r) => r.messages.find((m) => m.requestId === requestId),
      `the reply to ${message.type}`,
    );
    return reply;
  };
  /** Session events of `sessionId` (not replies), in order. */
  raw.events = (sessionId) =>
    raw.messages.filter((m) => m.sessionId === sessionId && typeof m.seq === "number" && !m.requestId);
  return raw;
}
