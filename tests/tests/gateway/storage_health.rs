//! Storage health and the storage queue against the real binaries (issue 10, items 4 and 5).
//!
//! A full disk: the data directory is a small tmpfs, mounted in the gateway's own mount
//! namespace (`unshare --mount`, so nothing leaks when the test ends however it ends), filled
//! with `dd` from inside that namespace (`nsenter`). **These tests need root** (CAP_SYS_ADMIN, as
//! in CI): without it they fail, saying so; they never skip.
//!
//! A slow disk: `--storage-commit-delay-ms` makes every commit wait, so a streaming turn fills
//! the storage queue (`--storage-queue-limit`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diminuendo_tests::{assert_gap_free, binaries, events_of, parse, seqs, Client, Gateway};
use serde_json::{json, Value};

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Polls `check` (every 10 ms) until it holds; fails after `within`.
fn wait_until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Asserts this process may mount a tmpfs in a mount namespace of its own.
fn assert_can_mount(point: &Path) {
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .args(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(point)
        .output();
    let ok = output.as_ref().is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "this test needs root (CAP_SYS_ADMIN) to mount a tmpfs in its own mount namespace \
         (`unshare --mount` and `mount -t tmpfs`); it does not skip. Got: {output:?}"
    );
}

/// Starts `binary` with its data directory on a tmpfs of `size` in its own mount namespace;
/// returns the gateway and the mount point.
fn start_on_tmpfs(binary: &str, size: &str) -> (Gateway, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "diminuendo-itest-tmpfs-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let point = dir.join("data");
    std::fs::create_dir_all(&point).expect("create the mount point");
    assert_can_mount(&point);
    let point_str = point.to_str().expect("a UTF-8 path").to_owned();
    let mount = format!("mount -t tmpfs -o size={size} tmpfs \"$1\" && shift && exec \"$@\"");
    let wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        &mount,
        "sh",
        &point_str,
    ];
    let gateway = Gateway::start_wrapped(&wrapper, binary, &["--dev"], dir);
    (gateway, point)
}

/// Runs a shell command inside the gateway's mount namespace.
fn in_namespace(gateway: &Gateway, script: &str, point: &Path) {
    let status = Command::new("nsenter")
        .args([
            "-t",
            &gateway.pid().to_string(),
            "-m",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(point)
        .status()
        .expect("run nsenter");
    assert!(status.success(), "{script}: {status}");
}

fn health(gateway: &Gateway) -> (u16, Value) {
    let response = gateway.get("/health");
    (
        response.status,
        serde_json::from_slice(&response.body).expect("JSON"),
    )
}

#[test]
fn a_full_disk_turns_readyz_503_with_the_reason_until_it_has_room_and_the_session_gets_a_new_epoch()
{
    for binary in binaries() {
        let (gateway, point) = start_on_tmpfs(binary, "4m");
        let mut client = Client::dev(&gateway);
        let session = client.create_session("echo");
        let id = session["id"].as_str().expect("id").to_owned();
        let old_epoch = session["epoch"].as_str().expect("epoch").to_owned();
        client.join(&id);
        client.run_turn(&id, "hello");
        let first = client.turn_events(&id);
        assert_gap_free(&first, 1);
        let stored_up_to = first.len() as u64;
        assert_eq!(gateway.get("/readyz").status, 200);

        // Fill the file system to the last block.
        in_namespace(
            &gateway,
            "dd if=/dev/zero of=\"$1/fill\" bs=65536 2>/dev/null; test -s \"$1/fill\"",
            &point,
        );
        // A turn whose events cannot be stored: clients still see it live... (800 KB: more
        // than SQLite can free on the full disk by removing a WAL file when it closes a handle
        // after a failure, so some of its events do not fit.)
        client.run_turn(&id, "stream 400 2000");
        let lost = client.turn_events(&id);
        assert_gap_free(&lost, stored_up_to + 1);
        // Every write of that turn has been tried (the queue is empty). Whatever SQLite freed
        // meanwhile (a WAL file removed when a failed handle closed) is filled too, and one more
        // write is tried: from now on nothing is pending and nothing fits, so the state holds.
        wait_until(
            Duration::from_secs(15),
            "the storage queue is empty",
            || gateway.metrics()["diminuendo_storage_queue_bytes"] == 0.0,
        );
        in_namespace(
            &gateway,
            "dd if=/dev/zero of=\"$1/fill2\" bs=4096 2>/dev/null; true",
            &point,
        );
        let renamed =
            client.call(json!({"type": "rename_session", "sessionId": id, "name": "full"}));
        assert!(
            renamed["type"] == "session_updated" || renamed["code"] == "INTERNAL",
            "{renamed}"
        );
        // ... and the gateway says it cannot write, and why.
        wait_until(Duration::from_secs(15), "/readyz answers 503", || {
            gateway.get("/readyz").status == 503
        });
        wait_until(
            Duration::from_secs(15),
            "the storage queue is empty",
            || gateway.metrics()["diminuendo_storage_queue_bytes"] == 0.0,
        );
        let (status, body) = health(&gateway);
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["status"], "unavailable", "{body}");
        let reason = body["reason"].as_str().unwrap_or_default().to_owned();
        assert!(
            reason.starts_with("storage: ")
                && (reason.contains("disk full (SQLITE_FULL)")
                    || reason.contains("No space left on device"))
                && reason.contains(" writing "),
            "{binary}: {reason}"
        );
        // New work is refused with INTERNAL while storage cannot write.
        let refused = client.call(json!({"type": "run_turn", "sessionId": id, "text": "more"}));
        assert_eq!(refused["type"], "error", "{refused}");
        assert_eq!(refused["code"], "INTERNAL", "{refused}");
        let refused = client.call(json!({"type": "create_session", "agentType": "echo"}));
        assert_eq!(refused["code"], "INTERNAL", "{refused}");
        let metrics = gateway.metrics();
        assert!(metrics["diminuendo_storage_write_failures_total"] >= 1.0);
        assert!(metrics["diminuendo_storage_refusals_total"] >= 2.0);
        assert_eq!(metrics["diminuendo_storage_writable"], 0.0);

        // Room again. Nothing is left to write, so it is the writer's write probe (every second
        // while unwritable) that finds it, without any traffic.
        in_namespace(&gateway, "rm -f \"$1/fill\" \"$1/fill2\"", &point);
        wait_until(Duration::from_secs(15), "/readyz answers 200 again", || {
            gateway.get("/readyz").status == 200
        });
        let (status, body) = health(&gateway);
        assert_eq!(status, 200, "{body}");
        assert!(body.get("reason").is_none(), "{body}");
        assert_eq!(gateway.metrics()["diminuendo_storage_writable"], 1.0);

        // The session has a new epoch: a resume under the old one reloads.
        let mut reader = Client::dev(&gateway);
        let joined = reader.call(json!({
            "type": "join_session", "sessionId": id, "afterSeq": stored_up_to, "epoch": old_epoch
        }));
        assert_eq!(joined["type"], "session_joined", "{joined}");
        assert_eq!(joined["recovered"], false, "{binary}: {joined}");
        let new_epoch = joined["epoch"].as_str().unwrap_or_default().to_owned();
        assert_ne!(new_epoch, old_epoch, "{joined}");
        let last_seq = joined["lastSeq"].as_u64().expect("lastSeq");
        assert_eq!(last_seq, stored_up_to + lost.len() as u64);

        // And it works again: the next turn is stored.
        client.run_turn(&id, "again");
        let next = client.turn_events(&id);
        assert_gap_free(&next, last_seq + 1);
        let stored = client.all_events(&id, last_seq);
        assert_eq!(
            stored, next,
            "{binary}: the turn after the disk had room is stored"
        );
    }
}

#[test]
fn a_slow_disk_fills_the_storage_queue_new_work_is_rate_limited_and_the_running_turn_completes() {
    for binary in binaries() {
        let gateway = Gateway::start(
            binary,
            &[
                "--dev",
                "--storage-queue-limit",
                "1048576",
                "--storage-commit-delay-ms",
                "300",
            ],
        );
        let mut runner = Client::dev(&gateway);
        let session = runner.create_session("echo");
        let id = session["id"].as_str().expect("id").to_owned();
        let epoch = session["epoch"].as_str().expect("epoch").to_owned();
        let joined = runner.join(&id);
        let before = joined["lastSeq"].as_u64().expect("lastSeq");
        runner.run_turn(&id, "stream 1000 3000");

        // While the turn streams 3 MB into a 1 MiB queue, new work is refused.
        let mut other = Client::dev(&gateway);
        let deadline = Instant::now() + Duration::from_secs(30);
        let refused = loop {
            let reply = other.call(json!({"type": "create_session", "agentType": "echo"}));
            if reply["type"] == "error" {
                break reply;
            }
            assert_eq!(reply["type"], "session_created", "{reply}");
            assert!(
                Instant::now() < deadline,
                "{binary}: the queue never became congested"
            );
        };
        assert_eq!(refused["code"], "RATE_LIMITED", "{refused}");
        assert_eq!(refused["retryAfterMs"], 1000, "{refused}");
        assert!(
            refused["message"]
                .as_str()
                .unwrap_or_default()
                .contains("storage"),
            "{refused}"
        );

        // The running turn completes, every event in order, and every one is stored: the agent
        // was slowed down, nothing was dropped (the epoch is the same, the replay is whole).
        let events = runner.turn_events(&id);
        assert_gap_free(&events, before + 1);
        let text: String = events
            .iter()
            .map(|e| parse(e))
            .filter(|e| e["type"] == "text_delta")
            .map(|e| e["text"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(text.len(), 3_000_000, "{binary}");
        let stored = runner.all_events(&id, before);
        assert_eq!(stored.len(), events.len(), "{binary}");
        assert!(
            stored == events,
            "{binary}: the stored log differs from what was published"
        );
        let mut reader = Client::dev(&gateway);
        let reply = reader.call_text(json!({
            "type": "join_session", "sessionId": id, "afterSeq": seqs(&events)[events.len() - 2], "epoch": epoch
        }));
        let joined = parse(&reply);
        assert_eq!(joined["recovered"], true, "{binary}: {reply}");
        assert_eq!(events_of(&reply).0.len(), 1);

        // Once the writer has caught up, new work is taken again.
        wait_until(
            Duration::from_secs(30),
            "create_session is accepted again",
            || {
                other.call(json!({"type": "create_session", "agentType": "echo"}))["type"]
                    == "session_created"
            },
        );
        assert!(gateway.metrics()["diminuendo_storage_refusals_total"] >= 1.0);
    }
}

#[test]
fn a_write_refused_at_the_queue_limit_gives_the_session_a_new_epoch_never_a_silent_gap() {
    for binary in binaries() {
        // A queue so small that what one poll takes from the agent (up to 64 KiB of output)
        // passes it: agents are paused at 6 KiB while the writer sleeps, then the next poll
        // brings more than the 2 KiB left.
        let gateway = Gateway::start(
            binary,
            &[
                "--dev",
                "--storage-queue-limit",
                "8192",
                "--storage-commit-delay-ms",
                "500",
            ],
        );
        let mut runner = Client::dev(&gateway);
        let session = runner.create_session("echo");
        let id = session["id"].as_str().expect("id").to_owned();
        let epoch = session["epoch"].as_str().expect("epoch").to_owned();
        runner.join(&id);
        runner.run_turn(&id, "stream 200 1000");
        // Clients see every event, in order.
        let events = runner.turn_events(&id);
        assert_gap_free(&events, 1);
        let last_seq = events.len() as u64;
        let failures = gateway.metrics()["diminuendo_storage_write_failures_total"];
        assert!(
            failures >= 1.0,
            "{binary}: no write was refused ({failures})"
        );

        // Some were not stored: the epoch changed, so a resume under the old one reloads...
        let mut reader = Client::dev(&gateway);
        let joined = reader.call(json!({
            "type": "join_session", "sessionId": id, "afterSeq": 1, "epoch": epoch
        }));
        assert_eq!(joined["recovered"], false, "{binary}: {joined}");
        assert_ne!(joined["epoch"], epoch.as_str(), "{joined}");
        assert_eq!(joined["lastSeq"], last_seq);
        let stored = runner.all_events(&id, 0);
        assert!(stored.len() < events.len(), "{binary}: the log has the gap");
        assert!(
            stored.iter().all(|e| events.contains(e)),
            "what is stored is what was published"
        );
        // ... and the gateway goes on: the queue drains, new work is taken again.
        wait_until(Duration::from_secs(30), "a turn is accepted again", || {
            runner.call(json!({"type": "run_turn", "sessionId": id, "text": "after"}))["type"]
                == "turn_accepted"
        });
        let after = runner.turn_events(&id);
        assert_gap_free(&after, last_seq + 1);
    }
}
