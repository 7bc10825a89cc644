//! Tests of the whole crate through its public API (threads included), plus a property test.

use crate::*;
use bytes::Bytes;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Counts wakes; lets a test block until the next one (no sleeping).
#[derive(Default)]
pub struct TestWake {
    count: Mutex<u64>,
    cv: Condvar,
}

impl Wake for TestWake {
    fn wake(&self) {
        *self.count.lock().unwrap() += 1;
        self.cv.notify_all();
    }
}

pub struct Harness {
    pub storage: Storage,
    pub wake: Arc<TestWake>,
    pub pending: Vec<StorageCompletion>,
}

impl Harness {
    pub fn open(cfg: StorageConfig) -> (Harness, RecoveryReport) {
        let wake = Arc::new(TestWake::default());
        let (storage, report) = Storage::open(cfg, wake.clone()).unwrap();
        (
            Harness {
                storage,
                wake,
                pending: Vec::new(),
            },
            report,
        )
    }

    pub fn submit(&self, cmd: StorageCommand) {
        self.storage.submit(cmd).unwrap();
    }

    /// Waits (on the wake hook) for the completion `pick` selects.
    pub fn wait_for(
        &mut self,
        mut pick: impl FnMut(&StorageCompletion) -> bool,
    ) -> StorageCompletion {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let seen = *self.wake.count.lock().unwrap();
            self.storage.drain_completions(&mut self.pending);
            if let Some(i) = self.pending.iter().position(&mut pick) {
                return self.pending.remove(i);
            }
            let guard = self.wake.count.lock().unwrap();
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for a completion");
            let _unused = self.wake.cv.wait_timeout_while(guard, left, |c| *c == seen);
        }
    }

    pub fn flush(&mut self, token: u64) {
        self.submit(StorageCommand::Flush { token });
        self.wait_for(|c| matches!(c, StorageCompletion::Flushed { token: t } if *t == token));
    }

    pub fn query(&mut self, token: u64, query: StorageQuery) -> Result<QueryResult, StorageError> {
        self.submit(StorageCommand::Query { token, query });
        match self.wait_for(
            |c| matches!(c, StorageCompletion::QueryResult { token: t, .. } if *t == token),
        ) {
            StorageCompletion::QueryResult { result, .. } => result,
            _ => unreachable!(),
        }
    }

    pub fn events(&mut self, token: u64, session: &str) -> Vec<StoredEvent> {
        match self.query(
            token,
            StorageQuery::EventsAfter {
                session_id: session.into(),
                after_seq: 0,
                limit: 1_000_000,
            },
        ) {
            Ok(QueryResult::Events { events, .. }) => events,
            other => panic!("{other:?}"),
        }
    }

    pub fn failures(&mut self) -> Vec<StorageCompletion> {
        self.storage.drain_completions(&mut self.pending);
        let (f, rest) = self
            .pending
            .drain(..)
            .partition(|c| matches!(c, StorageCompletion::WriteFailed { .. }));
        self.pending = rest;
        f
    }
}

pub fn session(tenant: &str, id: &str, status: SessionStatus, epoch: &str) -> SessionRecord {
    SessionRecord {
        id: id.into(),
        tenant_id: tenant.into(),
        name: format!("name of {id}"),
        agent_type: "echo".into(),
        status,
        archived: false,
        created_by: "dev-user-001".into(),
        created_at_ms: 1_700_000_000_000,
        updated_at_ms: 1_700_000_000_000,
        last_seq: 0,
        epoch: epoch.into(),
        acp_session_id: None,
    }
}

pub fn event(session: &str, seq: u64) -> StorageCommand {
    StorageCommand::AppendEvent {
        session_id: session.into(),
        event: StoredEvent {
            seq,
            event_type: "text_delta".into(),
            turn_id: Some("t1".into()),
            payload: Bytes::from(format!(
                r#"{{"type":"text_delta","sessionId":"{session}","seq":{seq},"ts":1,"text":"hé\u00e9 {seq}"}}"#
            )),
            ts_ms: 1_700_000_000_000 + seq as i64,
        },
    }
}

fn turn(id: &str, final_text: Option<&str>) -> TurnRecord {
    TurnRecord {
        turn_id: id.into(),
        user_id: Some("u".into()),
        user_text: format!("question {id}"),
        final_text: final_text.map(Into::into),
        final_text_truncated: false,
        stop_reason: final_text.map(|_| "end_turn".into()),
        usage_json: Some(r#"{"used":10,"size":100}"#.into()),
        tool_calls_json: None,
        started_at_ms: 1,
        completed_at_ms: final_text.map(|_| 2),
        content_json: None,
    }
}

/// Counts the rows of a session's log straight from the file (0 if it does not exist).
fn rows_on_disk(data_dir: &Path, session: &str) -> i64 {
    let p = session_path(data_dir, session).unwrap();
    if !p.exists() {
        return 0;
    }
    let c = rusqlite::Connection::open_with_flags(p, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .unwrap_or(0)
}

/// A clock the test moves by hand.
struct ManualClock(Mutex<Instant>);

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap()
    }
}

impl ManualClock {
    fn advance(&self, d: Duration) {
        *self.0.lock().unwrap() += d;
    }
}

fn cfg(dir: &Path) -> StorageConfig {
    let mut c = StorageConfig::new(dir);
    // Nothing in these tests may depend on a timer firing.
    c.flush_interval = Duration::from_secs(3600);
    c
}

#[test]
fn round_trip_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, report) = Harness::open(cfg(dir.path()));
    assert_eq!(report.sessions, 0);
    let mut s1 = session("acme", "s1", SessionStatus::Inactive, "e1");
    h.submit(StorageCommand::UpsertSession {
        session: s1.clone(),
    });
    let mut s2 = session("acme", "s2", SessionStatus::Inactive, "e2");
    s2.created_at_ms += 1;
    s2.archived = true;
    h.submit(StorageCommand::UpsertSession {
        session: s2.clone(),
    });
    for seq in 1..=5 {
        h.submit(event("s1", seq));
    }
    h.submit(StorageCommand::UpsertTurn {
        session_id: "s1".into(),
        turn: turn("t1", None),
    });
    h.submit(StorageCommand::UpsertTurn {
        session_id: "s1".into(),
        turn: turn("t2", Some("two")),
    });
    h.submit(StorageCommand::UpsertTurn {
        session_id: "s1".into(),
        turn: turn("t1", Some("one")),
    });
    h.submit(StorageCommand::UpsertMember {
        member: MemberRecord {
            tenant_id: "acme".into(),
            user_id: "u1".into(),
            role: "owner".into(),
            created_at_ms: 1,
            updated_at_ms: 1,
        },
    });
    s1.name = "renamed".into();
    h.submit(StorageCommand::UpsertSession {
        session: s1.clone(),
    });

    // Read-your-writes with no flush and a one-hour interval.
    let evs = h.events(1, "s1");
    assert_eq!(evs.len(), 5);
    for (i, e) in evs.iter().enumerate() {
        let StorageCommand::AppendEvent { event, .. } = event("s1", i as u64 + 1) else {
            unreachable!()
        };
        assert_eq!(e, &event, "not byte-identical");
    }
    match h.query(
        2,
        StorageQuery::EventsAfter {
            session_id: "s1".into(),
            after_seq: 2,
            limit: 2,
        },
    ) {
        Ok(QueryResult::Events { events, has_more }) => {
            assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
            assert!(has_more);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.query(
            3,
            StorageQuery::ListSessions {
                tenant_id: "acme".into(),
                include_archived: false
            }
        ),
        Ok(QueryResult::Sessions(vec![s1.clone()]))
    );
    assert_eq!(
        h.query(
            4,
            StorageQuery::ListSessions {
                tenant_id: "acme".into(),
                include_archived: true
            }
        ),
        Ok(QueryResult::Sessions(vec![s1.clone(), s2.clone()]))
    );
    assert_eq!(
        h.query(
            5,
            StorageQuery::LoadSession {
                tenant_id: "other".into(),
                session_id: "s1".into()
            }
        ),
        Ok(QueryResult::Session(None)),
        "a session is only found in its own tenant"
    );
    match h.query(
        6,
        StorageQuery::History {
            session_id: "s1".into(),
            before_turn: None,
            limit: 10,
        },
    ) {
        Ok(QueryResult::History { turns, has_more }) => {
            assert!(!has_more);
            assert_eq!(
                turns,
                vec![turn("t1", Some("one")), turn("t2", Some("two"))]
            );
        }
        other => panic!("{other:?}"),
    }
    match h.query(
        7,
        StorageQuery::History {
            session_id: "s1".into(),
            before_turn: Some("t2".into()),
            limit: 10,
        },
    ) {
        Ok(QueryResult::History { turns, .. }) => assert_eq!(turns, vec![turn("t1", Some("one"))]),
        other => panic!("{other:?}"),
    }
    // Unknown session: empty, not an error.
    assert_eq!(h.events(8, "nope"), vec![]);

    h.submit(StorageCommand::DeleteSession {
        tenant_id: "acme".into(),
        session_id: "s1".into(),
    });
    h.flush(9);
    assert!(!dir.path().join("sessions/s1").exists());
    assert_eq!(h.events(10, "s1"), vec![]);
    assert!(h.failures().is_empty());
    h.storage.shutdown_blocking().unwrap();
    assert!(dir.path().join(CLEAN_MARKER).exists());
    assert!(h
        .storage
        .submit(StorageCommand::Flush { token: 1 })
        .is_err());
}

#[test]
fn invalid_identifiers_are_refused_before_any_file_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let (h, _) = Harness::open(cfg(dir.path()));
    for bad in ["../x", "a/b", "..", "", "x\0"] {
        assert!(matches!(
            h.storage.submit(event(bad, 1)),
            Err(StorageError::InvalidIdentifier { .. })
        ));
        assert!(h
            .storage
            .submit(StorageCommand::UpsertSession {
                session: session(bad, "ok", SessionStatus::Inactive, "e")
            })
            .is_err());
        assert!(h
            .storage
            .submit(StorageCommand::UpsertSession {
                session: session("ok", bad, SessionStatus::Inactive, "e")
            })
            .is_err());
        assert!(h
            .storage
            .submit(StorageCommand::Query {
                token: 1,
                query: StorageQuery::ListSessions {
                    tenant_id: bad.into(),
                    include_archived: true
                }
            })
            .is_err());
    }
    assert!(!dir.path().join("x").exists());
}

#[test]
fn batches_flush_at_the_interval_with_an_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock(Mutex::new(Instant::now())));
    let mut c = StorageConfig::new(dir.path());
    c.flush_interval = Duration::from_millis(50);
    c.batch_size = 1000;
    c.clock = clock.clone();
    let (mut h, _) = Harness::open(c);
    h.submit(event("a", 1));
    // A query of another session is a barrier: the writer has handled everything before it.
    h.events(1, "other");
    assert_eq!(
        rows_on_disk(dir.path(), "a"),
        0,
        "flushed before the interval"
    );
    clock.advance(Duration::from_millis(49));
    h.events(2, "other");
    assert_eq!(
        rows_on_disk(dir.path(), "a"),
        0,
        "flushed before the interval"
    );
    h.submit(event("a", 2));
    h.events(20, "other");
    clock.advance(Duration::from_millis(1));
    h.events(3, "other");
    assert_eq!(
        rows_on_disk(dir.path(), "a"),
        2,
        "not flushed at the interval"
    );
    // The next window starts with the next write (the barrier makes sure it has arrived).
    h.submit(event("a", 3));
    h.events(30, "other");
    clock.advance(Duration::from_millis(49));
    h.events(4, "other");
    assert_eq!(rows_on_disk(dir.path(), "a"), 2);
    clock.advance(Duration::from_millis(1));
    h.events(5, "other");
    assert_eq!(rows_on_disk(dir.path(), "a"), 3);
}

#[test]
fn batches_flush_at_the_size_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock(Mutex::new(Instant::now())));
    let mut c = StorageConfig::new(dir.path());
    c.flush_interval = Duration::from_millis(50);
    c.batch_size = 3;
    c.clock = clock.clone();
    let (mut h, _) = Harness::open(c);
    h.submit(event("a", 1));
    h.submit(event("b", 1));
    h.events(1, "other");
    assert_eq!(
        rows_on_disk(dir.path(), "a") + rows_on_disk(dir.path(), "b"),
        0
    );
    h.submit(event("a", 2));
    h.events(2, "other");
    assert_eq!(rows_on_disk(dir.path(), "a"), 2);
    assert_eq!(rows_on_disk(dir.path(), "b"), 1);
    let s = h.storage.stats();
    assert_eq!(s.rows, 3);
    assert_eq!(s.commits, 2, "one transaction per database");
}

#[test]
fn lru_eviction_closes_handles_and_reopening_works() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.writer_handles = 2;
    c.reader_handles = 2;
    c.batch_size = 1;
    let (mut h, _) = Harness::open(c);
    let sessions: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
    for round in 1..=3u64 {
        for s in &sessions {
            h.submit(event(s, round));
        }
        for (i, s) in sessions.iter().enumerate() {
            let evs = h.events(round * 100 + i as u64, s);
            assert_eq!(evs.len() as u64, round, "{s}");
        }
        let st = h.storage.stats();
        assert!(st.writer_handles <= 2 && st.reader_handles <= 2, "{st:?}");
    }
    let st = h.storage.stats();
    assert!(st.writer_evictions >= 10, "{st:?}");
    assert!(st.reader_evictions >= 10, "{st:?}");
    assert!(h.failures().is_empty());
    // Evicted handles are really closed: count this process's open descriptors of the files.
    assert!(open_session_files(dir.path()) <= 4);
    h.storage.shutdown_blocking().unwrap();
    assert_eq!(open_session_files(dir.path()), 0);
}

/// Open file descriptors of this process on `*/session.db` files under `dir`.
fn open_session_files(dir: &Path) -> usize {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc/self/fd")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|p| p.starts_with(&dir) && p.ends_with("session.db"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_failing_database_does_not_lose_the_others_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, _) = Harness::open(cfg(dir.path()));
    // A corrupted file.
    let bad = session_path(dir.path(), "bad").unwrap();
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    std::fs::write(&bad, vec![0x42; 4096]).unwrap();
    // A file from the future.
    let future = session_path(dir.path(), "future").unwrap();
    std::fs::create_dir_all(future.parent().unwrap()).unwrap();
    {
        let c = rusqlite::Connection::open(&future).unwrap();
        c.execute_batch("PRAGMA user_version = 7;").unwrap();
    }
    let future_bytes = std::fs::read(&future).unwrap();
    for seq in 1..=3 {
        h.submit(event("good", seq));
        h.submit(event("bad", seq));
        h.submit(event("future", seq));
    }
    // A duplicate seq is refused alone; the rest of its transaction commits.
    h.submit(event("good", 2));
    h.submit(event("good", 4));
    h.flush(1);
    let mut failures: Vec<(String, usize, bool)> = h
        .failures()
        .into_iter()
        .map(|f| match f {
            StorageCompletion::WriteFailed {
                database: DatabaseId::Session { session_id },
                commands,
                error,
            } => (
                session_id,
                commands,
                matches!(error, StorageError::NewerSchema { .. }),
            ),
            other => panic!("{other:?}"),
        })
        .collect();
    failures.sort();
    assert_eq!(
        failures,
        vec![
            ("bad".to_string(), 3, false),
            ("future".to_string(), 3, true),
            ("good".to_string(), 1, false)
        ]
    );
    assert_eq!(
        h.events(2, "good")
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(std::fs::read(&future).unwrap(), future_bytes);
    assert!(matches!(
        h.query(
            3,
            StorageQuery::EventsAfter {
                session_id: "bad".into(),
                after_seq: 0,
                limit: 10
            }
        ),
        Err(StorageError::Sqlite { .. })
    ));
    h.storage.shutdown_blocking().unwrap();
    assert!(
        !dir.path().join(CLEAN_MARKER).exists(),
        "a run that lost writes must not look clean"
    );
}

#[test]
fn recovery_deactivates_resumes_and_applies_the_epoch_rule() {
    let dir = tempfile::tempdir().unwrap();
    let write = |h: &mut Harness, from: u64| {
        let mut run = session("t", "run", SessionStatus::Running, "E-run");
        run.last_seq = 99; // stale counter: recovery trusts the log
        h.submit(StorageCommand::UpsertSession { session: run });
        h.submit(StorageCommand::UpsertSession {
            session: session("t", "idle", SessionStatus::Inactive, "E-idle"),
        });
        for seq in from..from + 4 {
            h.submit(event("run", seq));
        }
    };
    let (mut h, report) = Harness::open(cfg(dir.path()));
    assert!(!report.clean_shutdown);
    write(&mut h, 1);
    drop(h); // a clean shutdown
    let (h, report) = Harness::open(cfg(dir.path()));
    assert!(report.clean_shutdown);
    assert_eq!(report.sessions, 2);
    assert_eq!(report.sessions_deactivated, 1);
    assert_eq!(report.sessions_new_epoch, 0);
    assert_eq!(report.last_seq_corrected, 1);
    let by_id: BTreeMap<_, _> = report
        .resume
        .iter()
        .map(|r| {
            (
                r.session_id.as_str(),
                (r.last_seq, r.epoch.as_str(), r.new_epoch),
            )
        })
        .collect();
    assert_eq!(by_id["run"], (4, "E-run", false));
    assert_eq!(by_id["idle"], (0, "E-idle", false));
    drop(h);

    // Simulate an unclean stop: the marker is missing.
    std::fs::remove_file(dir.path().join(CLEAN_MARKER)).unwrap();
    let mut c = cfg(dir.path());
    c.unclean_epoch_policy = UncleanEpochPolicy::ActiveSessions;
    let (mut h, report) = Harness::open(c);
    assert!(!report.clean_shutdown);
    assert_eq!(report.sessions_deactivated, 0);
    assert_eq!(report.sessions_new_epoch, 0, "nothing was active");
    write(&mut h, 5);
    h.flush(1);
    h.storage.shutdown_blocking().unwrap();
    std::fs::remove_file(dir.path().join(CLEAN_MARKER)).unwrap();
    let (mut h, report) = Harness::open(cfg(dir.path())); // default policy: every session
    assert!(!report.clean_shutdown);
    assert_eq!(report.sessions_deactivated, 1);
    assert_eq!(report.sessions_new_epoch, 2);
    let run = report
        .resume
        .iter()
        .find(|r| r.session_id == "run")
        .unwrap();
    assert!(run.new_epoch && run.epoch != "E-run" && run.last_seq == 8);
    match h.query(
        2,
        StorageQuery::LoadSession {
            tenant_id: "t".into(),
            session_id: "run".into(),
        },
    ) {
        Ok(QueryResult::Session(Some(s))) => {
            assert_eq!(s.status, SessionStatus::Inactive);
            assert_eq!(s.epoch, run.epoch);
            assert_eq!(s.last_seq, 8);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn wakes_are_coalesced_and_every_completion_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, _) = Harness::open(cfg(dir.path()));
    for t in 0..50 {
        h.submit(StorageCommand::Flush { token: t });
    }
    h.wait_for(|c| matches!(c, StorageCompletion::Flushed { token: 49 }));
    h.storage.drain_completions(&mut h.pending);
    assert_eq!(h.pending.len(), 49);
    assert!(*h.wake.count.lock().unwrap() <= 50);
}

// ---- property test: any command sequence leaves exactly the rows it describes ----

#[derive(Debug, Clone)]
enum Op {
    Upsert {
        tenant: usize,
        sess: usize,
        archived: bool,
        name: u8,
    },
    Delete {
        tenant: usize,
        sess: usize,
    },
    Append {
        sess: usize,
    },
    Turn {
        sess: usize,
        turn: usize,
        done: bool,
    },
    Flush,
    Query {
        sess: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..2usize, 0..4usize, any::<bool>(), any::<u8>()).prop_map(
            |(tenant, sess, archived, name)| Op::Upsert {
                tenant,
                sess,
                archived,
                name
            }
        ),
        (0..2usize, 0..4usize).prop_map(|(tenant, sess)| Op::Delete { tenant, sess }),
        (0..4usize).prop_map(|sess| Op::Append { sess }),
        (0..4usize).prop_map(|sess| Op::Append { sess }),
        (0..4usize).prop_map(|sess| Op::Append { sess }),
        (0..4usize, 0..3usize, any::<bool>()).prop_map(|(sess, turn, done)| Op::Turn {
            sess,
            turn,
            done
        }),
        Just(Op::Flush),
        (0..4usize).prop_map(|sess| Op::Query { sess }),
    ]
}

#[derive(Default)]
struct Model {
    /// (tenant, session) -> record
    sessions: BTreeMap<(usize, usize), SessionRecord>,
    events: BTreeMap<usize, Vec<StoredEvent>>,
    turns: BTreeMap<usize, Vec<TurnRecord>>,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn any_command_sequence_leaves_exactly_its_rows(ops in prop::collection::vec(op(), 1..80), batch in 1usize..12) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.batch_size = batch;
        c.writer_handles = 2;
        c.reader_handles = 2;
        let (mut h, _) = Harness::open(c);
        let mut m = Model::default();
        let sid = |s: usize| format!("s{s}");
        let tid = |t: usize| format!("t{t}");
        for (i, op) in ops.iter().enumerate() {
            let token = i as u64;
            match op.clone() {
                Op::Upsert { tenant, sess, archived, name } => {
                    // A session id belongs to one tenant: the first that upserts it.
                    let owner = m.sessions.keys().find(|k| k.1 == sess).map(|k| k.0);
                    let tenant = owner.unwrap_or(tenant);
                    let mut r = session(&tid(tenant), &sid(sess), SessionStatus::Ready, "e");
                    r.archived = archived;
                    r.name = format!("n{name}");
                    r.created_at_ms = sess as i64;
                    h.submit(StorageCommand::UpsertSession { session: r.clone() });
                    m.sessions.insert((tenant, sess), r);
                }
                Op::Delete { tenant, sess } => {
                    h.submit(StorageCommand::DeleteSession { tenant_id: tid(tenant), session_id: sid(sess) });
                    if m.sessions.remove(&(tenant, sess)).is_some() {
                        m.events.remove(&sess);
                        m.turns.remove(&sess);
                    }
                }
                Op::Append { sess } => {
                    let log = m.events.entry(sess).or_default();
                    let cmd = event(&sid(sess), log.len() as u64 + 1);
                    if let StorageCommand::AppendEvent { event, .. } = &cmd { log.push(event.clone()); }
                    h.submit(cmd);
                }
                Op::Turn { sess, turn: t, done } => {
                    let rec = turn(&format!("turn{t}"), done.then_some("fin"));
                    let turns = m.turns.entry(sess).or_default();
                    match turns.iter_mut().find(|x| x.turn_id == rec.turn_id) {
                        Some(x) => *x = rec.clone(),
                        None => turns.push(rec.clone()),
                    }
                    h.submit(StorageCommand::UpsertTurn { session_id: sid(sess), turn: rec });
                }
                Op::Flush => h.flush(token),
                Op::Query { sess } => {
                    let want = m.events.get(&sess).cloned().unwrap_or_default();
                    prop_assert_eq!(h.events(token, &sid(sess)), want);
                }
            }
        }
        let base = ops.len() as u64;
        for sess in 0..4 {
            prop_assert_eq!(h.events(base + sess as u64, &sid(sess)), m.events.get(&sess).cloned().unwrap_or_default());
            let want_turns = m.turns.get(&sess).cloned().unwrap_or_default();
            match h.query(base + 10 + sess as u64, StorageQuery::History { session_id: sid(sess), before_turn: None, limit: 100 }) {
                Ok(QueryResult::History { turns, .. }) => prop_assert_eq!(turns, want_turns),
                other => prop_assert!(false, "{:?}", other),
            }
        }
        for tenant in 0..2 {
            let want: Vec<SessionRecord> = m.sessions.iter().filter(|(k, _)| k.0 == tenant).map(|(_, v)| v.clone()).collect();
            prop_assert_eq!(
                h.query(base + 20 + tenant as u64, StorageQuery::ListSessions { tenant_id: tid(tenant), include_archived: true }),
                Ok(QueryResult::Sessions(want))
            );
        }
        prop_assert!(h.failures().is_empty());
    }
}

#[test]
fn a_query_of_a_session_commits_the_registry_rows_pending_with_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock(Mutex::new(Instant::now())));
    let mut c = StorageConfig::new(dir.path());
    c.batch_size = 1000;
    c.clock = clock.clone();
    let (mut h, _) = Harness::open(c);
    h.submit(StorageCommand::UpsertSession {
        session: session("t", "a", SessionStatus::Inactive, "e"),
    });
    h.submit(event("a", 1));
    // The clock never moves: only the query can have committed anything.
    assert_eq!(h.events(1, "a").len(), 1);
    let registry = crate::paths::registry_path(dir.path(), "t").unwrap();
    let c =
        rusqlite::Connection::open_with_flags(registry, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let rows: i64 = c
        .query_row("SELECT COUNT(*) FROM sessions WHERE id = 'a'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        rows, 1,
        "the log is committed, so is the row that names its session"
    );
}

// ------------------------------------------------------------ issue 10: durable registry writes

fn commit_now(tenant: &str, token: u64) -> StorageCommand {
    StorageCommand::CommitNow {
        token,
        database: DatabaseId::Registry {
            tenant_id: tenant.into(),
        },
    }
}

fn committed(h: &mut Harness, token: u64) -> Result<(), StorageError> {
    match h.wait_for(|c| matches!(c, StorageCompletion::Committed { token: t, .. } if *t == token))
    {
        StorageCompletion::Committed { result, .. } => result,
        _ => unreachable!(),
    }
}

fn registry_rows(dir: &Path, tenant: &str) -> i64 {
    let registry = crate::paths::registry_path(dir, tenant).unwrap();
    let c =
        rusqlite::Connection::open_with_flags(registry, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    c.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn commit_now_commits_at_once_and_groups_what_queued_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock(Mutex::new(Instant::now())));
    let mut c = StorageConfig::new(dir.path());
    c.batch_size = 1000;
    c.clock = clock.clone();
    let (mut h, _) = Harness::open(c);
    h.submit(StorageCommand::UpsertSession {
        session: session("t", "s0", SessionStatus::Inactive, "e"),
    });
    h.submit(commit_now("t", 1000));
    // The clock never moves: only the CommitNow can have committed the row.
    assert_eq!(committed(&mut h, 1000), Ok(()));
    assert_eq!(registry_rows(dir.path(), "t"), 1);
    let commits_before = h.storage.stats().commits;

    // Hold the registry's write lock: the writer's next commit waits; everything submitted
    // meanwhile must go into at most one more commit after it.
    let registry = crate::paths::registry_path(dir.path(), "t").unwrap();
    let blocker = rusqlite::Connection::open(&registry).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    for i in 1..=50u64 {
        h.submit(StorageCommand::UpsertSession {
            session: session("t", &format!("s{i}"), SessionStatus::Inactive, "e"),
        });
        h.submit(commit_now("t", i));
    }
    blocker.execute_batch("COMMIT").unwrap();
    for i in 1..=50u64 {
        assert_eq!(committed(&mut h, i), Ok(()));
    }
    assert_eq!(registry_rows(dir.path(), "t"), 51);
    let commits = h.storage.stats().commits - commits_before;
    assert!(
        (1..=2).contains(&commits),
        "50 creates queued behind one commit took {commits} commits"
    );
}

#[test]
fn commit_now_reports_a_write_that_could_not_be_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, _) = Harness::open(cfg(dir.path()));
    let bad = crate::paths::registry_path(dir.path(), "bad").unwrap();
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    std::fs::write(&bad, vec![0x42; 4096]).unwrap();
    h.submit(StorageCommand::UpsertSession {
        session: session("bad", "s", SessionStatus::Inactive, "e"),
    });
    h.submit(commit_now("bad", 1));
    assert!(committed(&mut h, 1).is_err());
    // Another registry is not concerned.
    h.submit(StorageCommand::UpsertSession {
        session: session("good", "s", SessionStatus::Inactive, "e"),
    });
    h.submit(commit_now("good", 2));
    assert_eq!(committed(&mut h, 2), Ok(()));
    // A failure with no marker after it in its group is owed to the next marker.
    h.submit(StorageCommand::UpsertSession {
        session: session("bad", "s2", SessionStatus::Inactive, "e"),
    });
    h.flush(3);
    h.submit(commit_now("bad", 4));
    assert!(committed(&mut h, 4).is_err());
    std::fs::remove_file(&bad).unwrap();
    h.submit(StorageCommand::UpsertSession {
        session: session("bad", "s3", SessionStatus::Inactive, "e"),
    });
    h.submit(commit_now("bad", 5));
    assert_eq!(
        committed(&mut h, 5),
        Ok(()),
        "a later write that works is Ok"
    );
}

#[test]
fn every_flush_commits_registries_before_session_logs() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, _) = Harness::open(cfg(dir.path()));
    // Issue order: logs first, then the rows that name their sessions.
    h.submit(event("a", 1));
    h.submit(event("b", 1));
    h.submit(StorageCommand::UpsertSession {
        session: session("t1", "a", SessionStatus::Running, "e"),
    });
    h.submit(StorageCommand::UpsertSession {
        session: session("t2", "b", SessionStatus::Running, "e"),
    });
    h.flush(1);
    // A query of a session log commits the registries too, first.
    h.submit(event("a", 2));
    h.submit(StorageCommand::UpsertSession {
        session: session("t1", "c", SessionStatus::Inactive, "e"),
    });
    h.events(2, "a");
    let order = h.storage.stats_commit_order();
    let registry = |t: &str| DatabaseId::Registry {
        tenant_id: t.into(),
    };
    let log = |s: &str| DatabaseId::Session {
        session_id: s.into(),
    };
    assert_eq!(
        order,
        vec![
            registry("t1"),
            registry("t2"),
            log("a"),
            log("b"),
            registry("t1"),
            log("a")
        ]
    );
}

/// Writes a session whose last turn started and never ended, then stops uncleanly.
fn write_open_turn(dir: &Path) -> String {
    let (mut h, _) = Harness::open(cfg(dir));
    h.submit(StorageCommand::UpsertSession {
        session: session("t", "s", SessionStatus::Running, "E0"),
    });
    let started = r#"{"type":"turn_started","sessionId":"s","seq":1,"ts":5,"turnId":"t1","text":"hello","userId":"u1"}"#;
    h.submit(StorageCommand::AppendEvent {
        session_id: "s".into(),
        event: StoredEvent {
            seq: 1,
            event_type: "turn_started".into(),
            turn_id: Some("t1".into()),
            payload: Bytes::from(started),
            ts_ms: 5,
        },
    });
    h.submit(event("s", 2));
    h.submit(StorageCommand::UpsertTurn {
        session_id: "s".into(),
        turn: turn("t1", None),
    });
    h.flush(1);
    drop(h);
    std::fs::remove_file(dir.join(CLEAN_MARKER)).unwrap();
    "s".into()
}

#[test]
fn recovery_closes_a_turn_a_crash_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let s = write_open_turn(dir.path());
    let (mut h, report) = Harness::open(cfg(dir.path()));
    assert_eq!(report.turns_interrupted, 1);
    let resume = &report.resume[0];
    assert!(resume.new_epoch && resume.epoch != "E0");
    assert_eq!(resume.last_seq, 3);
    assert_eq!(report.records[0].last_seq, 3);
    let events = h.events(1, &s);
    assert_eq!(events.len(), 3);
    let last = &events[2];
    assert_eq!((last.seq, last.event_type.as_str()), (3, "turn_error"));
    assert_eq!(last.turn_id.as_deref(), Some("t1"));
    // Byte for byte what the core would have published.
    let expected = diminuendo_core::session::turn_error_payload(
        "s",
        3,
        last.ts_ms,
        "t1",
        "INTERRUPTED",
        crate::recovery::INTERRUPTED_MESSAGE,
    );
    assert_eq!(last.payload, expected);
    let v: serde_json::Value = serde_json::from_slice(&last.payload).unwrap();
    assert_eq!(v["code"], "INTERRUPTED");
    match h.query(
        2,
        StorageQuery::History {
            session_id: s.clone(),
            before_turn: None,
            limit: 10,
        },
    ) {
        Ok(QueryResult::History { turns, .. }) => {
            assert_eq!(turns.len(), 1);
            assert_eq!(turns[0].stop_reason.as_deref(), Some("error"));
            assert!(turns[0].completed_at_ms.is_some());
        }
        other => panic!("{other:?}"),
    }
    drop(h);
    // Closed once: neither a clean restart nor another unclean one appends again.
    let (h, report) = Harness::open(cfg(dir.path()));
    assert_eq!(report.turns_interrupted, 0);
    drop(h);
    std::fs::remove_file(dir.path().join(CLEAN_MARKER)).unwrap();
    let (mut h, report) = Harness::open(cfg(dir.path()));
    assert_eq!(report.turns_interrupted, 0);
    assert_eq!(h.events(1, &s).len(), 3);
}

#[test]
fn recovery_after_a_clean_stop_leaves_an_open_turn_alone() {
    let dir = tempfile::tempdir().unwrap();
    let s = write_open_turn(dir.path());
    std::fs::write(dir.path().join(CLEAN_MARKER), b"clean\n").unwrap();
    let (mut h, report) = Harness::open(cfg(dir.path()));
    assert_eq!(report.turns_interrupted, 0);
    assert_eq!(h.events(1, &s).len(), 2);
}

#[test]
fn recovery_removes_session_directories_no_registry_names() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, _) = Harness::open(cfg(dir.path()));
    h.submit(StorageCommand::UpsertSession {
        session: session("t", "kept", SessionStatus::Inactive, "e"),
    });
    h.submit(event("kept", 1));
    h.submit(event("ghost", 1));
    h.flush(1);
    drop(h);
    std::fs::remove_file(dir.path().join(CLEAN_MARKER)).unwrap();
    let sessions = dir.path().join("sessions");
    // Not a session id: not ours, left alone.
    std::fs::create_dir_all(sessions.join("not an id")).unwrap();
    let (h, report) = Harness::open(cfg(dir.path()));
    assert_eq!(report.orphan_session_dirs, 2);
    assert_eq!(report.orphan_session_dirs_removed, 1);
    assert!(!sessions.join("ghost").exists());
    assert!(sessions.join("kept").exists());
    assert!(sessions.join("not an id").exists());
    drop(h);

    // A registry that cannot be read may hold the missing rows: nothing is removed then.
    let (mut h, _) = Harness::open(cfg(dir.path()));
    h.submit(event("ghost2", 1));
    h.flush(1);
    drop(h);
    let bad = crate::paths::registry_path(dir.path(), "broken").unwrap();
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    std::fs::write(&bad, vec![0x42; 4096]).unwrap();
    let (_h, report) = Harness::open(cfg(dir.path()));
    assert_eq!(report.orphan_session_dirs, 2);
    assert_eq!(report.orphan_session_dirs_removed, 0);
    assert!(sessions.join("ghost2").exists());
}

#[test]
fn the_acp_session_id_is_stored_and_kept_by_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, _) = Harness::open(cfg(dir.path()));
    let mut running = session("t", "s1", SessionStatus::Running, "E0");
    running.acp_session_id = Some("acp-7".into());
    h.submit(StorageCommand::UpsertSession { session: running });
    h.submit(StorageCommand::UpsertSession {
        session: session("t", "s2", SessionStatus::Inactive, "E0"),
    });
    h.flush(1);
    match h.query(
        2,
        StorageQuery::LoadSession {
            tenant_id: "t".into(),
            session_id: "s1".into(),
        },
    ) {
        Ok(QueryResult::Session(Some(row))) => {
            assert_eq!(row.acp_session_id.as_deref(), Some("acp-7"))
        }
        other => panic!("{other:?}"),
    }
    drop(h);
    // After an unclean stop the session is deactivated, its ACP session id kept.
    let _ = std::fs::remove_file(dir.path().join(CLEAN_MARKER));
    let (h, report) = Harness::open(cfg(dir.path()));
    assert_eq!(report.sessions_deactivated, 1);
    let ids: BTreeMap<&str, Option<&str>> = report
        .records
        .iter()
        .map(|r| (r.id.as_str(), r.acp_session_id.as_deref()))
        .collect();
    assert_eq!(ids, BTreeMap::from([("s1", Some("acp-7")), ("s2", None)]));
    assert!(report
        .records
        .iter()
        .all(|r| r.status == SessionStatus::Inactive));
    drop(h);
}

#[test]
fn a_version_1_registry_gains_the_acp_session_id_column_and_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = crate::paths::registry_path(dir.path(), "t").unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(crate::schema::REGISTRY_MIGRATIONS[0])
            .unwrap();
        c.execute(
            "INSERT INTO sessions (id, tenant_id, name, agent_type, status, archived, created_by,
                created_at, updated_at, last_seq, epoch)
             VALUES ('old', 't', 'Old', 'echo', 'inactive', 0, 'u', 1, 2, 0, 'E0')",
            [],
        )
        .unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
    }
    std::fs::write(dir.path().join(CLEAN_MARKER), b"").unwrap();
    let (mut h, report) = Harness::open(cfg(dir.path()));
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.records.len(), 1);
    assert_eq!(report.records[0].name, "Old");
    assert_eq!(report.records[0].acp_session_id, None);
    let mut row = report.records[0].clone();
    row.acp_session_id = Some("acp-1".into());
    h.submit(StorageCommand::UpsertSession { session: row });
    h.flush(1);
    drop(h);
    let (h, report) = Harness::open(cfg(dir.path()));
    assert_eq!(report.records[0].acp_session_id.as_deref(), Some("acp-1"));
    drop(h);
    let c = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, crate::schema::REGISTRY_MIGRATIONS.len() as i64);
}

#[test]
fn a_version_1_session_log_gains_the_turn_content_column_and_keeps_its_turns() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, _) = Harness::open(cfg(dir.path()));
    h.submit(StorageCommand::UpsertSession {
        session: session("t", "s", SessionStatus::Inactive, "E0"),
    });
    h.submit(event("s", 1));
    h.flush(1);
    drop(h);
    // Back to a version 1 file holding a turn written before the column existed.
    let path = crate::paths::session_path(dir.path(), "s").unwrap();
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "DROP TABLE turns;
             DROP TABLE events;",
        )
        .unwrap();
        c.execute_batch(crate::schema::SESSION_MIGRATIONS[0])
            .unwrap();
        c.execute(
            "INSERT INTO turns (turn_id, user_id, user_text, final_text, final_text_truncated,
                started_at, completed_at)
             VALUES ('old', 'u', 'hello', 'hi', 0, 1, 2)",
            [],
        )
        .unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
    }
    let (mut h, report) = Harness::open(cfg(dir.path()));
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let blocks = r#"[{"type":"image","data":"AQID","mimeType":"image/png"}]"#;
    let mut rich = turn("new", Some("seen"));
    rich.content_json = Some(blocks.into());
    h.submit(StorageCommand::UpsertTurn {
        session_id: "s".into(),
        turn: rich.clone(),
    });
    h.flush(2);
    match h.query(
        3,
        StorageQuery::History {
            session_id: "s".into(),
            before_turn: None,
            limit: 10,
        },
    ) {
        Ok(QueryResult::History { turns, .. }) => {
            assert_eq!(turns.len(), 2, "{turns:?}");
            assert_eq!(turns[0].turn_id, "old");
            assert_eq!(turns[0].user_text, "hello");
            assert_eq!(turns[0].content_json, None);
            assert_eq!(turns[1], rich);
        }
        other => panic!("{other:?}"),
    }
    drop(h);
    let c = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, crate::schema::SESSION_MIGRATIONS.len() as i64);
}
