//! A deterministic in-memory driver for the core: a virtual clock, in-memory connections and
//! partial writes. Tests, fuzz targets and the embedding examples drive the real `Gateway` through
//! it exactly as an adapter would, with every output drained after every input.
//!
//! The driver and its connections are here; the model of storage is in `store`, the scripted
//! agent processes in `agents`, the client side of the wire in `client`.

mod agents;
pub mod client;
pub mod cluster;
mod store;

use std::collections::{BTreeMap, VecDeque};
use std::io::IoSlice;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::storage::StorageCompletion;
use crate::{AgentId, ConnectionId, CoreConfig, Event, Gateway};

use agents::AgentInput;
pub use agents::{AgentMode, SimAgent};
pub use store::SimStore;

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
    /// The simulated agent host's files, by absolute path (`/sim/sessions/{id}/workspace/...`):
    /// what agents with `fs = true` read and write through `fs/*`.
    pub files: BTreeMap<String, String>,
    /// Hold each agent's `Spawned` report until `release_spawns` (a process slow to start).
    pub hold_spawns: bool,
    held_spawns: Vec<(AgentId, String)>,
    config: CoreConfig,
    seed: u64,
    started: Instant,
    /// What the simulated agents answered while the core's events were drained, fed after the
    /// drain (as an adapter's services do: no input is called while outputs are drained).
    agent_inputs: VecDeque<AgentInput>,
    /// What each write of a flush pass took, reported to the core after the pass.
    written: Vec<(ConnectionId, usize, bool)>,
    /// Cluster commands the gateway emitted (cluster mode), for the cluster simulation to
    /// take with `take_cluster_commands`.
    cluster_out: VecDeque<crate::cluster::ClusterCommand>,
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
            files: BTreeMap::new(),
            hold_spawns: false,
            held_spawns: Vec::new(),
            config,
            seed,
            started: now,
            agent_inputs: VecDeque::new(),
            written: Vec::new(),
            cluster_out: VecDeque::new(),
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
        self.held_spawns.clear();
        self.written.clear();
        self.seed += 1;
        let records = self.store.recover(clean, self.seed * 1000);
        let unix_ms = SIM_START_UNIX_MS + self.now.duration_since(self.started).as_millis() as u64;
        self.gateway = Gateway::new(self.config.clone(), self.seed, self.now, unix_ms);
        self.gateway.restore_sessions(records);
    }

    /// The cluster commands the gateway emitted since the last call, in order.
    pub fn take_cluster_commands(&mut self) -> Vec<crate::cluster::ClusterCommand> {
        self.cluster_out.drain(..).collect()
    }

    /// Feeds a cluster completion to the gateway and drains its outputs.
    pub fn cluster_input(&mut self, completion: crate::cluster::ClusterCompletion) {
        self.gateway.handle_cluster(completion, self.now);
        self.pump();
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

    /// Reports every `Spawned` held back by `hold_spawns`, oldest first.
    pub fn release_spawns(&mut self) {
        for (agent, workspace) in std::mem::take(&mut self.held_spawns) {
            self.gateway
                .handle_agent_spawned(agent, &workspace, self.now);
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
                    Event::Cluster(command) => self.cluster_out.push_back(command),
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
                    AgentInput::FileRead(agent, request, result) => self
                        .gateway
                        .handle_agent_file_read(agent, request, result, self.now),
                    AgentInput::FileWritten(agent, request, result) => self
                        .gateway
                        .handle_agent_file_written(agent, request, result, self.now),
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
