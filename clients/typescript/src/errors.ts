import type { ErrorCode } from "./generated/protocol.js";

/** The base of every error the client raises. */
export class DiminuendoError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** The gateway answered `error`: its code and message, as the protocol gives them. */
export class GatewayError extends DiminuendoError {
  /** The protocol's error code (`SESSION_NOT_FOUND`, `INVALID_STATE`, …). */
  readonly code: ErrorCode;
  /** When a retry would be accepted (`RATE_LIMITED`, `AUTH_RATE_LIMITED`). */
  readonly retryAfterMs: number | undefined;
  /** The `type` of the request it answers, when it answers one. */
  readonly requestType: string | undefined;

  constructor(code: ErrorCode, message: string, options: { retryAfterMs?: number; requestType?: string } = {}) {
    super(message);
    this.code = code;
    this.retryAfterMs = options.retryAfterMs;
    this.requestType = options.requestType;
  }
}

/** No reply came within the request's timeout. */
export class RequestTimeoutError extends DiminuendoError {
  readonly requestType: string;
  readonly timeoutMs: number;

  constructor(requestType: string, timeoutMs: number) {
    super(`no reply to ${requestType} within ${timeoutMs} ms`);
    this.requestType = requestType;
    this.timeoutMs = timeoutMs;
  }
}

/**
 * The connection closed before a reply (the request may or may not have been done), or the
 * client is closed.
 */
export class ConnectionClosedError extends DiminuendoError {
  /** The WebSocket close code, when a close frame said one. */
  readonly code: number | undefined;
  readonly reason: string | undefined;

  constructor(message: string, options: { code?: number; reason?: string } = {}) {
    super(message);
    this.code = options.code;
    this.reason = options.reason;
  }
}
