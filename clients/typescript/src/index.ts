// @diminuendo/client: a client for the Diminuendo gateway (browsers and Node 20+). See API.md.
export * from "./generated/protocol.js";
export { DiminuendoClient } from "./client.js";
export type { ClientEvents, ClientOptions, ConnectionState, Timers, WebSocketConstructor, WebSocketLike } from "./options.js";
export { SessionStream } from "./session.js";
export type { ReloadInfo, ReloadReason, SessionStreamEvents } from "./session.js";
export { ConnectionClosedError, DiminuendoError, GatewayError, RequestTimeoutError } from "./errors.js";
export { backoffDelay, DEFAULT_BACKOFF } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export { SeqTracker } from "./seq.js";
export type { SeqVerdict } from "./seq.js";
export { REPLY_TYPES } from "./replies.js";
export type { Reply, ReplyMap, RequestOf } from "./replies.js";
