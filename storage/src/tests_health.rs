//! The storage queue's bound and the writer's health reports (issue 10, items 4 and 5), with
//! the commit hook as a gate (a writer that cannot go on until the test says so) or a fault.

use crate::tests::{event, Harness};
use crate::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

fn cfg(dir: &std::path::Path) -> StorageConfig {
    let mut c = StorageConfig::new(dir);
    c.flush_interval = Duration::from_secs(3600);
    c
}

/// A gate the writer waits at before every commit; counts the commits that reached it.
#[derive(Default)]
struct Gate {
    state: Mutex<(bool, u64)>,
    cv: Condvar,
}

impl Gate {
    fn hook(self: &Arc<Self>) -> CommitHook {
        let gate = self.clone();
        Arc::new(move |_| {
            let mut state = gate.state.lock().unwrap();
            state.1 += 1;
            gate.cv.notify_all();
            while !state.0 {
                state = gate.cv.wait(state).unwrap();
            }
            Ok(())
        })
    }

    fn set_open(&self, open: bool) {
        self.state.lock().unwrap().0 = open;
        self.cv.notify_all();
    }

    /// Blocks until `n` commits have reached the gate (bounded).
    fn wait_reached(&self, n: u64) {
        let state = self.state.lock().unwrap();
        let (state, timeout) = self
            .cv
            .wait_timeout_while(state, Duration::from_secs(20), |s| s.1 < n)
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "the writer never reached the gate ({state:?})"
        );
    }
}

struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.set_open(true);
    }
}

fn big_event(session: &str, seq: u64) -> StorageCommand {
    let StorageCommand::AppendEvent {
        session_id,
        mut event,
    } = event(session, seq)
    else {
        unreachable!()
    };
    event.payload = bytes::Bytes::from(format!(
        r#"{{"type":"text_delta","seq":{seq},"text":"{}"}}"#,
        "x".repeat(1000)
    ));
    StorageCommand::AppendEvent { session_id, event }
}

#[test]
fn the_queue_is_bounded_in_bytes_and_drains_when_the_writer_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let mut c = cfg(dir.path());
    c.batch_size = 1;
    c.queue_limit = 64 * 1024;
    c.commit_hook = Some(gate.hook());
    let (mut h, _) = Harness::open(c);
    // Declared after the harness, so dropped before it: a failed assertion opens the gate and
    // the storage's drop can join its writer.
    let _open_on_drop = OpenOnDrop(gate.clone());
    assert_eq!(h.storage.queue_limit(), 64 * 1024);

    // The first write is committed at once (batch size 1) and the writer stops at the gate.
    h.submit(big_event("s1", 1));
    gate.wait_reached(1);
    let one = big_event("s1", 1).queued_bytes();
    assert!(one > 1000);
    assert_eq!(h.storage.queued_bytes(), one, "held until it is committed");

    // Fill: nothing leaves the queue while the writer waits, so the limit is met exactly.
    let mut seq = 1;
    let mut expected = one;
    let refused = loop {
        let cmd = big_event("s1", seq + 1);
        let cost = cmd.queued_bytes();
        match h.storage.submit(cmd) {
            Ok(()) => {
                seq += 1;
                expected += cost;
            }
            Err(e) => {
                assert!(expected + cost > 64 * 1024, "refused under the limit");
                break e;
            }
        }
        assert!(seq < 1000, "the queue never filled");
    };
    let queued = h.storage.queued_bytes();
    assert!(queued <= 64 * 1024, "{queued}");
    assert_eq!(queued, expected);
    assert!(seq > 50, "about 64 KiB of 1 KiB events were taken: {seq}");
    assert_eq!(
        refused,
        StorageError::QueueFull {
            queued,
            limit: 64 * 1024
        }
    );
    assert!(refused.to_string().contains("storage queue is full"));
    assert_eq!(h.storage.queued_bytes(), queued, "a refusal queues nothing");
    // A flush is never refused.
    h.submit(StorageCommand::Flush { token: 1 });

    gate.set_open(true);
    h.wait_for(|c| matches!(c, StorageCompletion::Flushed { token: 1 }));
    assert_eq!(h.storage.queued_bytes(), 0, "everything left the queue");
    assert_eq!(h.storage.stats().queued_bytes, 0);
    // Exactly the accepted writes are stored, gap-free; the refused one can be sent again.
    let stored: Vec<u64> = h.events(2, "s1").iter().map(|e| e.seq).collect();
    assert_eq!(stored, (1..=seq).collect::<Vec<_>>());
    h.submit(big_event("s1", seq + 1));
    h.flush(3);
    assert_eq!(h.events(4, "s1").len() as u64, seq + 1);
    assert_eq!(
        h.storage.queued_bytes(),
        0,
        "queries leave the queue once answered"
    );
    assert!(h.failures().is_empty());
}

fn health(c: &StorageCompletion) -> bool {
    matches!(c, StorageCompletion::Health { .. })
}

#[test]
fn a_medium_failure_makes_storage_unwritable_until_a_write_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(true));
    let mut c = cfg(dir.path());
    // No probe during this test: only the next good write brings health back.
    c.health_probe_interval = Duration::from_secs(3600);
    let f = fail.clone();
    c.commit_hook = Some(Arc::new(move |db| {
        if f.load(Ordering::SeqCst) && matches!(db, DatabaseId::Session { .. }) {
            Err(std::io::Error::from_raw_os_error(28)) // ENOSPC
        } else {
            Ok(())
        }
    }));
    let (mut h, _) = Harness::open(c);
    h.submit(event("s1", 1));
    h.submit(event("s1", 2));
    h.flush(1);
    let failed = h.failures();
    assert!(
        matches!(&failed[..], [StorageCompletion::WriteFailed { database: DatabaseId::Session { session_id }, commands: 2, .. }] if session_id == "s1"),
        "{failed:?}"
    );
    let StorageCompletion::Health { writable, reason } = h.wait_for(health) else {
        unreachable!()
    };
    assert!(!writable);
    let reason = reason.unwrap_or_default();
    assert!(reason.starts_with("storage: "), "{reason}");
    assert!(reason.contains("No space left on device"), "{reason}");
    assert!(
        reason.ends_with("writing sessions/s1/session.db"),
        "{reason}"
    );

    // Still failing, for the same reason: no new report. A registry write that succeeds
    // meanwhile does bring it back (the medium took a write).
    h.submit(event("s1", 3));
    h.flush(2);
    assert_eq!(h.failures().len(), 1);
    assert!(!h.pending.iter().any(health), "{:?}", h.pending);
    h.submit(StorageCommand::UpsertSession {
        session: crate::tests::session("t1", "s1", SessionStatus::Inactive, "e1"),
    });
    h.flush(3);
    assert_eq!(
        h.wait_for(health),
        StorageCompletion::Health {
            writable: true,
            reason: None
        }
    );
    // Again unwritable, then the disk is fine and the next event commits.
    h.submit(event("s1", 4));
    h.flush(4);
    assert!(matches!(
        h.wait_for(health),
        StorageCompletion::Health {
            writable: false,
            ..
        }
    ));
    fail.store(false, Ordering::SeqCst);
    h.submit(event("s1", 5));
    h.flush(5);
    assert_eq!(
        h.wait_for(health),
        StorageCompletion::Health {
            writable: true,
            reason: None
        }
    );
    let stored: Vec<u64> = h.events(6, "s1").iter().map(|e| e.seq).collect();
    assert_eq!(stored, [5]);
}

#[test]
fn the_write_probe_brings_health_back_without_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(true));
    let mut c = cfg(dir.path());
    c.health_probe_interval = Duration::from_millis(10);
    let f = fail.clone();
    c.commit_hook = Some(Arc::new(move |_| {
        if f.load(Ordering::SeqCst) {
            Err(std::io::Error::from_raw_os_error(30)) // EROFS
        } else {
            Ok(())
        }
    }));
    // A directory where the probe writes its file: the probe fails until it is removed.
    let probe = dir.path().join(".write-probe");
    std::fs::create_dir_all(&probe).unwrap();
    let (mut h, _) = Harness::open(c);
    h.submit(event("s1", 1));
    h.flush(1);
    let StorageCompletion::Health { writable, reason } = h.wait_for(health) else {
        unreachable!()
    };
    assert!(!writable);
    assert!(reason.unwrap_or_default().contains("Read-only file system"));
    fail.store(false, Ordering::SeqCst);
    std::fs::remove_dir(&probe).unwrap();
    // No write is submitted: the probe alone finds the medium writable again.
    assert_eq!(
        h.wait_for(health),
        StorageCompletion::Health {
            writable: true,
            reason: None
        }
    );
    assert!(!probe.exists(), "the probe removes its file");
}
