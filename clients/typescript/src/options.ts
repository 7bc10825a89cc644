// The client's options, events and the WebSocket and timer interfaces it takes.
import type { BackoffOptions } from "./backoff.js";
import type { Identity, ServerMessage, ServerShutdownMessage, SessionMeta } from "./generated/protocol.js";

/** The connection as an indicator shows it. */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "catching-up" | "closed";

/**
 * The part of the WebSocket API the client uses (the browser's, or the `ws` package's). The
 * handlers take `any` so that both implementations' own event types fit; the client reads only
 * `data` (a string for a text message) and `code`/`reason`.
 */
/* eslint-disable @typescript-eslint/no-explicit-any */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
}
/* eslint-enable @typescript-eslint/no-explicit-any */

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** Timers the client uses (inject fake ones in tests). */
export interface Timers {
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

type Provider<T> = T | (() => T | Promise<T>);

export interface ClientOptions {
  /** `ws://host:port/ws`, or a function returning it (called at every (re)connect). */
  url: Provider<string>;
  /** A JWT, or a function returning one (called at every (re)connect); none in dev mode. */
  token?: Provider<string | undefined>;
  /** How the token is sent: the `bearer.<JWT>` subprotocol (default) or an `authenticate` message. */
  tokenVia?: "subprotocol" | "message";
  /** The WebSocket constructor; default `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** A request not answered within this rejects with `RequestTimeoutError` (default 30000). */
  requestTimeoutMs?: number;
  /** A connection not authenticated within this is dropped and retried (default 15000). */
  connectTimeoutMs?: number;
  /** Reconnect backoff, or `false` to stay closed after a loss. */
  reconnect?: BackoffOptions | false;
  /** The jitter's random source (default `Math.random`). */
  random?: () => number;
  /** Timers (default the global ones). */
  timers?: Timers;
}


export interface ClientEvents {
  state: (state: ConnectionState, previous: ConnectionState) => void;
  authenticated: (identity: Identity) => void;
  session_created: (session: SessionMeta) => void;
  session_updated: (session: SessionMeta) => void;
  session_deleted: (sessionId: string) => void;
  shutdown: (message: ServerShutdownMessage) => void;
  reconnect: (info: { attempt: number; delayMs: number }) => void;
  error: (error: Error) => void;
  message: (message: ServerMessage) => void;
}
