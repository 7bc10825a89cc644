// Fakes for the unit tests: timers that run only when advanced, and a WebSocket the test plays
// the gateway through.

/** Timers that fire only in `advance(ms)`, in due order; every delay asked for is recorded. */
export class FakeTimers {
  now = 0;
  #next = 1;
  #pending = new Map();
  delays = [];

  setTimeout = (callback, ms) => {
    const id = this.#next++;
    this.delays.push(ms);
    this.#pending.set(id, { at: this.now + ms, callback, id });
    return id;
  };

  clearTimeout = (id) => {
    this.#pending.delete(id);
  };

  /** Moves time forward by `ms`, firing what falls due (also what those schedule). */
  advance(ms) {
    const end = this.now + ms;
    for (;;) {
      const due = [...this.#pending.values()].filter((t) => t.at <= end).sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!due) break;
      this.#pending.delete(due.id);
      this.now = due.at;
      due.callback();
    }
    this.now = end;
  }

  /** The delays of the timers still pending. */
  pendingDelays() {
    return [...this.#pending.values()].map((t) => t.at - this.now);
  }
}

/** A WebSocket class whose instances the test drives as the gateway. */
export function fakeWebSocketClass() {
  const sockets = [];
  class FakeWebSocket {
    static sockets = sockets;
    readyState = 0;
    onopen = null;
    onmessage = null;
    onclose = null;
    onerror = null;
    sent = [];
    closedByClient = undefined;

    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      sockets.push(this);
    }

    send(text) {
      if (this.readyState !== 1) throw new Error("not open");
      this.sent.push(JSON.parse(text));
    }

    close(code, reason) {
      this.closedByClient = { code, reason };
      this.readyState = 3;
    }

    // ---- the test's side ----

    /** The gateway sends `message`. */
    deliver(message) {
      this.readyState = 1;
      this.onmessage?.({ data: JSON.stringify(message) });
    }

    /** The connection closes with `code`. */
    serverClose(code, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }

    /** welcome, connected, authenticated (dev mode). */
    handshake({ requiresAuth = false, identity = DEV_IDENTITY, heartbeatIntervalMs = 30_000 } = {}) {
      this.deliver({ type: "welcome", protocolVersion: 1, requiresAuth });
      this.deliver({ type: "connected", clientId: "c1", heartbeatIntervalMs, ts: 1 });
      if (!requiresAuth) this.deliver({ type: "authenticated", identity });
    }

    /** The last request of `type` the client sent. */
    lastSent(type) {
      return [...this.sent].reverse().find((message) => message.type === type);
    }

    /** Answers the last request of `type` with `reply` (its requestId added). */
    reply(type, reply) {
      const request = this.lastSent(type);
      if (!request) throw new Error(`the client sent no ${type}`);
      this.deliver({ ...reply, requestId: request.requestId });
      return request;
    }
  }
  return FakeWebSocket;
}

export const DEV_IDENTITY = { userId: "dev-user-001", email: "developer@example.com", tenantId: "dev", role: "owner" };

export function meta(id, lastSeq = 0, epoch = "e1") {
  return {
    id,
    tenantId: "dev",
    name: "New session",
    agentType: "echo",
    status: "inactive",
    archived: false,
    createdBy: "dev-user-001",
    createdAt: 1,
    updatedAt: 1,
    lastSeq,
    epoch,
  };
}

export function delta(sessionId, seq, text = `d${seq}`) {
  return { type: "text_delta", sessionId, seq, ts: seq, turnId: "t1", text };
}

/** Lets pending promise callbacks run. */
export function flush() {
  return new Promise((resolve) => setImmediate(resolve));
}
