// One session's view: its turns in order (the prompt, the agent's text rendered as Markdown as it
// streams, thinking collapsed, tool calls with status and diffs, the plan, permission prompts),
// the latest usage, and how each turn ended. Built from the session's events only, so a view
// drawn from a replay is the same as one drawn live.

import type { SessionEvent } from "../../clients/typescript/src/index.ts";
import { h, clear } from "./dom.ts";
import { renderMarkdown } from "./markdown.ts";

type Diff = { type: "diff"; path: string; oldText?: string | null; newText: string };
type ToolContent = { type: string; [key: string]: unknown };

interface ToolCallState {
  element: HTMLElement;
  title: string;
  kind: string;
  status: string;
  content: ToolContent[];
  locations: { path: string; line?: number }[];
  input: unknown;
  rawOutput: unknown;
}

/** A run of the agent's text between two other items (a tool call, a question). Blocks before
 * the last blank line outside a code fence are final: drawn once; only the rest is redrawn as
 * text streams in, so a long answer costs its last block per frame, not its whole length. */
interface Segment {
  text: string;
  element: HTMLElement;
  dirty: boolean;
  /** How much of `text` is drawn for good. */
  stable: number;
  /** The nodes drawn from `text` after `stable` (replaced at every redraw). */
  tail: Node[];
}

interface TurnView {
  element: HTMLElement;
  body: HTMLElement;
  /** The text run that grows with the next delta; `null` after another item was drawn. */
  segment: Segment | null;
  thinking: string;
  thinkingElement: HTMLElement | null;
  ended: boolean;
}

export interface Answer {
  (questionId: string, optionId: string): Promise<void>;
}

export class SessionView {
  readonly element: HTMLElement;
  private readonly log: HTMLElement;
  private readonly planElement: HTMLElement;
  private readonly usageElement: HTMLElement;
  private readonly turns = new Map<string, TurnView>();
  private readonly toolCalls = new Map<string, ToolCallState>();
  private readonly questions = new Map<string, HTMLElement>();
  private lastSeq = 0;
  private frame = 0;
  /** The turn that runs (its id), if one does. */
  runningTurn: string | null = null;

  constructor(
    readonly sessionId: string,
    private readonly answer: Answer,
  ) {
    this.log = h("div", { class: "log", "data-testid": "log" });
    this.planElement = h("div", { class: "plan", hidden: true, "data-testid": "plan" });
    this.usageElement = h("div", { class: "usage", hidden: true, "data-testid": "usage" });
    this.element = h(
      "div",
      { class: "session-view" },
      h("div", { class: "panels" }, this.usageElement, this.planElement),
      this.log,
    );
  }

  /** Forgets everything drawn (before a reload redraws the session from its first event). */
  reset(): void {
    clear(this.log);
    this.turns.clear();
    this.toolCalls.clear();
    this.questions.clear();
    this.planElement.hidden = true;
    this.usageElement.hidden = true;
    this.lastSeq = 0;
    this.runningTurn = null;
  }

  /** Draws one event; an event at or before the last one drawn is ignored. */
  apply(event: SessionEvent): void {
    if (event.seq <= this.lastSeq) return;
    this.lastSeq = event.seq;
    const turnId = event.turnId;
    switch (event.type) {
      case "turn_started": {
        const turn = this.turn(turnId ?? `seq-${event.seq}`);
        turn.body.before(h("div", { class: "prompt", "data-testid": "prompt" }, event.text));
        turn.element.dataset.state = "running";
        this.runningTurn = turnId ?? null;
        break;
      }
      case "text_delta": {
        const turn = this.turn(turnId);
        if (!turn.segment) {
          turn.segment = {
            text: "",
            element: h("div", { class: "agent-text markdown", "data-testid": "agent-text" }),
            dirty: false,
            stable: 0,
            tail: [],
          };
          turn.body.appendChild(turn.segment.element);
        }
        turn.segment.text += event.text;
        turn.segment.dirty = true;
        this.schedule();
        break;
      }
      case "thinking_delta": {
        const turn = this.turn(turnId);
        turn.thinking += event.text;
        if (!turn.thinkingElement) {
          const pre = h("div", { class: "thinking-text" });
          turn.thinkingElement = pre;
          turn.body.insertBefore(
            h("details", { class: "thinking", "data-testid": "thinking" }, h("summary", {}, "Thinking"), pre),
            turn.body.firstChild,
          );
        }
        turn.thinkingElement.textContent = turn.thinking;
        break;
      }
      case "tool_call": {
        const state: ToolCallState = {
          element: h("div", { class: "tool-call", "data-testid": "tool-call" }),
          title: event.title,
          kind: event.kind,
          status: event.status,
          content: (event.content ?? []) as ToolContent[],
          locations: event.locations ?? [],
          input: event.input,
          rawOutput: event.rawOutput,
        };
        this.toolCalls.set(this.toolKey(turnId, event.toolCallId), state);
        this.endSegment(this.turn(turnId));
        this.turn(turnId).body.appendChild(state.element);
        this.drawToolCall(state);
        break;
      }
      case "tool_call_update": {
        const state = this.toolCalls.get(this.toolKey(turnId, event.toolCallId));
        if (!state) break;
        if (event.title != null) state.title = event.title;
        if (event.kind != null) state.kind = event.kind;
        if (event.status != null) state.status = event.status;
        if (event.content !== undefined) state.content = event.content as ToolContent[];
        if (event.locations !== undefined) state.locations = event.locations;
        if (event.input !== undefined) state.input = event.input;
        if (event.rawOutput !== undefined) state.rawOutput = event.rawOutput;
        this.drawToolCall(state);
        break;
      }
      case "plan":
        this.drawPlan(event.entries);
        break;
      case "usage":
        this.drawUsage(event.used, event.size, event.cost);
        break;
      case "permission_requested": {
        const turn = this.turn(turnId);
        this.endSegment(turn);
        const buttons = event.options.map((option) =>
          h(
            "button",
            {
              class: `option ${option.kind.startsWith("allow") ? "allow" : "reject"}`,
              "data-option-id": option.optionId,
              onclick: () => void this.choose(event.questionId, option.optionId),
            },
            option.name,
          ),
        );
        const element = h(
          "div",
          { class: "question", "data-testid": "question", "data-question-id": event.questionId, "data-state": "open" },
          h("div", { class: "question-title" }, "Permission: ", event.title),
          h("div", { class: "question-options" }, ...buttons),
          h("div", { class: "question-result" }),
        );
        this.questions.set(event.questionId, element);
        turn.body.appendChild(element);
        break;
      }
      case "permission_resolved": {
        const element = this.questions.get(event.questionId);
        if (!element) break;
        element.dataset.state = "resolved";
        for (const button of element.querySelectorAll("button")) button.disabled = true;
        const result = element.querySelector(".question-result");
        if (result) {
          result.textContent = event.cancelled
            ? "cancelled"
            : `answered ${event.optionId ?? ""}${event.userId ? ` by ${event.userId}` : ""}`;
        }
        break;
      }
      case "turn_complete":
      case "turn_error": {
        const turn = this.turn(turnId);
        this.endSegment(turn);
        turn.ended = true;
        turn.element.dataset.state = event.type === "turn_complete" ? "complete" : "error";
        const ending =
          event.type === "turn_complete"
            ? h("div", { class: "turn-end", "data-testid": "turn-end" }, `ended: ${event.stopReason}`)
            : h("div", { class: "turn-end error", "data-testid": "turn-end" }, `${event.code}: ${event.message}`);
        turn.element.appendChild(ending);
        if (this.runningTurn === turnId) this.runningTurn = null;
        break;
      }
      case "file_changed":
        this.endSegment(this.turn(turnId));
        this.turn(turnId).body.appendChild(h("div", { class: "note" }, "wrote ", h("code", {}, event.path)));
        break;
      case "agent_update":
      case "session_state":
      case "available_commands_update":
      case "current_mode_update":
      case "config_option_update":
        break;
    }
  }

  private async choose(questionId: string, optionId: string): Promise<void> {
    const element = this.questions.get(questionId);
    if (element) element.dataset.state = "answering";
    try {
      await this.answer(questionId, optionId);
    } catch (error) {
      if (element) {
        element.dataset.state = "open";
        const result = element.querySelector(".question-result");
        if (result) result.textContent = String(error);
      }
    }
  }

  private toolKey(turnId: string | undefined, toolCallId: string): string {
    return `${turnId ?? ""}\u0000${toolCallId}`;
  }

  private turn(turnId: string | undefined): TurnView {
    const key = turnId ?? "(no turn)";
    let turn = this.turns.get(key);
    if (!turn) {
      const body = h("div", { class: "turn-body" });
      const element = h("section", { class: "turn", "data-turn-id": key, "data-testid": "turn" }, body);
      turn = {
        element,
        body,
        segment: null,
        thinking: "",
        thinkingElement: null,
        ended: false,
      };
      this.turns.set(key, turn);
      this.log.appendChild(element);
    }
    return turn;
  }

  /** Redraws streaming text at most once a frame. */
  private schedule(): void {
    if (this.frame !== 0) return;
    const run = () => {
      this.frame = 0;
      for (const turn of this.turns.values()) this.flushText(turn);
    };
    this.frame = typeof requestAnimationFrame === "function" ? requestAnimationFrame(run) : 1;
    if (typeof requestAnimationFrame !== "function") queueMicrotask(run);
  }

  private flushText(turn: TurnView): void {
    const segment = turn.segment;
    if (!segment || !segment.dirty) return;
    segment.dirty = false;
    for (const node of segment.tail) node.parentNode?.removeChild(node);
    const boundary = segment.text.lastIndexOf("\n\n");
    if (boundary > segment.stable) {
      const settled = segment.text.slice(segment.stable, boundary);
      if (fences(settled) % 2 === 0) {
        segment.element.appendChild(renderMarkdown(settled));
        segment.stable = boundary;
      }
    }
    const tail = renderMarkdown(segment.text.slice(segment.stable));
    segment.tail = [...tail.childNodes];
    segment.element.appendChild(tail);
    segment.element.dataset.length = String(segment.text.length);
  }

  /** Draws the text run so far and starts a new one for later text. */
  private endSegment(turn: TurnView): void {
    this.flushText(turn);
    turn.segment = null;
  }

  /** Draws everything pending now (tests and screenshots wait for the page, not a frame). */
  flush(): void {
    for (const turn of this.turns.values()) this.flushText(turn);
  }

  private drawToolCall(state: ToolCallState): void {
    const parts: HTMLElement[] = [
      h(
        "div",
        { class: "tool-head" },
        h("span", { class: `status status-${state.status}`, "data-testid": "tool-status" }, state.status),
        h("span", { class: "tool-kind" }, state.kind),
        h("span", { class: "tool-title" }, state.title),
      ),
    ];
    if (state.locations.length > 0) {
      parts.push(
        h(
          "div",
          { class: "tool-locations" },
          ...state.locations.map((l) => h("code", {}, l.line != null ? `${l.path}:${l.line}` : l.path)),
        ),
      );
    }
    for (const item of state.content) {
      if (item.type === "diff") parts.push(drawDiff(item as unknown as Diff));
      else if (item.type === "content") {
        const block = (item as { content?: { type?: string; text?: unknown } }).content;
        if (block?.type === "text" && typeof block.text === "string") {
          parts.push(h("pre", { class: "tool-output" }, block.text));
        } else {
          parts.push(h("pre", { class: "tool-output" }, JSON.stringify(block, null, 2)));
        }
      } else if (item.type === "terminal") {
        parts.push(h("div", { class: "note" }, "terminal ", h("code", {}, String(item.terminalId))));
      }
    }
    const details: HTMLElement[] = [];
    if (state.input !== undefined) details.push(h("div", {}, "input"), h("pre", {}, json(state.input)));
    if (state.rawOutput !== undefined) details.push(h("div", {}, "output"), h("pre", {}, json(state.rawOutput)));
    if (details.length > 0) {
      parts.push(h("details", { class: "tool-raw" }, h("summary", {}, "raw input and output"), ...details));
    }
    state.element.dataset.status = state.status;
    state.element.replaceChildren(...parts);
  }

  private drawPlan(entries: unknown): void {
    const list = Array.isArray(entries) ? entries : [];
    this.planElement.hidden = list.length === 0;
    this.planElement.replaceChildren(
      h("div", { class: "panel-title" }, "Plan"),
      h(
        "ol",
        {},
        ...list.map((entry) => {
          const e = (entry ?? {}) as { content?: unknown; status?: unknown; priority?: unknown };
          const status = typeof e.status === "string" ? e.status : "pending";
          return h(
            "li",
            { class: "plan-entry", "data-status": status },
            h("span", { class: `status status-${status}` }, status),
            " ",
            String(e.content ?? ""),
            typeof e.priority === "string" ? h("span", { class: "priority" }, e.priority) : null,
          );
        }),
      ),
    );
  }

  private drawUsage(used: unknown, size: unknown, cost: unknown): void {
    this.usageElement.hidden = false;
    const parts: string[] = [];
    if (typeof used === "number" && typeof size === "number" && size > 0) {
      parts.push(`${used.toLocaleString("en")} / ${size.toLocaleString("en")} tokens (${((100 * used) / size).toFixed(1)}%)`);
    } else {
      parts.push(`${String(used)} / ${String(size)} tokens`);
    }
    const c = cost as { amount?: unknown; currency?: unknown } | undefined;
    if (c && typeof c.amount === "number") parts.push(`cost ${c.amount} ${String(c.currency ?? "")}`.trim());
    this.usageElement.replaceChildren(h("span", { class: "panel-title" }, "Usage"), " ", parts.join(" · "));
  }
}

/** How many code fence lines `text` has (an odd count: it ends inside a fence). */
function fences(text: string): number {
  return text.split("\n").filter((line) => /^ {0,3}(```|~~~)/.test(line)).length;
}

function json(value: unknown): string {
  try {
    return JSON.stringify(value, null, 2) ?? String(value);
  } catch {
    return String(value);
  }
}

/** A line diff of `oldText` → `newText` (longest common subsequence; plain lists when large). */
export function drawDiff(diff: Diff): HTMLElement {
  const before = (diff.oldText ?? "").split("\n");
  const after = diff.newText.split("\n");
  if (before[before.length - 1] === "") before.pop();
  if (after[after.length - 1] === "") after.pop();
  const rows: HTMLElement[] = [];
  for (const [sign, line] of lineDiff(before, after)) {
    rows.push(h("div", { class: sign === "+" ? "add" : sign === "-" ? "del" : "same" }, `${sign} ${line}`));
  }
  return h(
    "div",
    { class: "diff", "data-testid": "diff" },
    h("div", { class: "diff-path" }, diff.oldText == null ? "new file " : "", h("code", {}, diff.path)),
    h("div", { class: "diff-lines" }, ...rows),
  );
}

function lineDiff(a: string[], b: string[]): [string, string][] {
  if (a.length * b.length > 250_000) {
    return [...a.map((l): [string, string] => ["-", l]), ...b.map((l): [string, string] => ["+", l])];
  }
  const table: number[][] = Array.from({ length: a.length + 1 }, () => new Array<number>(b.length + 1).fill(0));
  for (let i = a.length - 1; i >= 0; i--) {
    for (let j = b.length - 1; j >= 0; j--) {
      table[i]![j] = a[i] === b[j] ? table[i + 1]![j + 1]! + 1 : Math.max(table[i + 1]![j]!, table[i]![j + 1]!);
    }
  }
  const out: [string, string][] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    if (a[i] === b[j]) {
      out.push([" ", a[i]!]);
      i++;
      j++;
    } else if (table[i + 1]![j]! >= table[i]![j + 1]!) {
      out.push(["-", a[i]!]);
      i++;
    } else {
      out.push(["+", b[j]!]);
      j++;
    }
  }
  while (i < a.length) out.push(["-", a[i++]!]);
  while (j < b.length) out.push(["+", b[j++]!]);
  return out;
}
