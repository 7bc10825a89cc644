//! Every subcommand runs to completion with tiny sizes against the debug tokio binary, and the
//! fan-out check passes. No figure is asserted: this is not a timed test.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn gateway() -> PathBuf {
    // Built like the integration tests build it: same target dir and profile as this test.
    diminuendo_tests::binary_path("diminuendo-tokio")
}

/// Runs `diminuendo-bench ARGS --binary <tokio>` and returns its JSON lines.
fn bench(args: &[&str]) -> Vec<Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_diminuendo-bench"))
        .args(args)
        .arg("--binary")
        .arg(gateway())
        .output()
        .expect("run diminuendo-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "diminuendo-bench {args:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert!(!lines.is_empty(), "no JSON line in:\n{stdout}");
    for line in &lines {
        assert_eq!(line["bench"], args[0], "{line}");
    }
    lines
}

#[test]
fn health_counts_requests() {
    let lines = bench(&[
        "health",
        "--connections",
        "4",
        "--warmup-ms",
        "50",
        "--duration-ms",
        "200",
    ]);
    assert!(lines[0]["requestsPerS"].as_f64().unwrap() > 0.0);
    assert_eq!(lines[0]["non200"], 0);
}

#[test]
fn connect_and_create_measure_round_trips() {
    let connect = bench(&["connect", "--count", "20", "--warmup", "2"]);
    assert!(connect[0]["latencyP50Us"].as_f64().unwrap() > 0.0);
    let create = bench(&["create", "--count", "20", "--warmup", "2"]);
    assert!(create[0]["latencyStddevUs"].as_f64().is_some());
}

#[test]
fn fanout_delivers_every_delta_in_order_with_and_without_coalescing() {
    let lines = bench(&[
        "fanout",
        "--subscribers",
        "20",
        "--deltas",
        "300",
        "--size",
        "16",
        "--coalesce",
        "both",
    ]);
    assert_eq!(lines.len(), 2);
    for (line, coalesce) in lines.iter().zip([false, true]) {
        assert_eq!(line["coalesceDeltas"], coalesce, "{line}");
        assert_eq!(line["ok"], true, "{line}");
        assert_eq!(line["orderViolations"], 0, "{line}");
        assert_eq!(line["deliveries"].as_f64(), Some(20.0 * 300.0), "{line}");
        assert!(line["serverCpuMs"].as_f64().is_some(), "{line}");
    }
}

#[test]
fn persist_idle_and_startup_complete() {
    let persist = bench(&["persist", "--events", "500"]);
    assert!(persist[0]["eventsPerS"].as_f64().unwrap() > 0.0);
    let idle = bench(&["idle", "--connections", "100"]);
    assert!(idle[0]["bytesPerConnection"].as_f64().is_some());
    let startup = bench(&["startup", "--runs", "2"]);
    assert!(startup[0]["medianMs"].as_f64().unwrap() > 0.0);
}

#[test]
fn agents_keeps_every_agent_up_and_counts_threads() {
    let agents = bench(&["agents", "--count", "5"]);
    let line = &agents[0];
    assert_eq!(line["agents"], 5, "{line}");
    assert_eq!(line["agentsAlive"], 5, "{line}");
    assert!(line["threadsAfter"].as_u64().unwrap() > 0, "{line}");
    assert!(line["spawnToReadyP50Us"].as_f64().unwrap() > 0.0, "{line}");
}
