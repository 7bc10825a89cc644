//! Test helper for `tests/crash.rs`: streams one session's events through the writer and prints
//! progress lines, so the test can SIGKILL it at chosen moments.
//!
//! Usage: `diminuendo-storage-crash-child DATA_DIR SESSION_ID EVENTS`
//!
//! Prints `open clean=<bool> epoch=<e> last_seq=<n>` (from recovery), then `published <seq>`
//! after each event is submitted, `durable <seq>` after each acknowledged flush (every 25 events),
//! and `clean` after a clean shutdown.

use bytes::Bytes;
use diminuendo_storage::*;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};

#[derive(Default)]
struct CondWake {
    n: Mutex<u64>,
    cv: Condvar,
}

impl Wake for CondWake {
    fn wake(&self) {
        if let Ok(mut n) = self.n.lock() {
            *n += 1;
        }
        self.cv.notify_all();
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        return Err("usage: diminuendo-storage-crash-child DATA_DIR SESSION_ID EVENTS".into());
    }
    let (data_dir, sid, events): (&str, &str, u64) = (&args[1], &args[2], args[3].parse()?);
    let wake = Arc::new(CondWake::default());
    let (mut storage, report) = Storage::open(StorageConfig::new(data_dir), wake.clone())?;
    let resume = report.resume.iter().find(|r| r.session_id == sid);
    let (epoch, last) = match resume {
        Some(r) => (r.epoch.clone(), r.last_seq),
        None => ("E0".to_string(), 0),
    };
    let record = |status, last_seq| SessionRecord {
        id: sid.to_string(),
        tenant_id: "crash".into(),
        name: "crash".into(),
        agent_type: "echo".into(),
        status,
        archived: false,
        created_by: "dev-user-001".into(),
        created_at_ms: 1,
        updated_at_ms: 1,
        last_seq,
        epoch: epoch.clone(),
        acp_session_id: None,
    };
    storage.submit(StorageCommand::UpsertSession {
        session: record(SessionStatus::Running, last),
    })?;
    let mut done = Vec::new();
    // The registry row is durable before anything is published (as the gateway's create does
    // before it streams), so every run resumes the same session.
    let mut flush = |token: u64| -> Result<(), Box<dyn std::error::Error>> {
        storage.submit(StorageCommand::Flush { token })?;
        loop {
            let seen = *wake.n.lock().map_err(|_| "poisoned")?;
            storage.drain_completions(&mut done);
            for c in done.drain(..) {
                match c {
                    StorageCompletion::Flushed { token: t } if t == token => return Ok(()),
                    StorageCompletion::WriteFailed { error, .. } => return Err(error.into()),
                    _ => {}
                }
            }
            let g = wake.n.lock().map_err(|_| "poisoned")?;
            let _g = wake
                .cv
                .wait_while(g, |n| *n == seen)
                .map_err(|_| "poisoned")?;
        }
    };
    flush(0)?;
    let out = std::io::stdout();
    let mut out = out.lock();
    writeln!(
        out,
        "open clean={} epoch={epoch} last_seq={last}",
        report.clean_shutdown
    )?;
    for seq in last + 1..=last + events {
        let payload = format!(
            r#"{{"type":"text_delta","sessionId":"{sid}","seq":{seq},"ts":{seq},"turnId":"t","text":"{}"}}"#,
            "x".repeat(100)
        );
        storage.submit(StorageCommand::AppendEvent {
            session_id: sid.to_string(),
            event: StoredEvent {
                seq,
                event_type: "text_delta".into(),
                turn_id: Some("t".into()),
                payload: Bytes::from(payload),
                ts_ms: seq as i64,
            },
        })?;
        writeln!(out, "published {seq}")?;
        if seq.is_multiple_of(25) {
            flush(seq)?;
            writeln!(out, "durable {seq}")?;
        }
    }
    storage.submit(StorageCommand::UpsertSession {
        session: record(SessionStatus::Inactive, last + events),
    })?;
    storage.shutdown_blocking()?;
    writeln!(out, "clean")?;
    Ok(())
}
