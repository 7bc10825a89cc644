//! An agent's stderr goes to `tracing` (target `agent`), rate-limited. In its own test binary
//! because it installs a process-wide subscriber (the reader threads are not the test's thread).

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use diminuendo_core::AgentId;
use support::{exited, reaped, sh, Harness};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn stderr_is_logged_with_the_agent_and_session_at_a_bounded_rate() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .without_time()
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let mut h = Harness::new(|config| {
        config.stderr_lines_per_second = 5;
        config.agents.insert(
            "noisy".into(),
            sh(r#"i=0; while [ $i -lt 200 ]; do echo "err $i" >&2; i=$((i+1)); done; echo done"#),
        );
    });
    h.spawn(1, "noisy-session", "noisy");
    let pid = h.host.pid(AgentId(1)).unwrap();
    // Exited comes after the stderr reader has ended, so every log line is written by then.
    let reports = h.until_exit(1);
    assert_eq!(exited(&reports, 1), Some(Some(0)));
    assert!(reaped(pid));

    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let stderr_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("stderr: err "))
        .collect();
    let suppressed: u64 = text
        .lines()
        .filter(|l| l.contains("stderr lines suppressed"))
        .map(|l| {
            let at = l.find(" stderr lines suppressed").unwrap();
            let head = &l[..at];
            head[head.rfind(' ').unwrap() + 1..].parse::<u64>().unwrap()
        })
        .sum();
    // 5 a second: 200 lines would take 40 s to log in full.
    assert!(
        (5..200).contains(&stderr_lines.len()),
        "{} lines logged",
        stderr_lines.len()
    );
    assert!(stderr_lines[0].contains("stderr: err 0"));
    assert_eq!(stderr_lines.len() as u64 + suppressed, 200, "{text}");
    for line in &stderr_lines {
        assert!(line.contains("agent: stderr: err "), "target agent: {line}");
        assert!(line.contains("agent=1"), "{line}");
        assert!(line.contains("session=noisy-session"), "{line}");
    }
}
