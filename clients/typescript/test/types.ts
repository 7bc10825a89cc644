// Compile-time checks of the public types (`npm run check-types`, part of `npm test`): requests
// infer their reply types, and the generated unions narrow on `type`. Nothing here runs.
import { DiminuendoClient, type Reply, type ServerMessage, type SessionEvent, type WebSocketConstructor } from "../src/index.js";

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
const check = <T extends true>(): T => true as T;

check<Equal<Reply<"join_session">["type"], "session_joined">>();
check<Equal<Reply<"run_turn">["turnId"], string>>();

export async function requests(client: DiminuendoClient): Promise<number> {
  const listing = await client.request({ type: "list_sessions", includeArchived: true });
  check<Equal<typeof listing.type, "session_list">>();
  const joined = await client.request({ type: "join_session", sessionId: "s", afterSeq: 1, epoch: "e" });
  check<Equal<typeof joined.recovered, boolean>>();
  // @ts-expect-error: run_turn needs text
  await client.request({ type: "run_turn", sessionId: "s" });
  // @ts-expect-error: not a request type
  await client.request({ type: "no_such_request" });
  return listing.sessions.length + joined.lastSeq;
}

export function narrow(event: SessionEvent, message: ServerMessage): string {
  switch (event.type) {
    case "text_delta":
    case "thinking_delta":
      return event.text;
    case "permission_requested":
      return event.options.map((option) => `${option.optionId}:${option.kind}`).join(",");
    case "turn_error":
      return event.code;
    case "tool_call":
      return event.toolCallId + (event.content?.length ?? 0);
    default:
      break;
  }
  if (message.type === "error") return message.code;
  if (message.type === "server_shutdown") return String(message.reconnectAfterMs);
  return event.sessionId + event.seq;
}

// The browser's WebSocket fits the `WebSocket` option.
export const browserSocket: WebSocketConstructor = WebSocket;
export const withBrowserSocket = new DiminuendoClient({ url: "ws://127.0.0.1:8080/ws", WebSocket });
