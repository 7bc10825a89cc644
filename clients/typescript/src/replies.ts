import type {
  AuthenticatedMessage,
  ClientRequest,
  ConfigOptionSetReply,
  EventsReply,
  HistoryReply,
  ModeSetReply,
  PongMessage,
  QuestionAnsweredReply,
  SessionCreatedMessage,
  SessionDeletedMessage,
  SessionJoinedReply,
  SessionLeftReply,
  SessionListMessage,
  SessionUpdatedMessage,
  TurnAcceptedReply,
  TurnStoppingReply,
} from "./generated/protocol.js";

/** The reply of each request type (docs/PROTOCOL.md and the contract's request table). */
export interface ReplyMap {
  ping: PongMessage;
  authenticate: AuthenticatedMessage;
  list_sessions: SessionListMessage;
  create_session: SessionCreatedMessage;
  rename_session: SessionUpdatedMessage;
  archive_session: SessionUpdatedMessage;
  unarchive_session: SessionUpdatedMessage;
  delete_session: SessionDeletedMessage;
  join_session: SessionJoinedReply;
  leave_session: SessionLeftReply;
  get_events: EventsReply;
  get_history: HistoryReply;
  run_turn: TurnAcceptedReply;
  steer: TurnAcceptedReply;
  stop_turn: TurnStoppingReply;
  answer_question: QuestionAnsweredReply;
  set_mode: ModeSetReply;
  set_config_option: ConfigOptionSetReply;
}

/** The reply type of a request type, e.g. `Reply<"join_session">` is `SessionJoinedReply`. */
export type Reply<T extends ClientRequest["type"]> = ReplyMap[T];

/** The request of a request type. */
export type RequestOf<T extends ClientRequest["type"]> = Extract<ClientRequest, { type: T }>;

/** The `type` of the reply each request type expects (checked at run time). */
export const REPLY_TYPES: { readonly [T in ClientRequest["type"]]: Reply<T>["type"] } = {
  ping: "pong",
  authenticate: "authenticated",
  list_sessions: "session_list",
  create_session: "session_created",
  rename_session: "session_updated",
  archive_session: "session_updated",
  unarchive_session: "session_updated",
  delete_session: "session_deleted",
  join_session: "session_joined",
  leave_session: "session_left",
  get_events: "events",
  get_history: "history",
  run_turn: "turn_accepted",
  steer: "turn_accepted",
  stop_turn: "turn_stopping",
  answer_question: "question_answered",
  set_mode: "mode_set",
  set_config_option: "config_option_set",
};
