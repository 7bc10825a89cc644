//! The low-rate subcommands: one blocking client, one request at a time.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::report::{Report, Summary};
use crate::server::{self, Spawned, Target};
use crate::wire::{self, BlockingWs};

pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// `connect`: new connection, upgrade, `welcome`, `connected`, `authenticated`; one at a time.
pub fn connect(target: &Target, binary: &str, count: usize, warmup: usize) -> io::Result<Report> {
    let mut samples = Vec::with_capacity(count);
    for index in 0..warmup + count {
        let started = Instant::now();
        let ws = BlockingWs::connect_authenticated(target.addr, IO_TIMEOUT)?;
        let elapsed = started.elapsed();
        drop(ws);
        if index >= warmup {
            samples.push(elapsed.as_nanos() as u64);
        }
    }
    let summary = Summary::of(&mut samples);
    let mut report = Report::new("connect", binary, &target.flags_text());
    report.note(&format!(
        "TCP connect + upgrade until `authenticated` (dev mode), sequential; {warmup} warm-ups discarded"
    ));
    report.latency("latency", "connect+authenticate", &summary, true);
    report.figure("count", "measured connections", count, "");
    Ok(report)
}

/// `create`: `create_session` round trips on one connection, one at a time.
pub fn create(target: &Target, binary: &str, count: usize, warmup: usize) -> io::Result<Report> {
    create_named("create", target, binary, count, warmup)
}

/// `create` under another report name (`cluster-create`).
pub fn create_named(
    name: &str,
    target: &Target,
    binary: &str,
    count: usize,
    warmup: usize,
) -> io::Result<Report> {
    let mut ws = BlockingWs::connect_authenticated(target.addr, IO_TIMEOUT)?;
    let messages: Vec<(String, String)> = (0..warmup + count)
        .map(|index| {
            let id = format!("c{index}");
            let message = format!(
                r#"{{"type":"create_session","requestId":"{id}","agentType":"echo","name":"bench"}}"#
            );
            (id, message)
        })
        .collect();
    let mut samples = Vec::with_capacity(count);
    for (index, (id, message)) in messages.iter().enumerate() {
        let started = Instant::now();
        ws.send_text(message.as_bytes())?;
        let range = ws.wait_reply(id)?;
        let elapsed = started.elapsed();
        if !wire::is_type(ws.payload(range), b"session_created") {
            return Err(io::Error::other(
                "create_session was not answered with session_created",
            ));
        }
        if index >= warmup {
            samples.push(elapsed.as_nanos() as u64);
        }
    }
    let summary = Summary::of(&mut samples);
    let mut report = Report::new(name, binary, &target.flags_text());
    report.note(&format!(
        "send create_session until its reply (the tenant broadcast is skipped); {warmup} warm-ups discarded"
    ));
    report.latency("latency", "create_session round trip", &summary, true);
    report.figure("count", "measured round trips", count, "");
    Ok(report)
}

/// Creates a session of the echo agent and runs one tiny turn in it, so that the agent process
/// is up before anything is measured. Returns the session id.
pub fn prepared_session(ws: &mut BlockingWs) -> io::Result<String> {
    let created = ws.request(
        "prep-create",
        r#"{"type":"create_session","requestId":"prep-create","agentType":"echo","name":"bench"}"#,
    )?;
    let session = created["session"]["id"]
        .as_str()
        .ok_or_else(|| io::Error::other("session_created without session.id"))?
        .to_owned();
    ws.request(
        "prep-join",
        &format!(r#"{{"type":"join_session","requestId":"prep-join","sessionId":"{session}"}}"#),
    )?;
    ws.request(
        "prep-turn",
        &format!(
            r#"{{"type":"run_turn","requestId":"prep-turn","sessionId":"{session}","text":"stream 1 1"}}"#
        ),
    )?;
    ws.wait_for(|payload| wire::is_type(payload, b"turn_complete"))?;
    ws.request(
        "prep-leave",
        &format!(r#"{{"type":"leave_session","requestId":"prep-leave","sessionId":"{session}"}}"#),
    )?;
    Ok(session)
}

/// `persist`: a turn of `events` deltas; the time from `run_turn` until `get_events` has
/// returned every one of them (polled in pages of 1000 from the last seq seen).
pub fn persist(target: &Target, binary: &str, events: usize, size: usize) -> io::Result<Report> {
    let mut ws = BlockingWs::connect_authenticated(target.addr, IO_TIMEOUT)?;
    let session = prepared_session(&mut ws)?;
    let first = ws.request(
        "p-first",
        &format!(
            r#"{{"type":"get_events","requestId":"p-first","sessionId":"{session}","afterSeq":0}}"#
        ),
    )?;
    let mut cursor = first["lastSeq"].as_u64().unwrap_or(0);

    let started = Instant::now();
    ws.request(
        "p-turn",
        &format!(
            r#"{{"type":"run_turn","requestId":"p-turn","sessionId":"{session}","text":"stream {events} {size}"}}"#
        ),
    )?;
    let mut deltas = 0usize;
    let mut total = 0usize;
    let mut pages = 0usize;
    let mut gaps = 0usize;
    let mut done = false;
    while !done {
        if started.elapsed() > IO_TIMEOUT * 4 {
            return Err(io::Error::other(format!(
                "persist: {deltas} of {events} deltas after {:?}",
                started.elapsed()
            )));
        }
        let id = format!("p{pages}");
        let page = ws.request(
            &id,
            &format!(
                r#"{{"type":"get_events","requestId":"{id}","sessionId":"{session}","afterSeq":{cursor},"limit":1000}}"#
            ),
        )?;
        pages += 1;
        let list = page["events"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        for event in list {
            let seq = event["seq"].as_u64().unwrap_or(0);
            if seq != cursor + 1 {
                gaps += 1;
            }
            cursor = seq;
            total += 1;
            match event["type"].as_str() {
                Some("text_delta") => deltas += 1,
                Some("turn_complete") | Some("turn_error") => done = true,
                _ => {}
            }
        }
        if list.is_empty() && !done {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let elapsed = started.elapsed();
    if deltas != events || gaps != 0 {
        return Err(io::Error::other(format!(
            "persist: get_events returned {deltas} of {events} deltas, {gaps} seq gaps"
        )));
    }
    let mut report = Report::new("persist", binary, &target.flags_text());
    report.note(&format!(
        "run_turn `stream {events} {size}` (coalescing off: one event per chunk), then get_events \
         pages (limit 1000) from the last seq seen until turn_complete; time from run_turn"
    ));
    report.figure("events", "turn events returned", total, "");
    report.figure("pages", "get_events requests", pages, "");
    report.figure(
        "totalMs",
        "run_turn until all returned",
        elapsed.as_secs_f64() * 1e3,
        "ms",
    );
    report.figure(
        "eventsPerS",
        "events per second",
        (total as f64 / elapsed.as_secs_f64()).round(),
        "events/s",
    );
    Ok(report)
}

/// `idle`: `connections` authenticated connections that then do nothing; the gateway's resident
/// memory after minus before, per connection.
pub fn idle(
    target: &Target,
    binary: &str,
    connections: usize,
    nofile: (u64, u64),
) -> io::Result<Report> {
    let pid = target
        .pid()
        .ok_or_else(|| io::Error::other("idle reads /proc of the gateway: give --binary"))?;
    let _control = BlockingWs::connect_authenticated(target.addr, IO_TIMEOUT)?;
    std::thread::sleep(Duration::from_millis(200));
    let before = server::rss_kib(pid).ok_or_else(|| io::Error::other("no VmRSS"))?;
    let mut held = Vec::with_capacity(connections);
    let started = Instant::now();
    for _ in 0..connections {
        let ws = BlockingWs::connect_authenticated(target.addr, IO_TIMEOUT).map_err(|error| {
            io::Error::other(format!(
                "idle: connection {} failed: {error} (client open-file limit {}/{})",
                held.len() + 1,
                nofile.0,
                nofile.1
            ))
        })?;
        held.push(ws.into_parts().0);
    }
    let opening = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let after = server::rss_kib(pid).ok_or_else(|| io::Error::other("no VmRSS"))?;
    let per_connection = (after.saturating_sub(before) * 1024) as f64 / connections as f64;
    let mut report = Report::new("idle", binary, &target.flags_text());
    report.note("VmRSS of the gateway pid after the connections (and 500 ms) minus before, divided by their number");
    report.figure(
        "connections",
        "idle authenticated connections",
        connections,
        "",
    );
    report.figure("rssBeforeKib", "gateway RSS before", before, "KiB");
    report.figure("rssAfterKib", "gateway RSS after", after, "KiB");
    report.figure(
        "bytesPerConnection",
        "server memory per connection",
        per_connection.round(),
        "bytes",
    );
    report.figure(
        "openMs",
        "time to open them all",
        opening.as_secs_f64() * 1e3,
        "ms",
    );
    report.figure(
        "clientNofileSoft",
        "client RLIMIT_NOFILE soft (raised to hard)",
        nofile.0,
        "",
    );
    report.figure(
        "clientNofileHard",
        "client RLIMIT_NOFILE hard",
        nofile.1,
        "",
    );
    drop(held);
    Ok(report)
}

/// `startup`: from spawning the binary to the first `200` on `/livez`; median of `runs`.
pub fn startup(binary_path: &Path, binary: &str, runs: usize) -> io::Result<Report> {
    let flags = server::base_flags();
    let mut samples = Vec::with_capacity(runs);
    let mut listening = Vec::with_capacity(runs);
    for _ in 0..runs {
        let spawned = Spawned::start(binary_path, &flags)?;
        wait_livez(spawned.addr)?;
        samples.push(spawned.started.elapsed().as_nanos() as u64);
        listening.push(spawned.until_listening.as_nanos() as u64);
        drop(spawned);
    }
    let summary = Summary::of(&mut samples);
    let listen_summary = Summary::of(&mut listening);
    let mut report = Report::new(
        "startup",
        binary,
        &format!(
            "--listen 127.0.0.1:0 --data-dir <fresh tmp> {}",
            flags.join(" ")
        ),
    );
    report.note("spawn to the first 200 on /livez (port read from the `listening on` line), fresh data dir each run");
    report.figure("runs", "runs", runs, "");
    report.figure("medianMs", "median", summary.p50 / 1e6, "ms");
    report.figure("maxMs", "max", summary.max / 1e6, "ms");
    report.figure(
        "listeningMedianMs",
        "median until `listening on`",
        listen_summary.p50 / 1e6,
        "ms",
    );
    Ok(report)
}

fn wait_livez(addr: SocketAddr) -> io::Result<()> {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        match wire::http_get_status(addr, "/livez", IO_TIMEOUT) {
            Ok(200) => return Ok(()),
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_micros(100)),
            Ok(status) => return Err(io::Error::other(format!("/livez answered {status}"))),
            Err(error) => return Err(error),
        }
    }
}

/// The `lastSeq` of a `session_joined` reply (the top-level one).
pub fn joined_last_seq(reply: &Value) -> u64 {
    reply["lastSeq"].as_u64().unwrap_or(0)
}
