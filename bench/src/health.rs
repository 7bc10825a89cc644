//! `health`: keep-alive `GET /health` on many connections at once, one request in flight per
//! connection (closed loop), multiplexed on one thread with mio.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::report::{Report, Summary};
use crate::server::Target;
use crate::wire;

const REQUEST: &[u8] = b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n";

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    end: usize,
    sent: Instant,
    in_flight: bool,
}

pub fn health(
    target: &Target,
    binary: &str,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> io::Result<Report> {
    let mut poll = Poll::new()?;
    let mut conns = Vec::with_capacity(connections);
    for index in 0..connections {
        let stream = std::net::TcpStream::connect(target.addr)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(stream);
        poll.registry()
            .register(&mut stream, Token(index), Interest::READABLE)?;
        conns.push(Conn {
            stream,
            buf: vec![0; 4096],
            end: 0,
            sent: Instant::now(),
            in_flight: false,
        });
    }
    let started = Instant::now();
    let measure_from = started + warmup;
    let measure_to = measure_from + duration;
    for conn in &mut conns {
        send(conn, started)?;
    }
    let mut samples: Vec<u64> = Vec::with_capacity(1 << 20);
    let mut errors = 0u64;
    let mut in_flight = conns.len();
    let mut events = Events::with_capacity(1024);
    while in_flight > 0 {
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        if events.is_empty() && Instant::now() > measure_to + Duration::from_secs(10) {
            return Err(io::Error::other("health: responses stopped coming"));
        }
        for event in events.iter() {
            let conn = &mut conns[event.token().0];
            loop {
                if conn.end == conn.buf.len() {
                    let len = conn.buf.len();
                    conn.buf.resize(len * 2, 0);
                }
                let space = conn.buf.len() - conn.end;
                let read = match conn.stream.read(&mut conn.buf[conn.end..]) {
                    Ok(0) => {
                        return Err(io::Error::other("health: the gateway closed a connection"))
                    }
                    Ok(read) => read,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    Err(error) => return Err(error),
                };
                conn.end += read;
                let now = Instant::now();
                let mut start = 0;
                while let Some((status, len)) = wire::scan_response(&conn.buf[start..conn.end]) {
                    start += len;
                    if status != 200 {
                        errors += 1;
                    }
                    if conn.sent >= measure_from && now <= measure_to {
                        samples.push(now.duration_since(conn.sent).as_nanos() as u64);
                    }
                    conn.in_flight = false;
                    if now < measure_to {
                        send(conn, now)?;
                    } else {
                        in_flight -= 1;
                    }
                }
                if start > 0 {
                    conn.buf.copy_within(start..conn.end, 0);
                    conn.end -= start;
                }
                // A short read emptied the socket; the next bytes raise a new edge.
                if read < space {
                    break;
                }
            }
        }
    }
    let completed = samples.len();
    let summary = Summary::of(&mut samples);
    let mut report = Report::new("health", binary, &target.flags_text());
    report.note(&format!(
        "{connections} keep-alive connections, one request in flight each, one client thread; \
         {} ms warm-up, then {} ms measured",
        warmup.as_millis(),
        duration.as_millis()
    ));
    report.figure("connections", "connections", connections, "");
    report.figure(
        "requestsPerS",
        "requests per second",
        (completed as f64 / duration.as_secs_f64()).round(),
        "req/s",
    );
    report.latency("latency", "latency", &summary, false);
    report.figure("non200", "responses other than 200", errors, "");
    Ok(report)
}

fn send(conn: &mut Conn, now: Instant) -> io::Result<()> {
    debug_assert!(!conn.in_flight);
    match conn.stream.write(REQUEST) {
        Ok(written) if written == REQUEST.len() => {
            conn.sent = now;
            conn.in_flight = true;
            Ok(())
        }
        Ok(_) => Err(io::Error::other("health: short write of a request")),
        Err(error) => Err(error),
    }
}
