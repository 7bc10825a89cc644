import { Emitter } from "./emitter.js";
import { ConnectionClosedError, GatewayError } from "./errors.js";
import type { EventsReply, SessionEvent, SessionJoinedReply } from "./generated/protocol.js";
import type { RequestOf } from "./replies.js";
import { SeqTracker } from "./seq.js";

/** Why a stream cannot deliver the events between its old and its new position. */
export type ReloadReason =
  /** A re-join (or a join with `afterSeq`) answered `recovered: false`: another epoch, or too far behind. */
  | "not-recovered"
  /** `get_events` answered in another epoch while a gap was filled: events were lost. */
  | "epoch-changed"
  /** A gap could not be filled through `get_events`. */
  | "gap-unfillable";

/** The `reload` event: redraw the session (e.g. with `stream.reload()`); live events go on after `lastSeq`. */
export interface ReloadInfo {
  sessionId: string;
  reason: ReloadReason;
  /** The epoch the stream counts in from now on. */
  epoch: string | undefined;
  /** The stream's position from now on: the next `event` has `seq` `lastSeq + 1`. */
  lastSeq: number;
}

export interface SessionStreamEvents {
  /** Each event of the session once, in `seq` order, with no gap. */
  event: (event: SessionEvent) => void;
  /** Every join and re-join's reply. */
  joined: (reply: SessionJoinedReply) => void;
  /** Events were lost to this stream: redraw. */
  reload: (info: ReloadInfo) => void;
  /** A re-join failed for good (e.g. the session was deleted); the stream is left. */
  error: (error: Error) => void;
}

/** What a stream needs from its client (the client implements it). */
export interface StreamHost {
  /** Sends a request; `sync` runs in the message handler itself, before any later message. */
  streamRequest<T extends "join_session" | "leave_session" | "get_events">(
    message: RequestOf<T>,
    sync: (reply: T extends "join_session" ? SessionJoinedReply : T extends "get_events" ? EventsReply : unknown) => void,
  ): Promise<unknown>;
  /** Runs `callback` after `ms` on the client's timers (dropped when the connection is lost). */
  schedule(callback: () => void, ms: number): void;
  /** Marks the session as catching up (or done) for the connection state. */
  setCatchingUp(sessionId: string, catchingUp: boolean): void;
}

type Status = "idle" | "joining" | "joined" | "left";

const DEFAULT_PAGE = 1000;

/**
 * One session's events for one client, exactly once and in order across reconnects. Get it with
 * `client.session(id)`, attach listeners, then `join()`.
 */
export class SessionStream extends Emitter<SessionStreamEvents> {
  readonly sessionId: string;
  readonly #host: StreamHost;
  readonly #tracker = new SeqTracker();
  #status: Status = "idle";
  #epoch: string | undefined;
  #snapshot: SessionJoinedReply | undefined;
  /** Live events that wait: while joining, filling a gap or reloading. */
  #held: SessionEvent[] = [];
  #filling = false;
  #reloading = false;
  /** Bumped at every (re)join: a fill or reload of an older generation stops. */
  #generation = 0;
  /** Bumped when a fill is abandoned (a reload reads everything anyway). */
  #fillGeneration = 0;

  /** @internal Made by the client. */
  constructor(sessionId: string, host: StreamHost) {
    super();
    this.sessionId = sessionId;
    this.#host = host;
  }

  /** Whether the stream is joined (or re-joining after a reconnect). */
  get joined(): boolean {
    return this.#status === "joined" || (this.#status === "joining" && this.#snapshot !== undefined);
  }

  /** The last `seq` delivered. */
  get lastSeq(): number {
    return this.#tracker.lastSeq;
  }

  /** The epoch `lastSeq` is counted in. */
  get epoch(): string | undefined {
    return this.#epoch;
  }

  /** The last join's reply: `session`, `turn`, `questions`, `agent`. */
  get snapshot(): SessionJoinedReply | undefined {
    return this.#snapshot;
  }

  /**
   * Joins the session. Without `afterSeq` live from its `lastSeq + 1`; with it the events after
   * it are delivered first (or `reload` is emitted when the gateway cannot replay them).
   */
  join(options: { afterSeq?: number; epoch?: string } = {}): Promise<SessionJoinedReply> {
    // Joined already: a join without a position resumes from where the stream is, so nothing
    // in flight is skipped.
    const resume = options.afterSeq === undefined && this.#status === "joined" && this.#snapshot !== undefined;
    const generation = ++this.#generation;
    this.#fillGeneration++;
    this.#filling = false;
    this.#status = "joining";
    this.#held = [];
    const afterSeq = resume ? this.#tracker.lastSeq : options.afterSeq;
    const epoch = resume ? this.#epoch : options.epoch;
    const message: RequestOf<"join_session"> = { type: "join_session", sessionId: this.sessionId };
    if (afterSeq !== undefined) {
      message.afterSeq = afterSeq;
      if (epoch !== undefined) message.epoch = epoch;
    }
    return this.#host
      .streamRequest(message, (reply) => {
        if (generation !== this.#generation) return;
        this.#joined(reply, afterSeq);
      })
      .then(
        () => this.#snapshot as SessionJoinedReply,
        (error: unknown) => {
          if (generation === this.#generation && this.#status === "joining") this.#status = "idle";
          throw error;
        },
      );
  }

  /** Leaves the session: no more events, and no re-join after a reconnect. */
  async leave(): Promise<void> {
    this.#generation++;
    const wasJoined = this.#status !== "idle" && this.#status !== "left";
    this.#status = "left";
    this.#held = [];
    this.#stopCatchingUp();
    if (wasJoined) await this.#host.streamRequest({ type: "leave_session", sessionId: this.sessionId }, () => {});
  }

  /**
   * Every event of the session from `seq` 1 up to now, through `get_events` pages. Live events
   * that arrive meanwhile are held and included, so the next `event` follows the last one
   * returned. Await it directly (its result is handled before the next live event).
   */
  reload(options: { pageSize?: number } = {}): Promise<SessionEvent[]> {
    const pageSize = options.pageSize ?? DEFAULT_PAGE;
    const generation = this.#generation;
    // A gap being filled is part of what the reload reads: stop the fill, hold live events.
    if (this.#filling) {
      this.#fillGeneration++;
      this.#filling = false;
      this.#host.setCatchingUp(this.sessionId, false);
    }
    this.#reloading = true;
    const events: SessionEvent[] = [];
    let epoch: string | undefined;
    const finish = (): SessionEvent[] => {
      this.#reloading = false;
      const last = events.length > 0 ? (events[events.length - 1] as SessionEvent).seq : 0;
      this.#tracker.lastSeq = Math.max(last, this.#tracker.lastSeq);
      if (epoch !== undefined) this.#epoch = epoch;
      // Held live events that follow on are part of the result; after a gap they are filled.
      this.#held.sort((a, b) => a.seq - b.seq);
      while (this.#held.length > 0) {
        const next = this.#held[0] as SessionEvent;
        const verdict = this.#tracker.classify(next.seq);
        if (verdict === "gap") break;
        this.#held.shift();
        if (verdict === "deliver") {
          this.#tracker.accept(next.seq);
          events.push(next);
        }
      }
      if (this.#held.length > 0) this.#startFill();
      return events;
    };
    const page = (afterSeq: number): Promise<SessionEvent[]> => {
      let hasMore = false;
      let next = afterSeq;
      return this.#host
        .streamRequest({ type: "get_events", sessionId: this.sessionId, afterSeq, limit: pageSize }, (reply) => {
          if (generation !== this.#generation) return;
          if (epoch !== undefined && reply.epoch !== epoch) {
            // The epoch changed under the reload: start again in the new one.
            events.length = 0;
            epoch = reply.epoch;
            hasMore = true;
            next = 0;
            return;
          }
          epoch = reply.epoch;
          for (const event of reply.events) {
            if (event.seq > next) {
              events.push(event);
              next = event.seq;
            }
          }
          hasMore = reply.hasMore && reply.events.length > 0;
        })
        .then(() => {
          if (generation !== this.#generation) throw new ConnectionClosedError("the stream re-joined during the reload");
          return hasMore ? page(next) : finish();
        });
    };
    return page(0).catch((error: unknown) => {
      if (generation === this.#generation) {
        this.#reloading = false;
        this.#drainHeld();
      }
      throw error;
    });
  }

  /** @internal The client hands over every live event of this session. */
  handleLive(event: SessionEvent): void {
    if (this.#status === "idle" || this.#status === "left") return;
    if (this.#status !== "joined" || this.#filling || this.#reloading) {
      this.#held.push(event);
      return;
    }
    this.#process(event);
  }

  /** @internal After a reconnect: re-join from `lastSeq` in `epoch`. Returns false when not joined. */
  rejoin(): boolean {
    if (this.#snapshot === undefined || (this.#status !== "joined" && this.#status !== "joining")) return false;
    const generation = ++this.#generation;
    this.#fillGeneration++;
    this.#status = "joining";
    this.#held = [];
    this.#filling = false;
    this.#reloading = false;
    this.#host.setCatchingUp(this.sessionId, true);
    const afterSeq = this.#tracker.lastSeq;
    const message: RequestOf<"join_session"> = { type: "join_session", sessionId: this.sessionId, afterSeq };
    if (this.#epoch !== undefined) message.epoch = this.#epoch;
    this.#host
      .streamRequest(message, (reply) => {
        if (generation !== this.#generation) return;
        this.#joined(reply, afterSeq);
      })
      .then(
        () => {
          if (generation === this.#generation && !this.#filling) this.#host.setCatchingUp(this.sessionId, false);
        },
        (error: unknown) => {
          if (generation !== this.#generation) return;
          if (error instanceof ConnectionClosedError) return; // the next connection re-joins
          // Rate limited or no answer in time: try again later; anything else (the session was
          // deleted, the role lost the right) ends the stream.
          const transient = !(error instanceof GatewayError) || error.code === "RATE_LIMITED";
          if (transient) {
            const delay = error instanceof GatewayError && error.retryAfterMs !== undefined ? error.retryAfterMs : 1000;
            this.#host.schedule(() => {
              if (generation === this.#generation) this.rejoin();
            }, delay);
            return;
          }
          this.#status = "left";
          this.#stopCatchingUp();
          this.emit("error", error instanceof Error ? error : new Error(String(error)));
        },
      );
    return true;
  }

  /** @internal The connection dropped: stop what waits on it (the re-join starts over). */
  disconnected(): void {
    if (this.#filling || this.#reloading) this.#held = [];
  }

  /** @internal The session was deleted. */
  deleted(): void {
    this.#generation++;
    this.#status = "left";
    this.#held = [];
    this.#stopCatchingUp();
  }

  #joined(reply: SessionJoinedReply, afterSeq: number | undefined): void {
    this.#snapshot = reply;
    this.#status = "joined";
    this.#epoch = reply.epoch;
    if (afterSeq === undefined) {
      this.#tracker.lastSeq = reply.lastSeq;
    } else if (reply.recovered) {
      this.#tracker.lastSeq = afterSeq;
      for (const event of reply.events) this.#deliverInOrder(event);
    } else {
      this.#tracker.lastSeq = reply.lastSeq;
      this.emit("joined", reply);
      this.emit("reload", {
        sessionId: this.sessionId,
        reason: "not-recovered",
        epoch: reply.epoch,
        lastSeq: reply.lastSeq,
      });
      this.#drainHeld();
      return;
    }
    this.emit("joined", reply);
    this.#drainHeld();
  }

  /** Delivers a replayed or fetched event: duplicates dropped; a gap inside a replay is held. */
  #deliverInOrder(event: SessionEvent): void {
    const verdict = this.#tracker.classify(event.seq);
    if (verdict === "deliver") {
      this.#tracker.accept(event.seq);
      this.emit("event", event);
    } else if (verdict === "gap") {
      this.#held.push(event);
    }
  }

  #process(event: SessionEvent): void {
    const verdict = this.#tracker.classify(event.seq);
    if (verdict === "duplicate") return;
    if (verdict === "deliver") {
      this.#tracker.accept(event.seq);
      this.emit("event", event);
      return;
    }
    this.#held.push(event);
    this.#startFill();
  }

  /** Delivers held events that follow on; starts a fill at the first gap. */
  #drainHeld(): void {
    if (this.#filling || this.#reloading || this.#status !== "joined") return;
    this.#held.sort((a, b) => a.seq - b.seq);
    while (this.#held.length > 0) {
      const next = this.#held[0] as SessionEvent;
      const verdict = this.#tracker.classify(next.seq);
      if (verdict === "gap") {
        this.#startFill();
        return;
      }
      this.#held.shift();
      if (verdict === "deliver") {
        this.#tracker.accept(next.seq);
        this.emit("event", next);
      }
    }
  }

  /** Fills the gap between `lastSeq` and the first held event with `get_events`. */
  #startFill(): void {
    if (this.#filling) return;
    this.#filling = true;
    this.#host.setCatchingUp(this.sessionId, true);
    const generation = this.#generation;
    const fillGeneration = ++this.#fillGeneration;
    const stale = () => generation !== this.#generation || fillGeneration !== this.#fillGeneration;
    const step = (): void => {
      const before = this.#tracker.lastSeq;
      let outcome: "more" | "done" | "stuck" | "epoch" = "done";
      this.#host
        .streamRequest({ type: "get_events", sessionId: this.sessionId, afterSeq: before, limit: DEFAULT_PAGE }, (reply) => {
          if (stale()) return;
          if (this.#epoch !== undefined && reply.epoch !== this.#epoch) {
            this.#epoch = reply.epoch;
            this.#tracker.lastSeq = reply.lastSeq;
            this.#held = this.#held.filter((event) => event.seq > reply.lastSeq);
            outcome = "epoch";
            return;
          }
          for (const event of reply.events) {
            if (this.#tracker.classify(event.seq) === "deliver") {
              this.#tracker.accept(event.seq);
              this.emit("event", event);
            }
          }
          this.#held.sort((a, b) => a.seq - b.seq);
          while (this.#held.length > 0 && this.#tracker.classify((this.#held[0] as SessionEvent).seq) !== "gap") {
            const next = this.#held.shift() as SessionEvent;
            if (this.#tracker.accept(next.seq) === "deliver") this.emit("event", next);
          }
          if (this.#held.length === 0) outcome = "done";
          else if (this.#tracker.lastSeq > before) outcome = "more";
          else outcome = "stuck";
        })
        .then(
          () => {
            if (stale()) return;
            if (outcome === "more") {
              step();
              return;
            }
            this.#filling = false;
            if (outcome === "epoch" || outcome === "stuck") {
              if (outcome === "stuck") {
                const first = this.#held[0] as SessionEvent;
                this.#tracker.lastSeq = first.seq - 1;
              }
              this.emit("reload", {
                sessionId: this.sessionId,
                reason: outcome === "epoch" ? "epoch-changed" : "gap-unfillable",
                epoch: this.#epoch,
                lastSeq: this.#tracker.lastSeq,
              });
            }
            this.#host.setCatchingUp(this.sessionId, false);
            this.#drainHeld();
          },
          (error: unknown) => {
            if (stale()) return;
            this.#filling = false;
            if (error instanceof ConnectionClosedError) return; // the re-join replays from lastSeq
            // The gap cannot be read: skip to the first held event and say so.
            const first = this.#held.sort((a, b) => a.seq - b.seq)[0];
            if (first) this.#tracker.lastSeq = first.seq - 1;
            this.#host.setCatchingUp(this.sessionId, false);
            this.emit("reload", {
              sessionId: this.sessionId,
              reason: "gap-unfillable",
              epoch: this.#epoch,
              lastSeq: this.#tracker.lastSeq,
            });
            if (!(error instanceof GatewayError)) this.emit("error", error instanceof Error ? error : new Error(String(error)));
            this.#drainHeld();
          },
        );
    };
    step();
  }

  #stopCatchingUp(): void {
    this.#filling = false;
    this.#reloading = false;
    this.#host.setCatchingUp(this.sessionId, false);
  }
}
