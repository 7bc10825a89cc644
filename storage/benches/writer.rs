//! Writer benchmark (prints figures; not a timed test):
//! `cargo bench -p diminuendo-storage --bench writer`
//!
//! Streams 200-byte events into one session and measures rows per second (from the first
//! submit to the acknowledgement of the final flush) and commit latency (time inside one
//! transaction: BEGIN, the inserts, COMMIT), at fixed batch sizes 1, 100 and 1000 (`max_batch`
//! pinned to the batch size), then with the default greedy batching and with `synchronous=FULL`.

use bytes::Bytes;
use diminuendo_storage::*;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct CondWake {
    n: Mutex<u64>,
    cv: Condvar,
}

impl Wake for CondWake {
    fn wake(&self) {
        *self.n.lock().unwrap() += 1;
        self.cv.notify_all();
    }
}

fn wait_flushed(storage: &Storage, wake: &CondWake, token: u64) {
    let mut done = Vec::new();
    loop {
        let seen = *wake.n.lock().unwrap();
        storage.drain_completions(&mut done);
        if done
            .iter()
            .any(|c| matches!(c, StorageCompletion::Flushed { token: t } if *t == token))
        {
            return;
        }
        assert!(
            !done
                .iter()
                .any(|c| matches!(c, StorageCompletion::WriteFailed { .. })),
            "{done:?}"
        );
        let g = wake.n.lock().unwrap();
        let _g = wake.cv.wait_while(g, |n| *n == seen).unwrap();
    }
}

fn run(label: &str, batch: usize, max_batch: usize, sync: Synchronous, n: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StorageConfig::new(dir.path());
    cfg.batch_size = batch;
    cfg.max_batch = max_batch;
    cfg.flush_interval = Duration::from_secs(10);
    cfg.synchronous = sync;
    // The submitting loop is faster than any disk; it would meet the queue's bound (which the
    // gateway meets by slowing its agents down). The writer's own speed is measured here.
    cfg.queue_limit = u64::MAX;
    let wake = Arc::new(CondWake::default());
    let (mut storage, _) = Storage::open(cfg, wake.clone()).unwrap();
    // Warm up: create the database and the handle.
    storage
        .submit(StorageCommand::UpsertTurn {
            session_id: "bench".into(),
            turn: TurnRecord {
                turn_id: "t".into(),
                user_id: None,
                user_text: "warm".into(),
                final_text: None,
                final_text_truncated: false,
                stop_reason: None,
                usage_json: None,
                tool_calls_json: None,
                started_at_ms: 0,
                completed_at_ms: None,
                content_json: None,
            },
        })
        .unwrap();
    storage.submit(StorageCommand::Flush { token: 0 }).unwrap();
    wait_flushed(&storage, &wake, 0);
    let before = storage.stats();

    let prefix = r#"{"type":"text_delta","sessionId":"bench","turnId":"t","seq":"#;
    let start = Instant::now();
    for seq in 1..=n {
        let mut p = format!("{prefix}{seq},\"text\":\"");
        while p.len() < 198 {
            p.push('x');
        }
        p.push_str("\"}");
        storage
            .submit(StorageCommand::AppendEvent {
                session_id: "bench".into(),
                event: StoredEvent {
                    seq,
                    event_type: "text_delta".into(),
                    turn_id: Some("t".into()),
                    payload: Bytes::from(p),
                    ts_ms: seq as i64,
                },
            })
            .unwrap();
    }
    storage.submit(StorageCommand::Flush { token: 1 }).unwrap();
    wait_flushed(&storage, &wake, 1);
    let elapsed = start.elapsed();
    let s = storage.stats();
    let commits = s.commits - before.commits;
    let rows = s.rows - before.rows;
    assert_eq!(rows, n);
    let avg_us = (s.commit_nanos_total - before.commit_nanos_total) as f64 / commits as f64 / 1e3;
    println!(
        "{label:<28} {n:>8} events  {:>10.0} events/s  {commits:>7} commits  avg batch {:>7.1}  commit avg {:>9.1} us  max {:>9.1} us",
        n as f64 / elapsed.as_secs_f64(),
        rows as f64 / commits as f64,
        avg_us,
        s.commit_nanos_max as f64 / 1e3,
    );
    storage.shutdown_blocking().unwrap();
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is ignored too.
    println!("writer benchmark: one session, 200-byte events, WAL");
    run("batch 1 (NORMAL)", 1, 1, Synchronous::Normal, 20_000);
    run("batch 100 (NORMAL)", 100, 100, Synchronous::Normal, 300_000);
    run(
        "batch 1000 (NORMAL)",
        1000,
        1000,
        Synchronous::Normal,
        300_000,
    );
    run(
        "greedy, 100/100k (NORMAL)",
        100,
        100_000,
        Synchronous::Normal,
        300_000,
    );
    run("batch 100 (FULL)", 100, 100, Synchronous::Full, 100_000);
}
