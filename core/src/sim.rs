//! A deterministic in-memory driver for the core: a virtual clock, in-memory connections and
//! partial writes. Tests, fuzz targets and the embedding examples drive the real `Gateway` through
//! it exactly as an adapter would, with every output drained after every input.

use std::collections::{BTreeMap, VecDeque};
use std::io::IoSlice;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::storage::{
    QueryResult, SessionRecord, SessionStatus, StorageCommand, StorageCompletion, StorageError,
    StorageQuery, StoredEvent, TurnRecord,
};
use crate::{AgentCommand, AgentId, ConnectionId, CoreConfig, Event, Gateway};

/// The wall-clock time the simulation starts at (2026-01-01T00:00:00Z), so `ts` fields are
/// reproducible.
pub const SIM_START_UNIX_MS: u64 = 1_767_225_600_000;

/// The client's side of one simulated connection.
#[derive(Debug, Default)]
pub struct Peer {
    /// Bytes the server wrote that the test has not taken yet.
    pub received: Vec<u8>,
    /// The server closed the connection.
    pub closed: bool,
    /// Each write takes at most this many bytes, then the socket reports "would block" until
    /// `Sim::unblock`.
    write_limit: Option<usize>,
    blocked: bool,
}

/// The driver: one real `Gateway` with a virtual clock, in-memory connections, a model of storage
/// and scripted agents. Every method that feeds an input then drains every output, as an adapter
/// does.
pub struct Sim {
    /// The gateway under test.
    pub gateway: Gateway,
    now: Instant,
    next_id: u64,
    peers: BTreeMap<ConnectionId, Peer>,
    /// The simulated storage: writes apply in command order, as the real writer commits them.
    pub store: SimStore,
    /// Storage completions not delivered yet.
    completions: VecDeque<StorageCompletion>,
    /// Hold storage completions until `deliver_storage` (to interleave them with other inputs).
    pub hold_storage: bool,
    /// Every agent process the gateway spawned, dead ones included.
    pub agents: BTreeMap<AgentId, SimAgent>,
    /// How spawned agents behave.
    pub agent_mode: AgentMode,
    config: CoreConfig,
    seed: u64,
    started: Instant,
    /// What the simulated agents answered while the core's events were drained, fed after the
    /// drain (as an adapter's services do: no input is called while outputs are drained).
    agent_inputs: VecDeque<AgentInput>,
    /// What each write of a flush pass took, reported to the core after the pass.
    written: Vec<(ConnectionId, usize, bool)>,
}

/// A simulated agent's report, held until the drain that produced it is over.
#[derive(Debug)]
enum AgentInput {
    Spawned(AgentId, String),
    SpawnFailed(AgentId),
    Line(AgentId, String),
    Exited(AgentId),
}

/// How simulated agents behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentMode {
    /// A built-in ACP echo agent: answers the handshake, echoes each prompt as one chunk and ends
    /// the turn; the text `stream N` streams N chunks `c0`, `c1`, ...
    Echo,
    /// Nothing answers: the test reads `SimAgent::written` and injects lines with `agent_send`.
    Manual,
    /// Spawning fails.
    FailToStart,
}

/// One simulated agent process.
#[derive(Debug, Default)]
pub struct SimAgent {
    /// The session the agent was spawned for.
    pub session_id: String,
    /// Lines the gateway wrote to the agent's stdin.
    pub written: Vec<serde_json::Value>,
    /// Spawned and not exited or killed.
    pub alive: bool,
}

/// The simulated storage: the model of what the real one keeps.
#[derive(Debug, Default, Clone)]
pub struct SimStore {
    /// The registry, by session id.
    pub sessions: BTreeMap<String, SessionRecord>,
    /// Each session's event log, in `seq` order.
    pub events: BTreeMap<String, Vec<StoredEvent>>,
    /// Each session's turns, oldest first.
    pub turns: BTreeMap<String, Vec<TurnRecord>>,
    /// Session members: `(session id, user id)` to role.
    pub members: BTreeMap<(String, String), String>,
    /// Appends whose `seq` did not continue the session's log (a gap or a duplicate). They are
    /// not applied; a correct core never produces one, and tests assert this stays empty.
    pub rejected_appends: Vec<(String, u64)>,
    /// Registry writes fail (as a full disk would): session upserts and deletes are not applied
    /// and `CommitNow` answers an error.
    pub fail_registry: bool,
}

impl SimStore {
    /// Executes one command; a query or flush yields its completion.
    pub fn apply(&mut self, command: StorageCommand) -> Option<StorageCompletion> {
        match command {
            StorageCommand::UpsertSession { .. } | StorageCommand::DeleteSession { .. }
                if self.fail_registry =>
            {
                None
            }
            StorageCommand::CommitNow { token, database } => Some(StorageCompletion::Committed {
                token,
                result: if self.fail_registry {
                    Err(StorageError::Sqlite {
                        database: database.to_string(),
                        message: "database or disk is full".into(),
                    })
                } else {
                    Ok(())
                },
            }),
            StorageCommand::UpsertSession { session } => {
                self.sessions.insert(session.id.clone(), session);
                None
            }
            StorageCommand::DeleteSession { session_id, .. } => {
                self.sessions.remove(&session_id);
                self.events.remove(&session_id);
                self.turns.remove(&session_id);
                None
            }
            StorageCommand::AppendEvent { session_id, event } => {
                let log = self.events.entry(session_id.clone()).or_default();
                if log.last().map_or(0, |last| last.seq) + 1 == event.seq {
                    log.push(event);
                } else {
                    self.rejected_appends.push((session_id, event.seq));
                }
                None
            }
            StorageCommand::UpsertTurn { session_id, turn } => {
                let turns = self.turns.entry(session_id).or_default();
                match turns.iter_mut().find(|t| t.turn_id == turn.turn_id) {
                    Some(existing) => *existing = turn,
                    None => turns.push(turn),
                }
                None
            }
            StorageCommand::UpsertMember { member } => {
                self.members
                    .insert((member.tenant_id, member.user_id), member.role);
                None
            }
            StorageCommand::DeleteMember { tenant_id, user_id } => {
                self.members.remove(&(tenant_id, user_id));
                None
            }
            StorageCommand::Flush { token } => Some(StorageCompletion::Flushed { token }),
            StorageCommand::Shutdown { token } => {
                Some(StorageCompletion::ShutdownComplete { token })
            }
            StorageCommand::Query { token, query } => {
                let result = match query {
                    StorageQuery::ListSessions {
                        tenant_id,
                        include_archived,
                    } => QueryResult::Sessions(
                        self.sessions
                            .values()
                            .filter(|s| {
                                s.tenant_id == tenant_id && (include_archived || !s.archived)
                            })
                            .cloned()
                            .collect(),
                    ),
                    StorageQuery::LoadSession {
                        tenant_id,
                        session_id,
                    } => QueryResult::Session(
                        self.sessions
                            .get(&session_id)
                            .filter(|s| s.tenant_id == tenant_id)
                            .cloned(),
                    ),
                    StorageQuery::EventsAfter {
                        session_id,
                        after_seq,
                        limit,
                    } => {
                        let log = self
                            .events
                            .get(&session_id)
                            .map(Vec::as_slice)
                            .unwrap_or(&[]);
                        let after: Vec<StoredEvent> =
                            log.iter().filter(|e| e.seq > after_seq).cloned().collect();
                        let has_more = after.len() > limit as usize;
                        QueryResult::Events {
                            events: after.into_iter().take(limit as usize).collect(),
                            has_more,
                        }
                    }
                    StorageQuery::History {
                        session_id,
                        before_turn,
                        limit,
                    } => {
                        let turns = self.turns.get(&session_id).cloned().unwrap_or_default();
                        let end = before_turn
                            .and_then(|before| turns.iter().position(|t| t.turn_id == before))
                            .unwrap_or(turns.len());
                        let start = end.saturating_sub(limit as usize);
                        QueryResult::History {
                            turns: turns[start..end].to_vec(),
                            has_more: start > 0,
                        }
                    }
                };
                Some(StorageCompletion::QueryResult {
                    token,
                    result: Ok(result),
                })
            }
        }
    }

    /// What storage recovery does on start: every session inactive, its `last_seq` from its log,
    /// and after an unclean stop a new epoch for every session.
    pub fn recover(&mut self, clean: bool, epoch_seed: u64) -> Vec<SessionRecord> {
        let mut counter = epoch_seed;
        for record in self.sessions.values_mut() {
            record.status = SessionStatus::Inactive;
            record.last_seq = self
                .events
                .get(&record.id)
                .and_then(|log| log.last())
                .map_or(0, |e| e.seq);
            if !clean {
                counter += 1;
                record.epoch = format!("{}-r{counter}", record.epoch);
            }
        }
        self.sessions.values().cloned().collect()
    }
}

impl Sim {
    /// A simulation whose virtual clock starts at `start` (any instant: only differences from it
    /// are ever observed, and the clock only moves through `advance`). The core never reads a
    /// clock, and neither does the simulation: the caller reads one once (`Instant::now()`) and
    /// passes it here.
    pub fn new(config: CoreConfig, seed: u64, start: Instant) -> Self {
        let now = start;
        Sim {
            gateway: Gateway::new(config.clone(), seed, now, SIM_START_UNIX_MS),
            now,
            next_id: 1,
            peers: BTreeMap::new(),
            store: SimStore::default(),
            completions: VecDeque::new(),
            hold_storage: false,
            agents: BTreeMap::new(),
            agent_mode: AgentMode::Echo,
            config,
            seed,
            started: now,
            agent_inputs: VecDeque::new(),
            written: Vec::new(),
        }
    }

    /// A restart: every connection and agent is gone, and a new gateway starts from what the
    /// store kept (`clean`: after a graceful stop; otherwise after a crash, which also loses
    /// the storage completions still held).
    pub fn restart(&mut self, clean: bool) {
        self.completions.clear();
        for peer in self.peers.values_mut() {
            peer.closed = true;
        }
        self.agents.clear();
        self.agent_inputs.clear();
        self.written.clear();
        self.seed += 1;
        let records = self.store.recover(clean, self.seed * 1000);
        let unix_ms = SIM_START_UNIX_MS + self.now.duration_since(self.started).as_millis() as u64;
        self.gateway = Gateway::new(self.config.clone(), self.seed, self.now, unix_ms);
        self.gateway.restore_sessions(records);
    }

    /// Delivers up to `count` held storage completions, oldest first.
    pub fn deliver_storage(&mut self, count: usize) {
        for _ in 0..count {
            let Some(completion) = self.completions.pop_front() else {
                break;
            };
            self.gateway.handle_storage(completion, self.now);
            self.pump();
        }
    }

    /// Storage completions waiting (with `hold_storage`).
    pub fn held_storage(&self) -> usize {
        self.completions.len()
    }

    /// The agent process the gateway started for `session_id` most recently.
    pub fn agent_of(&self, session_id: &str) -> Option<AgentId> {
        self.agents
            .iter()
            .rev()
            .find(|(_, agent)| agent.session_id == session_id && agent.alive)
            .map(|(id, _)| *id)
    }

    /// The agent writes `line` to its stdout.
    pub fn agent_send(&mut self, agent: AgentId, line: &serde_json::Value) {
        let text = line.to_string();
        self.gateway
            .handle_agent_line(agent, text.as_bytes(), self.now);
        self.pump();
    }

    /// The agent writes raw bytes as one line (for invalid output).
    pub fn agent_send_raw(&mut self, agent: AgentId, line: &[u8]) {
        self.gateway.handle_agent_line(agent, line, self.now);
        self.pump();
    }

    /// The agent process dies.
    pub fn agent_exit(&mut self, agent: AgentId) {
        if let Some(sim_agent) = self.agents.get_mut(&agent) {
            sim_agent.alive = false;
        }
        self.gateway.handle_agent_exited(agent, self.now);
        self.pump();
    }

    /// The virtual clock's current instant.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Opens a connection from `127.0.0.1` (a new port each time) and returns its id.
    pub fn connect(&mut self) -> ConnectionId {
        let port = 40_000u16.wrapping_add(self.next_id as u16);
        self.connect_from(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }

    /// A new connection from `peer` (the TCP peer address the gateway sees).
    pub fn connect_from(&mut self, peer: SocketAddr) -> ConnectionId {
        let id = ConnectionId(self.next_id);
        self.next_id += 1;
        self.peers.insert(id, Peer::default());
        self.gateway.handle_accept(id, peer, self.now);
        self.pump();
        id
    }

    /// A new connection under the id of one that is gone, as adapters that recycle ids (a slab
    /// of mio tokens) do.
    pub fn connect_reusing(&mut self, id: ConnectionId) -> ConnectionId {
        self.peers.insert(id, Peer::default());
        self.gateway.handle_accept(
            id,
            SocketAddr::from((Ipv4Addr::LOCALHOST, 40_000)),
            self.now,
        );
        self.pump();
        id
    }

    /// The client sends `bytes` in one read.
    pub fn send(&mut self, id: ConnectionId, bytes: &[u8]) {
        let mut copy = bytes.to_vec();
        self.gateway.handle_data(id, &mut copy, self.now);
        self.pump();
    }

    /// The client's bytes arrive in reads of the given sizes (the last read takes the rest).
    pub fn send_chunked(&mut self, id: ConnectionId, bytes: &[u8], sizes: &[usize]) {
        let mut rest = bytes;
        for size in sizes {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*size).clamp(1, rest.len()));
            self.send(id, chunk);
            rest = tail;
        }
        if !rest.is_empty() {
            self.send(id, rest);
        }
    }

    /// The client closes its side.
    pub fn disconnect(&mut self, id: ConnectionId) {
        self.gateway.handle_closed(id, self.now);
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.closed = true;
        }
        self.pump();
    }

    /// Moves the virtual clock forward, firing every deadline on the way in order.
    pub fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        while let Some(deadline) = self.gateway.poll_timeout().filter(|at| *at <= until) {
            self.now = self.now.max(deadline);
            self.gateway.handle_timeout(self.now);
            self.pump();
        }
        self.now = until;
        self.gateway.handle_timeout(self.now);
        self.pump();
    }

    /// Limits every later write to this connection to `limit` bytes (`None`: unlimited).
    pub fn set_write_limit(&mut self, id: ConnectionId, limit: Option<usize>) {
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.write_limit = limit;
        }
    }

    /// A blocked socket can be written again.
    pub fn unblock(&mut self, id: ConnectionId) {
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.blocked = false;
        }
        self.gateway.handle_writable(id, self.now);
        self.pump();
    }

    /// The client side of connection `id`; `None` for an id never opened.
    pub fn peer(&self, id: ConnectionId) -> Option<&Peer> {
        self.peers.get(&id)
    }

    /// Whether the server closed `id` (or it never existed).
    pub fn is_closed(&self, id: ConnectionId) -> bool {
        self.peers.get(&id).is_none_or(|peer| peer.closed)
    }

    /// Takes every byte received on `id` so far.
    pub fn take_received(&mut self, id: ConnectionId) -> Vec<u8> {
        self.peers
            .get_mut(&id)
            .map(|peer| std::mem::take(&mut peer.received))
            .unwrap_or_default()
    }

    /// Takes one whole HTTP response from the front of what `id` received.
    pub fn take_response(&mut self, id: ConnectionId) -> Option<client::HttpResponse> {
        let peer = self.peers.get_mut(&id)?;
        let (response, len) = client::parse_response(&peer.received)?;
        peer.received.drain(..len);
        Some(response)
    }

    /// Takes every whole WebSocket frame from the front of what `id` received.
    pub fn take_frames(&mut self, id: ConnectionId) -> Vec<client::Frame> {
        let Some(peer) = self.peers.get_mut(&id) else {
            return Vec::new();
        };
        let mut frames = Vec::new();
        let mut offset = 0;
        while let Some((frame, len)) = client::parse_frame(&peer.received[offset..]) {
            frames.push(frame);
            offset += len;
        }
        peer.received.drain(..offset);
        frames
    }

    /// Takes the text of every whole text frame received, parsed as JSON.
    pub fn take_messages(&mut self, id: ConnectionId) -> Vec<serde_json::Value> {
        self.take_frames(id)
            .into_iter()
            .filter(|frame| frame.opcode == 1)
            .filter_map(|frame| serde_json::from_slice(&frame.payload).ok())
            .collect()
    }

    /// Drains every output of the core: closes connections and writes queued bytes, honouring
    /// each peer's write limit. As an adapter must, it calls no input while it drains outputs:
    /// the simulated agents' answers, the storage completions and what each write took are fed
    /// after the drain, and the drain runs again until nothing moves.
    pub fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(event) = self.gateway.poll_event() {
                progressed = true;
                match event {
                    Event::CloseConnection(id) => {
                        if let Some(peer) = self.peers.get_mut(&id) {
                            peer.closed = true;
                        }
                    }
                    Event::Storage(command) => {
                        if let Some(completion) = self.store.apply(command) {
                            self.completions.push_back(completion);
                        }
                    }
                    Event::Agent(command) => self.agent_command(command),
                }
            }
            while let Some(id) = self.gateway.poll_transmit() {
                progressed = true;
                let Some(peer) = self.peers.get_mut(&id) else {
                    continue;
                };
                if peer.blocked || peer.closed {
                    continue;
                }
                let mut slices = [IoSlice::new(&[]); 64];
                let filled = self.gateway.outbound(id, &mut slices);
                let mut budget = peer.write_limit.unwrap_or(usize::MAX);
                let mut written = 0;
                for slice in &slices[..filled] {
                    let take = slice.len().min(budget);
                    peer.received.extend_from_slice(&slice[..take]);
                    written += take;
                    budget -= take;
                    if budget == 0 {
                        break;
                    }
                }
                let waiting = self.gateway.outbound_len(id);
                if written < waiting && peer.write_limit.is_some() {
                    peer.blocked = true;
                }
                // More than 64 slices waited: go round again.
                let again = written < waiting && !peer.blocked;
                self.written.push((id, written, again));
            }
            // The drain is over: the inputs it gave rise to, in order.
            for (id, written, again) in std::mem::take(&mut self.written) {
                self.gateway.handle_sent(id, written, self.now);
                if again {
                    self.gateway.handle_writable(id, self.now);
                }
            }
            while let Some(input) = self.agent_inputs.pop_front() {
                progressed = true;
                match input {
                    AgentInput::Spawned(agent, workspace) => self
                        .gateway
                        .handle_agent_spawned(agent, &workspace, self.now),
                    AgentInput::SpawnFailed(agent) => self.gateway.handle_agent_spawn_failed(
                        agent,
                        "simulated spawn failure",
                        self.now,
                    ),
                    AgentInput::Line(agent, line) => {
                        self.gateway
                            .handle_agent_line(agent, line.as_bytes(), self.now)
                    }
                    AgentInput::Exited(agent) => self.gateway.handle_agent_exited(agent, self.now),
                }
            }
            if !self.hold_storage {
                while let Some(completion) = self.completions.pop_front() {
                    progressed = true;
                    self.gateway.handle_storage(completion, self.now);
                }
            }
            if !progressed {
                break;
            }
        }
    }
}

impl Sim {
    fn agent_command(&mut self, command: AgentCommand) {
        match command {
            AgentCommand::Spawn {
                agent, session_id, ..
            } => {
                if self.agent_mode == AgentMode::FailToStart {
                    self.agent_inputs.push_back(AgentInput::SpawnFailed(agent));
                    return;
                }
                let workspace = format!("/sim/sessions/{session_id}/workspace");
                self.agents.insert(
                    agent,
                    SimAgent {
                        session_id,
                        written: Vec::new(),
                        alive: true,
                    },
                );
                self.agent_inputs
                    .push_back(AgentInput::Spawned(agent, workspace));
            }
            AgentCommand::Write { agent, line } => {
                let Some(sim_agent) = self.agents.get_mut(&agent) else {
                    return;
                };
                let Ok(message) = serde_json::from_slice::<serde_json::Value>(&line) else {
                    return;
                };
                sim_agent.written.push(message.clone());
                if self.agent_mode == AgentMode::Echo && sim_agent.alive {
                    for reply in echo_agent_replies(&message) {
                        self.agent_inputs
                            .push_back(AgentInput::Line(agent, reply.to_string()));
                    }
                }
            }
            AgentCommand::Stop { agent } => {
                if let Some(sim_agent) = self.agents.get_mut(&agent) {
                    if sim_agent.alive {
                        sim_agent.alive = false;
                        self.agent_inputs.push_back(AgentInput::Exited(agent));
                    }
                }
            }
        }
    }
}

/// The built-in echo agent's answers to one message from the gateway.
fn echo_agent_replies(message: &serde_json::Value) -> Vec<serde_json::Value> {
    use serde_json::json;
    let id = message.get("id").cloned();
    let method = message
        .get("method")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("");
    match (method, id) {
        ("initialize", Some(id)) => {
            vec![
                json!({"jsonrpc": "2.0", "id": id, "result": {"protocolVersion": 1, "agentCapabilities": {}}}),
            ]
        }
        ("session/new", Some(id)) => {
            vec![json!({"jsonrpc": "2.0", "id": id, "result": {"sessionId": "sim-session"}})]
        }
        ("session/prompt", Some(id)) => {
            let text = message
                .pointer("/params/prompt/0/text")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_owned();
            let chunks: Vec<String> = match text
                .strip_prefix("stream ")
                .and_then(|n| n.trim().parse::<usize>().ok())
            {
                Some(count) => (0..count).map(|index| format!("c{index} ")).collect(),
                None => vec![text],
            };
            let mut replies: Vec<serde_json::Value> = chunks
                .into_iter()
                .map(|chunk| {
                    json!({"jsonrpc": "2.0", "method": "session/update", "params": {"sessionId": "sim-session",
                        "update": {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": chunk}}}})
                })
                .collect();
            replies.push(json!({"jsonrpc": "2.0", "id": id, "result": {"stopReason": "end_turn"}}));
            replies
        }
        _ => Vec::new(),
    }
}

/// The client side of the wire, for tests and examples: requests, masked frames, and parsers for
/// what the server sends.
pub mod client {
    /// A fixed, valid `Sec-WebSocket-Key`.
    pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    /// An HTTP/1.1 `GET` of `path`.
    pub fn get(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
    }

    /// A valid WebSocket upgrade request for `path`, without a token.
    pub fn upgrade(path: &str) -> Vec<u8> {
        format!(
            "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .into_bytes()
    }

    /// A masked client frame.
    pub fn frame(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0F));
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len @ 126..=65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(
            payload
                .iter()
                .enumerate()
                .map(|(index, byte)| byte ^ mask[index % 4]),
        );
        out
    }

    /// A masked, final text frame.
    pub fn text(payload: &str) -> Vec<u8> {
        frame(1, true, payload.as_bytes(), [0x37, 0xfa, 0x21, 0x3d])
    }

    /// A masked close frame with `code` and no reason.
    pub fn close(code: u16) -> Vec<u8> {
        frame(8, true, &code.to_be_bytes(), [1, 2, 3, 4])
    }

    /// A parsed HTTP response.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct HttpResponse {
        /// The status code.
        pub status: u16,
        /// The headers, in order, as sent.
        pub headers: Vec<(String, String)>,
        /// The body (`Content-Length` bytes).
        pub body: Vec<u8>,
    }

    impl HttpResponse {
        /// The first header called `name` (case-insensitive).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
        }
    }

    /// One whole response from the front of `bytes` and its length. The body is read by
    /// `Content-Length`, so this is for GET responses (HEAD ones have no body to read).
    pub fn parse_response(bytes: &[u8]) -> Option<(HttpResponse, usize)> {
        parse_response_with(bytes, false)
    }

    /// As [`parse_response`]; with `head_only` (the answer to a HEAD request) no body is read.
    pub fn parse_response_with(bytes: &[u8], head_only: bool) -> Option<(HttpResponse, usize)> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head_len) = response.parse(bytes).ok()? else {
            return None;
        };
        let status = response.code?;
        let headers: Vec<(String, String)> = response
            .headers
            .iter()
            .map(|header| {
                (
                    header.name.to_owned(),
                    String::from_utf8_lossy(header.value).into_owned(),
                )
            })
            .collect();
        let length: usize = if head_only {
            0
        } else {
            headers
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, value)| value.parse().ok())
                .unwrap_or(0)
        };
        let body = bytes.get(head_len..head_len + length)?.to_vec();
        Some((
            HttpResponse {
                status,
                headers,
                body,
            },
            head_len + length,
        ))
    }

    /// A server frame.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Frame {
        /// The FIN bit: the last frame of a message.
        pub fin: bool,
        /// The opcode (1 text, 2 binary, 8 close, 9 ping, 10 pong, 0 continuation).
        pub opcode: u8,
        /// The payload, unmasked.
        pub payload: Vec<u8>,
    }

    impl Frame {
        /// The close code of a close frame.
        pub fn close_code(&self) -> Option<u16> {
            (self.opcode == 8 && self.payload.len() >= 2)
                .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
        }
    }

    /// One whole (unmasked) server frame from the front of `bytes` and its length.
    pub fn parse_frame(bytes: &[u8]) -> Option<(Frame, usize)> {
        let first = *bytes.first()?;
        let second = *bytes.get(1)?;
        let (len, mut offset) = match second & 0x7F {
            126 => (
                u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]) as usize,
                4,
            ),
            127 => {
                let raw: [u8; 8] = bytes.get(2..10)?.try_into().ok()?;
                (usize::try_from(u64::from_be_bytes(raw)).ok()?, 10)
            }
            len => (len as usize, 2),
        };
        let mask = if second & 0x80 != 0 {
            let mask: [u8; 4] = bytes.get(offset..offset + 4)?.try_into().ok()?;
            offset += 4;
            Some(mask)
        } else {
            None
        };
        let mut payload = bytes.get(offset..offset + len)?.to_vec();
        if let Some(mask) = mask {
            payload
                .iter_mut()
                .enumerate()
                .for_each(|(index, byte)| *byte ^= mask[index % 4]);
        }
        Some((
            Frame {
                fin: first & 0x80 != 0,
                opcode: first & 0x0F,
                payload,
            },
            offset + len,
        ))
    }
}
