//! `fanout`: many subscribers of one session while an echo-agent turn streams deltas.
//!
//! The subscribers are set up with blocking sockets (upgrade, `authenticated`, `join_session`),
//! then handed to one mio loop. The receive path does not parse JSON: it finds frame boundaries
//! in each connection's buffer, checks the `type` prefix, reads the digits after `,"seq":` and
//! `,"ts":`, and takes the delta's text length from where `"text":"` starts (the gateway writes
//! `text` last, and the echo agent's text needs no escaping). One `Instant::now()` per `read`.

use std::io::{self, Read};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::report::{Report, Summary};
use crate::sequential::{self, IO_TIMEOUT};
use crate::server::{self, Target};
use crate::wire::{self, BlockingWs};

/// How far into a payload the `seq` and `ts` keys are looked for (they follow `type` and the
/// session id).
const KEY_WINDOW: usize = 160;

#[derive(Default)]
struct Subscriber {
    /// The next session seq this subscriber must receive.
    expect: u64,
    violations: u64,
    /// Bytes of delta text received, and whether they spell the echo agent's pattern.
    text_bytes: u64,
    content_errors: u64,
    /// Receive time (µs since the start) of each `text_delta` frame, in order.
    times: Vec<u32>,
    /// Which of `Options::subscriber_addrs` it joined through (0: the session's owner).
    group: usize,
    done: bool,
    failure: Option<String>,
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// Everything one subscriber's frames add up to.
struct Shared {
    /// `ts`-based latency histogram: receive wall clock minus the event's `ts`, in whole ms.
    ts_hist: Vec<u64>,
    first_delivery: Option<u32>,
    last_delivery: u32,
    frames: u64,
    wall_base_ms: f64,
}

pub struct Options {
    pub subscribers: usize,
    pub deltas: usize,
    pub size: usize,
    pub timeout: Duration,
    /// Cluster mode: the instances subscribers join through, in turn (the first is the
    /// target, where the session is created and run, so it owns it). Empty: the target.
    pub subscriber_addrs: Vec<std::net::SocketAddr>,
    /// Cluster mode: the other instances' pids, whose CPU counts as the gateway's.
    pub other_pids: Vec<i32>,
    /// The report's name (`fanout`; the cluster subcommand's own names).
    pub name: &'static str,
}

pub fn fanout(
    target: &Target,
    binary: &str,
    coalesce: Option<bool>,
    options: &Options,
) -> io::Result<Report> {
    let (subscribers, deltas, size, timeout) = (
        options.subscribers,
        options.deltas,
        options.size,
        options.timeout,
    );
    let addrs = if options.subscriber_addrs.is_empty() {
        vec![target.addr]
    } else {
        options.subscriber_addrs.clone()
    };
    let mut control = BlockingWs::connect_authenticated(target.addr, IO_TIMEOUT)?;
    let session = sequential::prepared_session(&mut control)?;

    let mut poll = Poll::new()?;
    let mut conns = Vec::with_capacity(subscribers);
    let mut subs: Vec<Subscriber> = Vec::with_capacity(subscribers);
    let join = format!(r#"{{"type":"join_session","requestId":"j","sessionId":"{session}"}}"#);
    for index in 0..subscribers {
        let group = index % addrs.len();
        let mut ws = BlockingWs::connect_authenticated(addrs[group], IO_TIMEOUT)?;
        let joined = ws.request("j", &join)?;
        let last_seq = sequential::joined_last_seq(&joined);
        let (stream, rest) = ws.into_parts();
        stream.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(stream);
        poll.registry()
            .register(&mut stream, Token(index), Interest::READABLE)?;
        let mut buf = vec![0u8; 16 * 1024];
        buf[..rest.len()].copy_from_slice(&rest);
        conns.push(Conn {
            stream,
            buf,
            start: 0,
            end: rest.len(),
        });
        subs.push(Subscriber {
            expect: last_seq + 1,
            times: Vec::with_capacity(deltas),
            group,
            ..Subscriber::default()
        });
    }

    let pid = target.pid();
    let agents = pid.map(server::children).unwrap_or_default();
    // The gateway's CPU: every instance's, in cluster mode.
    let gateway_cpu = || -> Option<u64> {
        let mut total = pid.and_then(server::cpu_ticks)?;
        for &other in &options.other_pids {
            total += server::cpu_ticks(other)?;
        }
        Some(total)
    };
    let agent_cpu = |agents: &[i32]| {
        agents
            .iter()
            .filter_map(|&a| server::cpu_ticks(a))
            .sum::<u64>()
    };
    let cpu_before = gateway_cpu();
    let agent_before = agent_cpu(&agents);
    let self_before = server::cpu_ticks(std::process::id() as i32);
    let machine_before = server::machine_busy_ticks();
    let started = Instant::now();
    let wall_base_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs_f64() * 1e3)
        .unwrap_or(0.0);
    control.send_text(
        format!(
            r#"{{"type":"run_turn","requestId":"t","sessionId":"{session}","text":"stream {deltas} {size}"}}"#
        )
        .as_bytes(),
    )?;

    let mut shared = Shared {
        ts_hist: vec![0; 60_001],
        first_delivery: None,
        last_delivery: 0,
        frames: 0,
        wall_base_ms,
    };
    // Frames already read during the setup (none are expected) count too.
    for (conn, sub) in conns.iter_mut().zip(subs.iter_mut()) {
        consume(conn, sub, &mut shared, 0);
    }
    let mut remaining = subs.iter().filter(|sub| !sub.done).count();
    let mut events = Events::with_capacity(1024);
    let deadline = started + timeout;
    while remaining > 0 {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        poll.poll(&mut events, Some(deadline - now))?;
        for event in events.iter() {
            let index = event.token().0;
            let (conn, sub) = (&mut conns[index], &mut subs[index]);
            if sub.done {
                continue;
            }
            loop {
                if conn.end == conn.buf.len() {
                    if conn.start > 0 {
                        conn.buf.copy_within(conn.start..conn.end, 0);
                        conn.end -= conn.start;
                        conn.start = 0;
                    } else {
                        let len = conn.buf.len();
                        conn.buf.resize(len * 2, 0);
                    }
                }
                let space = conn.buf.len() - conn.end;
                match conn.stream.read(&mut conn.buf[conn.end..]) {
                    Ok(0) => {
                        sub.failure
                            .get_or_insert_with(|| "connection closed".into());
                        sub.done = true;
                    }
                    Ok(read) => {
                        conn.end += read;
                        let at = started.elapsed().as_micros() as u32;
                        consume(conn, sub, &mut shared, at);
                        // A short read emptied the socket: new bytes will raise a new edge, so
                        // the read that would only say WouldBlock is saved (as tokio does).
                        if read < space && !sub.done {
                            break;
                        }
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    Err(error) => {
                        sub.failure.get_or_insert_with(|| error.to_string());
                        sub.done = true;
                    }
                }
                if sub.done {
                    remaining -= 1;
                    break;
                }
            }
        }
    }
    let finished = started.elapsed();
    let cpu_after = gateway_cpu();
    let agent_after = agent_cpu(&agents);
    let self_after = server::cpu_ticks(std::process::id() as i32);
    let machine_after = server::machine_busy_ticks();
    drop(conns);

    // The check: every subscriber got every session event in seq order, the turn's whole text,
    // and its turn_complete.
    let expected_bytes = (deltas * size) as u64;
    let mut violations = 0u64;
    let mut incomplete = 0usize;
    let mut failures = Vec::new();
    let mut content_errors = 0u64;
    let mut delivered_bytes = 0u64;
    for sub in &subs {
        violations += sub.violations;
        content_errors += sub.content_errors;
        delivered_bytes += sub.text_bytes;
        if sub.text_bytes != expected_bytes || !sub.done || sub.failure.is_some() {
            incomplete += 1;
        }
        if let Some(failure) = &sub.failure {
            if failures.len() < 3 {
                failures.push(failure.clone());
            }
        }
    }
    if remaining > 0 {
        failures.push(format!(
            "{remaining} subscribers had not finished after {timeout:?}"
        ));
    }
    let ok = violations == 0 && incomplete == 0 && content_errors == 0 && failures.is_empty();

    // Delta latency: each subscriber's i-th text_delta frame is the same event (the order is
    // checked); its latency is its receive time minus the first subscriber's.
    let events_per_sub = subs.iter().map(|sub| sub.times.len()).min().unwrap_or(0);
    let mut spread: Vec<u64> = Vec::with_capacity(events_per_sub * subs.len());
    for index in 0..events_per_sub {
        let first = subs.iter().map(|sub| sub.times[index]).min().unwrap_or(0);
        spread.extend(
            subs.iter()
                .map(|sub| u64::from(sub.times[index] - first) * 1000),
        );
    }
    let spread = Summary::of(&mut spread);
    // Cluster mode: each delta's receive time at a subscriber of another instance minus the
    // first receive time at a subscriber of the owner (the owner delivers at once; the others
    // get the event through NATS).
    let mut cross: Vec<u64> = Vec::new();
    if addrs.len() > 1 {
        for index in 0..events_per_sub {
            let Some(owner_first) = subs
                .iter()
                .filter(|sub| sub.group == 0)
                .map(|sub| sub.times[index])
                .min()
            else {
                continue;
            };
            cross.extend(
                subs.iter()
                    .filter(|sub| sub.group != 0)
                    .map(|sub| u64::from(sub.times[index].saturating_sub(owner_first)) * 1000),
            );
        }
    }
    let cross = Summary::of(&mut cross);
    let ts_p = |p: f64| -> u64 {
        let total: u64 = shared.ts_hist.iter().sum();
        let goal = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (ms, &count) in shared.ts_hist.iter().enumerate() {
            seen += count;
            if seen >= goal {
                return ms as u64;
            }
        }
        0
    };

    let chunks = delivered_bytes as f64 / size as f64;
    let window_us = shared
        .first_delivery
        .map(|first| shared.last_delivery.saturating_sub(first))
        .unwrap_or(0)
        .max(1);
    let ticks = server::clock_ticks() as f64;
    let mut report = Report::new(options.name, binary, &target.flags_text());
    report.note(
        "deliveries = agent chunks received by subscribers (delta text bytes / SIZE), however the \
         gateway coalesced them; rate over the time from the first delivery to the last",
    );
    report.note(
        "latency = receive time of a delta frame minus the time the first subscriber received \
         the same event (fan-out spread, µs); tsLatency = receive wall clock minus the event's \
         `ts` (server wall clock, ms resolution, same machine)",
    );
    report.figure(
        "coalesceDeltas",
        "delta coalescing",
        coalesce
            .map(serde_json::Value::from)
            .unwrap_or(serde_json::Value::Null),
        "",
    );
    report.figure("subscribers", "subscribers", subscribers, "");
    report.figure("deltas", "agent chunks per turn", deltas, "");
    report.figure("size", "chunk size", size, "bytes");
    report.figure(
        "frames",
        "text_delta frames received (all subscribers)",
        shared.frames,
        "",
    );
    report.figure(
        "deliveries",
        "chunks delivered (all subscribers)",
        chunks,
        "",
    );
    report.figure(
        "windowMs",
        "first to last delivery",
        f64::from(window_us) / 1e3,
        "ms",
    );
    report.figure(
        "deliveriesPerS",
        "deliveries per second",
        (chunks / (f64::from(window_us) / 1e6)).round(),
        "deliveries/s",
    );
    report.figure(
        "turnMs",
        "run_turn until every subscriber saw turn_complete",
        finished.as_secs_f64() * 1e3,
        "ms",
    );
    report.latency("latency", "delta latency (spread)", &spread, false);
    if addrs.len() > 1 {
        report.figure(
            "instances",
            "gateway instances subscribers joined",
            addrs.len(),
            "",
        );
        report.latency(
            "crossInstanceLatency",
            "cross-instance delivery (owner's first subscriber → another instance's)",
            &cross,
            false,
        );
    }
    report.figure(
        "tsLatencyP50Ms",
        "delta latency from ts, p50",
        ts_p(50.0),
        "ms",
    );
    report.figure(
        "tsLatencyP99Ms",
        "delta latency from ts, p99",
        ts_p(99.0),
        "ms",
    );
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        let cpu_ms = (after - before) as f64 / ticks * 1e3;
        report.figure(
            "serverCpuMs",
            "gateway CPU (utime+stime) from run_turn to the end",
            cpu_ms,
            "ms",
        );
        report.figure(
            "serverCpuNsPerDelivery",
            "gateway CPU per delivery",
            cpu_ms * 1e6 / chunks.max(1.0),
            "ns",
        );
        report.figure(
            "agentCpuMs",
            "echo agent CPU",
            agent_after.saturating_sub(agent_before) as f64 / ticks * 1e3,
            "ms",
        );
    }
    if let (Some(before), Some(after)) = (self_before, self_after) {
        report.figure(
            "loadGeneratorCpuMs",
            "load generator CPU",
            (after - before) as f64 / ticks * 1e3,
            "ms",
        );
    }
    if let (Some(m0), Some(m1), Some(g0), Some(g1), Some(s0), Some(s1)) = (
        machine_before,
        machine_after,
        cpu_before,
        cpu_after,
        self_before,
        self_after,
    ) {
        let ours = (g1 - g0) + (s1 - s0) + agent_after.saturating_sub(agent_before);
        report.figure(
            "otherCpuMs",
            "CPU used by other processes on the machine meanwhile",
            (m1 - m0).saturating_sub(ours) as f64 / ticks * 1e3,
            "ms",
        );
    }
    report.figure(
        "orderViolations",
        "seq gaps, duplicates or reorderings",
        violations,
        "",
    );
    report.figure(
        "contentErrors",
        "delta text not matching the agent's",
        content_errors,
        "",
    );
    report.figure(
        "incompleteSubscribers",
        "subscribers missing deltas or turn_complete",
        incomplete,
        "",
    );
    report.figure("ok", "every subscriber got every delta in order", ok, "");
    if !failures.is_empty() {
        report.figure("failures", "failures", failures.join("; "), "");
    }
    Ok(report)
}

/// Handles every whole frame in the connection's buffer.
#[inline]
fn consume(conn: &mut Conn, sub: &mut Subscriber, shared: &mut Shared, at: u32) {
    while let Some(frame) = wire::scan_frame(&conn.buf[conn.start..conn.end]) {
        let payload = &conn.buf[conn.start + frame.payload.0..conn.start + frame.payload.1];
        conn.start += frame.len;
        match frame.opcode {
            wire::OP_TEXT if frame.fin => on_text(payload, sub, shared, at),
            wire::OP_CLOSE => {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                sub.failure
                    .get_or_insert_with(|| format!("closed by the gateway with {code:?}"));
                sub.done = true;
            }
            9 | 10 => {} // ping, pong: nothing to count
            _ => {
                sub.failure
                    .get_or_insert_with(|| "fragmented or binary message".into());
                sub.done = true;
            }
        }
        if sub.done {
            break;
        }
    }
    if conn.start == conn.end {
        conn.start = 0;
        conn.end = 0;
    }
}

#[inline]
fn on_text(payload: &[u8], sub: &mut Subscriber, shared: &mut Shared, at: u32) {
    // Only session events carry `,"seq":` (tenant notifications carry `lastSeq` inside
    // `session`, which this key does not match).
    let Some(seq) = wire::number_after(payload, b",\"seq\":", KEY_WINDOW) else {
        return;
    };
    if seq != sub.expect {
        sub.violations += 1;
    }
    sub.expect = seq + 1;
    if wire::is_type(payload, b"text_delta") {
        const TEXT: &[u8] = b",\"text\":\"";
        let text = match wire::find(payload, TEXT) {
            Some(at) if payload.ends_with(b"\"}") => &payload[at + TEXT.len()..payload.len() - 2],
            _ => {
                sub.content_errors += 1;
                return;
            }
        };
        if let Some(&first) = text.first() {
            if first != b'a' + (sub.text_bytes % 26) as u8 {
                sub.content_errors += 1;
            }
        }
        sub.text_bytes += text.len() as u64;
        sub.times.push(at);
        shared.frames += 1;
        if shared.first_delivery.is_none() {
            shared.first_delivery = Some(at);
        }
        shared.last_delivery = shared.last_delivery.max(at);
        if let Some(ts) = wire::number_after(payload, b",\"ts\":", KEY_WINDOW) {
            let received_ms = shared.wall_base_ms + f64::from(at) / 1e3;
            let latency = (received_ms - ts as f64).max(0.0) as usize;
            let last = shared.ts_hist.len() - 1;
            shared.ts_hist[latency.min(last)] += 1;
        }
    } else if wire::is_type(payload, b"turn_complete") || wire::is_type(payload, b"turn_error") {
        if wire::is_type(payload, b"turn_error") {
            sub.failure
                .get_or_insert_with(|| String::from_utf8_lossy(payload).into_owned());
        }
        sub.done = true;
    }
}
