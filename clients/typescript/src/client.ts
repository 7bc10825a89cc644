import { backoffDelay, DEFAULT_BACKOFF } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { ConnectionClosedError, DiminuendoError, GatewayError, RequestTimeoutError } from "./errors.js";
import {
  SESSION_EVENT_TYPES,
  type ClientRequest,
  type ConfigOptionSetReply,
  type ConfigValue,
  type ErrorCode,
  type ErrorMessage,
  type EventsReply,
  type HistoryReply,
  type Identity,
  type ModeSetReply,
  type PongMessage,
  type PromptBlock,
  type ServerMessage,
  type SessionEvent,
  type SessionMeta,
  type WelcomeMessage,
} from "./generated/protocol.js";
import type { ClientEvents, ClientOptions, ConnectionState, Timers, WebSocketConstructor, WebSocketLike } from "./options.js";
import { REPLY_TYPES, type Reply, type RequestOf } from "./replies.js";
import { SessionStream, type StreamHost } from "./session.js";

/** A close that stops the client instead of reconnecting (docs/PROTOCOL.md, close codes). */
const FATAL_CLOSE_CODES = new Set([1000, 1002, 1003, 1007, 1009, 4001, 4003]);

const SUBPROTOCOL = "diminuendo.v1";

interface Pending {
  type: ClientRequest["type"];
  message: string;
  sent: boolean;
  timer: unknown;
  sync: ((reply: never) => void) | undefined;
  resolve: (reply: unknown) => void;
  reject: (error: Error) => void;
}

const EVENT_TYPES: ReadonlySet<string> = new Set(SESSION_EVENT_TYPES);

const defaultTimers: Timers = {
  setTimeout: (callback, ms) => globalThis.setTimeout(callback, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle as ReturnType<typeof globalThis.setTimeout>),
};

/**
 * A connection to a Diminuendo gateway: typed requests, tenant notifications, and per-session
 * event streams that survive reconnects.
 */
export class DiminuendoClient extends Emitter<ClientEvents> implements StreamHost {
  readonly #options: ClientOptions;
  readonly #timers: Timers;
  readonly #random: () => number;
  readonly #requestTimeoutMs: number;
  readonly #pending = new Map<string, Pending>();
  readonly #streams = new Map<string, SessionStream>();
  readonly #catchingUp = new Set<string>();
  #state: ConnectionState = "closed";
  #socket: WebSocketLike | undefined;
  /** Bumped for every socket: callbacks of an older one are ignored. */
  #socketGeneration = 0;
  #authenticated = false;
  #everAuthenticated = false;
  #stopped = true;
  #attempt = 0;
  #shutdownDelayMs: number | undefined;
  #reconnectTimer: unknown;
  #connectTimer: unknown;
  #livenessTimer: unknown;
  #heartbeatIntervalMs = 0;
  #lastAuthError: ErrorMessage | undefined;
  #nextRequestId = 0;
  #identity: Identity | undefined;
  #welcome: WelcomeMessage | undefined;
  #connectWaiters: { resolve: (identity: Identity) => void; reject: (error: Error) => void }[] = [];

  constructor(options: ClientOptions) {
    super();
    this.#options = options;
    this.#timers = options.timers ?? defaultTimers;
    this.#random = options.random ?? Math.random;
    this.#requestTimeoutMs = options.requestTimeoutMs ?? 30_000;
  }

  get state(): ConnectionState {
    return this.#state;
  }

  /** Who the connection is, once authenticated. */
  get identity(): Identity | undefined {
    return this.#identity;
  }

  /** The gateway's `welcome` on the current connection. */
  get welcome(): WelcomeMessage | undefined {
    return this.#welcome;
  }

  /**
   * Connects and resolves once authenticated. After that the client reconnects on its own until
   * `close()`. Rejects when a close stops it (bad token, forbidden) or `close()` is called first.
   */
  connect(): Promise<Identity> {
    if (this.#authenticated && this.#identity) return Promise.resolve(this.#identity);
    const promise = new Promise<Identity>((resolve, reject) => this.#connectWaiters.push({ resolve, reject }));
    if (this.#stopped) {
      this.#stopped = false;
      this.#attempt = 0;
      this.#everAuthenticated = false;
      this.#setState("connecting");
      void this.#open();
    }
    return promise;
  }

  /** Closes for good: pending and queued requests reject with `ConnectionClosedError`. */
  close(): void {
    if (this.#stopped && !this.#socket) return;
    this.#stop(new ConnectionClosedError("the client was closed"));
    const socket = this.#socket;
    this.#dropSocket();
    if (socket) {
      try {
        socket.close(1000, "client closed");
      } catch {
        // already closing
      }
    }
  }

  /** Sends a request and resolves with its reply; rejects with `GatewayError` on an `error` reply. */
  request<T extends ClientRequest["type"]>(
    message: RequestOf<T>,
    options: { timeoutMs?: number } = {},
  ): Promise<Reply<T>> {
    return this.#send(message, options.timeoutMs, undefined) as Promise<Reply<T>>;
  }

  ping(): Promise<PongMessage> {
    return this.request({ type: "ping" });
  }

  async listSessions(options: { includeArchived?: boolean } = {}): Promise<SessionMeta[]> {
    const message: RequestOf<"list_sessions"> = { type: "list_sessions" };
    if (options.includeArchived !== undefined) message.includeArchived = options.includeArchived;
    return (await this.request(message)).sessions;
  }

  async createSession(options: { agentType?: string; name?: string } = {}): Promise<SessionMeta> {
    const message: RequestOf<"create_session"> = { type: "create_session", agentType: options.agentType ?? "echo" };
    if (options.name !== undefined) message.name = options.name;
    return (await this.request(message)).session;
  }

  async renameSession(sessionId: string, name: string): Promise<SessionMeta> {
    return (await this.request({ type: "rename_session", sessionId, name })).session;
  }

  async archiveSession(sessionId: string): Promise<SessionMeta> {
    return (await this.request({ type: "archive_session", sessionId })).session;
  }

  async unarchiveSession(sessionId: string): Promise<SessionMeta> {
    return (await this.request({ type: "unarchive_session", sessionId })).session;
  }

  async deleteSession(sessionId: string): Promise<void> {
    await this.request({ type: "delete_session", sessionId });
  }

  getEvents(sessionId: string, afterSeq: number, limit?: number): Promise<EventsReply> {
    const message: RequestOf<"get_events"> = { type: "get_events", sessionId, afterSeq };
    if (limit !== undefined) message.limit = limit;
    return this.request(message);
  }

  getHistory(sessionId: string, options: { beforeTurn?: string; limit?: number } = {}): Promise<HistoryReply> {
    const message: RequestOf<"get_history"> = { type: "get_history", sessionId };
    if (options.beforeTurn !== undefined) message.beforeTurn = options.beforeTurn;
    if (options.limit !== undefined) message.limit = options.limit;
    return this.request(message);
  }

  /** Starts a turn; resolves with its `turnId`. */
  async runTurn(sessionId: string, text: string, content?: PromptBlock[]): Promise<string> {
    const message: RequestOf<"run_turn"> = { type: "run_turn", sessionId, text };
    if (content !== undefined) message.content = content;
    return (await this.request(message)).turnId;
  }

  /** Cancels the running turn (if any) and prompts `text` next; resolves with the new `turnId`. */
  async steer(sessionId: string, text: string, content?: PromptBlock[]): Promise<string> {
    const message: RequestOf<"steer"> = { type: "steer", sessionId, text };
    if (content !== undefined) message.content = content;
    return (await this.request(message)).turnId;
  }

  async stopTurn(sessionId: string): Promise<void> {
    await this.request({ type: "stop_turn", sessionId });
  }

  /** Answers a permission request with one of its options, or cancels it. */
  async answerQuestion(sessionId: string, questionId: string, answer: string | { cancelled: true }): Promise<void> {
    const message: RequestOf<"answer_question"> = { type: "answer_question", sessionId, questionId };
    if (typeof answer === "string") message.optionId = answer;
    else message.cancelled = true;
    await this.request(message);
  }

  setMode(sessionId: string, modeId: string): Promise<ModeSetReply> {
    return this.request({ type: "set_mode", sessionId, modeId });
  }

  setConfigOption(sessionId: string, configId: string, value: ConfigValue): Promise<ConfigOptionSetReply> {
    return this.request({ type: "set_config_option", sessionId, configId, value });
  }

  /** The session's stream (the same object for the same id): attach listeners, then `join()`. */
  session(sessionId: string): SessionStream {
    let stream = this.#streams.get(sessionId);
    if (!stream) {
      stream = new SessionStream(sessionId, this);
      this.#streams.set(sessionId, stream);
    }
    return stream;
  }

  /** `session(id)` and its `join(options)`. */
  async join(sessionId: string, options: { afterSeq?: number; epoch?: string } = {}): Promise<SessionStream> {
    const stream = this.session(sessionId);
    await stream.join(options);
    return stream;
  }

  /** @internal */
  streamRequest(message: ClientRequest, sync: (reply: never) => void): Promise<unknown> {
    return this.#send(message, undefined, sync);
  }

  /** @internal */
  schedule(callback: () => void, ms: number): void {
    const generation = this.#socketGeneration;
    this.#timers.setTimeout(() => {
      if (generation === this.#socketGeneration && this.#authenticated) callback();
    }, ms);
  }

  /** @internal */
  setCatchingUp(sessionId: string, catchingUp: boolean): void {
    if (catchingUp) this.#catchingUp.add(sessionId);
    else this.#catchingUp.delete(sessionId);
    this.#updateState();
  }

  // ---- requests ----

  #send(message: ClientRequest, timeoutMs: number | undefined, sync: ((reply: never) => void) | undefined): Promise<unknown> {
    if (this.#stopped) return Promise.reject(new ConnectionClosedError("the client is not connected (call connect())"));
    const requestId = `r${++this.#nextRequestId}`;
    const text = JSON.stringify({ ...message, requestId });
    const timeout = timeoutMs ?? this.#requestTimeoutMs;
    return new Promise((resolve, reject) => {
      const pending: Pending = {
        type: message.type,
        message: text,
        sent: false,
        sync,
        resolve,
        reject,
        timer: this.#timers.setTimeout(() => {
          if (this.#pending.get(requestId) === pending) {
            this.#pending.delete(requestId);
            reject(new RequestTimeoutError(message.type, timeout));
          }
        }, timeout),
      };
      this.#pending.set(requestId, pending);
      if (this.#authenticated || message.type === "authenticate" || message.type === "ping") this.#transmit(pending);
    });
  }

  #transmit(pending: Pending): void {
    const socket = this.#socket;
    if (!socket) return;
    try {
      socket.send(pending.message);
      pending.sent = true;
    } catch {
      // the close handler deals with it
    }
  }

  #settle(requestId: string, message: ServerMessage): boolean {
    const pending = this.#pending.get(requestId);
    if (!pending) return false;
    this.#pending.delete(requestId);
    this.#timers.clearTimeout(pending.timer);
    if (message.type === "error") {
      const options: { retryAfterMs?: number; requestType?: string } = { requestType: pending.type };
      if (message.retryAfterMs !== undefined) options.retryAfterMs = message.retryAfterMs;
      pending.reject(new GatewayError(message.code, message.message, options));
      return true;
    }
    if (message.type !== REPLY_TYPES[pending.type]) {
      pending.reject(new DiminuendoError(`${pending.type} was answered ${message.type}, not ${REPLY_TYPES[pending.type]}`));
      return true;
    }
    if (pending.sync) {
      try {
        pending.sync(message as never);
      } catch (error) {
        pending.reject(error instanceof Error ? error : new Error(String(error)));
        return true;
      }
    }
    pending.resolve(message);
    return true;
  }

  /** Rejects requests sent on the lost connection; keeps unsent ones for the next. */
  #failSent(error: ConnectionClosedError): void {
    for (const [requestId, pending] of this.#pending) {
      if (!pending.sent) continue;
      this.#pending.delete(requestId);
      this.#timers.clearTimeout(pending.timer);
      pending.reject(error);
    }
  }

  // ---- connection ----

  async #open(): Promise<void> {
    const generation = ++this.#socketGeneration;
    let url: string;
    let token: string | undefined;
    try {
      const urlOption = this.#options.url;
      url = typeof urlOption === "function" ? await urlOption() : urlOption;
      const tokenOption = this.#options.token;
      token = typeof tokenOption === "function" ? await tokenOption() : tokenOption;
    } catch (error) {
      if (generation !== this.#socketGeneration || this.#stopped) return;
      this.emit("error", error instanceof Error ? error : new Error(String(error)));
      this.#lost(1006, "the url or token could not be obtained");
      return;
    }
    if (generation !== this.#socketGeneration || this.#stopped) return;
    const Constructor = this.#options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!Constructor) {
      this.#stop(new DiminuendoError("no WebSocket constructor: pass the `WebSocket` option (e.g. the `ws` package's)"));
      return;
    }
    const viaSubprotocol = token !== undefined && (this.#options.tokenVia ?? "subprotocol") === "subprotocol";
    const protocols = viaSubprotocol ? [SUBPROTOCOL, `bearer.${token}`] : [SUBPROTOCOL];
    let socket: WebSocketLike;
    try {
      socket = new Constructor(url, protocols);
    } catch (error) {
      this.#stop(error instanceof Error ? error : new Error(String(error)));
      return;
    }
    this.#socket = socket;
    this.#lastAuthError = undefined;
    this.#welcome = undefined;
    const current = () => generation === this.#socketGeneration && this.#socket === socket;
    this.#connectTimer = this.#timers.setTimeout(() => {
      if (!current() || this.#authenticated) return;
      this.#abandon(socket, 4000, "not authenticated in time");
    }, this.#options.connectTimeoutMs ?? 15_000);
    socket.onmessage = (event: { data: unknown }) => {
      if (!current()) return;
      this.#onMessage(event.data, token);
    };
    socket.onclose = (event: { code?: unknown; reason?: unknown }) => {
      if (!current()) return;
      this.#dropSocket();
      this.#lost(typeof event.code === "number" ? event.code : 1006, typeof event.reason === "string" ? event.reason : "");
    };
    socket.onerror = () => {
      // a close follows
    };
  }

  #onMessage(data: unknown, token: string | undefined): void {
    this.#armLiveness();
    if (typeof data !== "string") return;
    let message: ServerMessage;
    try {
      message = JSON.parse(data) as ServerMessage;
    } catch {
      return;
    }
    if (typeof message !== "object" || message === null || typeof message.type !== "string") return;
    this.emit("message", message);
    const requestId = (message as { requestId?: unknown }).requestId;
    if (EVENT_TYPES.has(message.type) && typeof (message as SessionEvent).seq === "number") {
      this.#streams.get((message as SessionEvent).sessionId)?.handleLive(message as SessionEvent);
      return;
    }
    switch (message.type) {
      case "welcome":
        this.#welcome = message;
        if (message.requiresAuth && !this.#authenticated) {
          if (token === undefined) {
            this.#stop(new GatewayError("NOT_AUTHENTICATED", "the gateway requires a token and none was given"));
            this.#abandon(this.#socket, 1000, "no token");
            return;
          }
          if ((this.#options.tokenVia ?? "subprotocol") === "message") {
            this.#socket?.send(JSON.stringify({ type: "authenticate", token }));
          }
        }
        return;
      case "connected":
        this.#heartbeatIntervalMs = message.heartbeatIntervalMs;
        this.#armLiveness();
        return;
      case "authenticated":
        if (typeof requestId === "string") this.#settle(requestId, message);
        if (!this.#authenticated) this.#onAuthenticated(message.identity);
        return;
      case "server_shutdown":
        this.#shutdownDelayMs = message.reconnectAfterMs;
        this.emit("shutdown", message);
        return;
      case "error":
        if (typeof requestId === "string" && this.#settle(requestId, message)) return;
        if (message.code === "AUTH_FAILED" || message.code === "AUTH_RATE_LIMITED") this.#lastAuthError = message;
        this.emit("error", new GatewayError(message.code, message.message, message.retryAfterMs !== undefined ? { retryAfterMs: message.retryAfterMs } : {}));
        return;
      case "session_created":
      case "session_updated":
      case "session_deleted":
        if (typeof requestId === "string") {
          this.#settle(requestId, message);
          return;
        }
        if (message.type === "session_deleted") {
          this.#streams.get(message.sessionId)?.deleted();
          this.emit("session_deleted", message.sessionId);
        } else if (message.type === "session_created") {
          this.emit("session_created", message.session);
        } else {
          this.emit("session_updated", message.session);
        }
        return;
      case "session_left":
        if (typeof requestId === "string") {
          this.#settle(requestId, message);
          return;
        }
        // Unasked (cluster mode): the instance lost the session while this client may have seen
        // events the log never stored. Join again from our position: the gateway then replays
        // (recovered) or the stream reports a reload.
        this.#streams.get(message.sessionId)?.rejoin();
        return;
      default:
        if (typeof requestId === "string") this.#settle(requestId, message);
    }
  }

  #onAuthenticated(identity: Identity): void {
    this.#authenticated = true;
    this.#everAuthenticated = true;
    this.#attempt = 0;
    this.#shutdownDelayMs = undefined;
    this.#identity = identity;
    this.#timers.clearTimeout(this.#connectTimer);
    for (const stream of this.#streams.values()) stream.rejoin();
    for (const pending of this.#pending.values()) if (!pending.sent) this.#transmit(pending);
    this.#updateState();
    this.emit("authenticated", identity);
    const waiters = this.#connectWaiters;
    this.#connectWaiters = [];
    for (const waiter of waiters) waiter.resolve(identity);
  }

  /** The connection is gone: reconnect, or stop for a close that says not to. */
  #lost(code: number, reason: string): void {
    this.#authenticated = false;
    this.#catchingUp.clear();
    const error = new ConnectionClosedError(`the connection closed (${code}${reason ? `: ${reason}` : ""})`, { code, reason });
    this.#failSent(error);
    for (const stream of this.#streams.values()) stream.disconnected();
    if (this.#stopped) {
      this.#setState("closed");
      return;
    }
    if (FATAL_CLOSE_CODES.has(code) || this.#options.reconnect === false) {
      const auth = this.#lastAuthError;
      const fatal =
        code === 4001
          ? new GatewayError((auth?.code ?? "AUTH_FAILED") as ErrorCode, auth?.message ?? `authentication failed (close 4001${reason ? `: ${reason}` : ""})`)
          : error;
      this.#stop(fatal);
      return;
    }
    const backoff = { ...DEFAULT_BACKOFF, ...(this.#options.reconnect ?? {}) };
    if (this.#attempt >= backoff.maxAttempts) {
      this.#stop(new ConnectionClosedError(`gave up after ${this.#attempt} reconnect attempts`, { code, reason }));
      return;
    }
    const delayMs = this.#shutdownDelayMs ?? backoffDelay(this.#attempt, backoff, this.#random);
    this.#shutdownDelayMs = undefined;
    this.#attempt += 1;
    this.#setState("reconnecting");
    this.emit("reconnect", { attempt: this.#attempt, delayMs });
    this.#reconnectTimer = this.#timers.setTimeout(() => {
      this.#reconnectTimer = undefined;
      if (!this.#stopped) void this.#open();
    }, delayMs);
  }

  /** Stops for good with `error` (reported to `connect()` callers, queued requests and `error`). */
  #stop(error: Error): void {
    const wasStopped = this.#stopped;
    this.#stopped = true;
    this.#authenticated = false;
    this.#timers.clearTimeout(this.#reconnectTimer);
    this.#timers.clearTimeout(this.#connectTimer);
    this.#timers.clearTimeout(this.#livenessTimer);
    this.#catchingUp.clear();
    for (const [requestId, pending] of this.#pending) {
      this.#pending.delete(requestId);
      this.#timers.clearTimeout(pending.timer);
      pending.reject(error instanceof ConnectionClosedError ? error : new ConnectionClosedError(error.message));
    }
    const waiters = this.#connectWaiters;
    this.#connectWaiters = [];
    for (const waiter of waiters) waiter.reject(error);
    this.#setState("closed");
    if (!wasStopped && !(error instanceof ConnectionClosedError && error.message === "the client was closed")) {
      this.emit("error", error);
    }
  }

  /** Gives up on a socket that is not answering: detach it and treat the connection as lost. */
  #abandon(socket: WebSocketLike | undefined, code: number, reason: string): void {
    if (!socket || socket !== this.#socket) return;
    this.#dropSocket();
    try {
      socket.close(code, reason);
    } catch {
      // already closed
    }
    this.#lost(1006, reason);
  }

  #dropSocket(): void {
    const socket = this.#socket;
    this.#socket = undefined;
    this.#socketGeneration++;
    this.#timers.clearTimeout(this.#connectTimer);
    this.#timers.clearTimeout(this.#livenessTimer);
    if (socket) {
      socket.onmessage = null;
      socket.onclose = null;
      // Not null: the `ws` package throws an 'error' nobody listens to (e.g. closing while
      // connecting).
      socket.onerror = () => {};
      socket.onopen = null;
    }
  }

  /** The gateway sends something at least every heartbeat interval; 2.5 without anything is a dead link. */
  #armLiveness(): void {
    if (this.#heartbeatIntervalMs <= 0) return;
    this.#timers.clearTimeout(this.#livenessTimer);
    const socket = this.#socket;
    this.#livenessTimer = this.#timers.setTimeout(
      () => this.#abandon(socket, 4000, "nothing from the gateway for 2.5 heartbeat intervals"),
      this.#heartbeatIntervalMs * 2.5,
    );
  }

  #updateState(): void {
    if (this.#stopped) this.#setState("closed");
    else if (!this.#authenticated) this.#setState(this.#everAuthenticated || this.#attempt > 0 ? "reconnecting" : "connecting");
    else this.#setState(this.#catchingUp.size > 0 ? "catching-up" : "open");
  }

  #setState(state: ConnectionState): void {
    if (state === this.#state) return;
    const previous = this.#state;
    this.#state = state;
    this.emit("state", state, previous);
  }
}
