/** What to do with an event, given the last `seq` delivered. */
export type SeqVerdict = "deliver" | "duplicate" | "gap";

/**
 * The per-session `seq` bookkeeping of a stream: every `seq` is delivered once and in order.
 * `seq <= lastSeq` is a duplicate (a replay overlapping what was seen), `lastSeq + 1` the next
 * one, anything beyond a gap to fill before it.
 */
export class SeqTracker {
  /** The last `seq` delivered (0 before the first). */
  lastSeq: number;

  constructor(lastSeq = 0) {
    this.lastSeq = lastSeq;
  }

  /** Classifies `seq` without changing anything. */
  classify(seq: number): SeqVerdict {
    if (seq <= this.lastSeq) return "duplicate";
    if (seq === this.lastSeq + 1) return "deliver";
    return "gap";
  }

  /** Classifies `seq` and, when it is the next one, moves past it. */
  accept(seq: number): SeqVerdict {
    const verdict = this.classify(seq);
    if (verdict === "deliver") this.lastSeq = seq;
    return verdict;
  }
}
