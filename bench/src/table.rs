//! `table`: the JSON lines of `all` runs, one file per column, as one markdown table (rows:
//! figures; columns: the runs in the order given, e.g. tokio, smol, mio, or each adapter's
//! baseline build beside its current one).

use std::io;
use std::path::PathBuf;

use serde_json::Value;

/// Which report a row reads: the bench name and, for fan-out, the coalescing setting.
#[derive(Clone, Copy)]
enum Source {
    Bench(&'static str),
    Fanout(bool),
}

struct Row {
    label: &'static str,
    source: Source,
    keys: &'static [&'static str],
    target: &'static str,
}

const ROWS: &[Row] = &[
    Row {
        label: "`/health` requests/s (64 conns)",
        source: Source::Bench("health"),
        keys: &["requestsPerS"],
        target: "≥ 120,000",
    },
    Row {
        label: "`/health` p50 / p95 / p99 (µs)",
        source: Source::Bench("health"),
        keys: &["latencyP50Us", "latencyP95Us", "latencyP99Us"],
        target: "p99 < 1,000",
    },
    Row {
        label: "connect+auth p50 / p95 / p99 (µs)",
        source: Source::Bench("connect"),
        keys: &["latencyP50Us", "latencyP95Us", "latencyP99Us"],
        target: "p50 < 70",
    },
    Row {
        label: "connect+auth mean / stddev (µs)",
        source: Source::Bench("connect"),
        keys: &["latencyMeanUs", "latencyStddevUs"],
        target: "",
    },
    Row {
        label: "`create_session` p50 / p95 / p99 (µs)",
        source: Source::Bench("create"),
        keys: &["latencyP50Us", "latencyP95Us", "latencyP99Us"],
        target: "p50 < 35",
    },
    Row {
        label: "`create_session` mean / stddev (µs)",
        source: Source::Bench("create"),
        keys: &["latencyMeanUs", "latencyStddevUs"],
        target: "stddev < 50",
    },
    Row {
        label: "fan-out, coalescing off: deliveries/s",
        source: Source::Fanout(false),
        keys: &["deliveriesPerS"],
        target: "≥ 3,500,000",
    },
    Row {
        label: "fan-out, coalescing off: server CPU/delivery (ns)",
        source: Source::Fanout(false),
        keys: &["serverCpuNsPerDelivery"],
        target: "< 250",
    },
    Row {
        label: "fan-out, coalescing off: delta latency p50 / p99 (µs)",
        source: Source::Fanout(false),
        keys: &["latencyP50Us", "latencyP99Us"],
        target: "",
    },
    Row {
        label: "fan-out, coalescing off: order violations / ok",
        source: Source::Fanout(false),
        keys: &["orderViolations", "ok"],
        target: "0 / true",
    },
    Row {
        label: "fan-out, coalescing on: deliveries/s",
        source: Source::Fanout(true),
        keys: &["deliveriesPerS"],
        target: "",
    },
    Row {
        label: "fan-out, coalescing on: server CPU/delivery (ns)",
        source: Source::Fanout(true),
        keys: &["serverCpuNsPerDelivery"],
        target: "",
    },
    Row {
        label: "fan-out, coalescing on: delta latency p50 / p99 (µs)",
        source: Source::Fanout(true),
        keys: &["latencyP50Us", "latencyP99Us"],
        target: "",
    },
    Row {
        label: "fan-out, coalescing on: order violations / ok",
        source: Source::Fanout(true),
        keys: &["orderViolations", "ok"],
        target: "0 / true",
    },
    Row {
        label: "persist: events/s (20,000-event turn)",
        source: Source::Bench("persist"),
        keys: &["eventsPerS"],
        target: "≥ 200,000",
    },
    Row {
        label: "persist: `run_turn` until all returned (ms)",
        source: Source::Bench("persist"),
        keys: &["totalMs"],
        target: "",
    },
    Row {
        label: "idle: server memory per connection (bytes)",
        source: Source::Bench("idle"),
        keys: &["bytesPerConnection"],
        target: "< 1,536",
    },
    Row {
        label: "agents: active agents / gateway threads",
        source: Source::Bench("agents"),
        keys: &["agents", "threadsAfter"],
        target: "1,000 / constant",
    },
    Row {
        label: "agents: gateway memory per active agent (KiB)",
        source: Source::Bench("agents"),
        keys: &["rssPerAgentKib"],
        target: "≤ 64",
    },
    Row {
        label: "agents: spawn-to-ready p50 / p99 (µs)",
        source: Source::Bench("agents"),
        keys: &["spawnToReadyP50Us", "spawnToReadyP99Us"],
        target: "",
    },
    Row {
        label: "startup to first `/livez` 200, median (ms)",
        source: Source::Bench("startup"),
        keys: &["medianMs"],
        target: "< 10",
    },
    Row {
        label: "cluster (3 instances, 1 nats-server): `create_session` p50 / p99 (µs)",
        source: Source::Bench("cluster-create"),
        keys: &["latencyP50Us", "latencyP99Us"],
        target: "",
    },
    Row {
        label: "cluster: cross-instance delivery p50 / p99 (µs), one delta at a time",
        source: Source::Bench("cluster-paced"),
        keys: &["crossInstanceP50Us", "crossInstanceP99Us"],
        target: "",
    },
    Row {
        label: "cluster: cross-instance delivery p50 / p99 (µs), flat-out 2,000-delta turn",
        source: Source::Bench("cluster-latency"),
        keys: &["crossInstanceLatencyP50Us", "crossInstanceLatencyP99Us"],
        target: "",
    },
    Row {
        label: "cluster: fan-out, 1,000 subscribers over 3 instances: deliveries/s",
        source: Source::Bench("cluster-fanout"),
        keys: &["deliveriesPerS"],
        target: "",
    },
    Row {
        label: "cluster: fan-out: CPU of the 3 gateways per delivery (ns)",
        source: Source::Bench("cluster-fanout"),
        keys: &["serverCpuNsPerDelivery"],
        target: "",
    },
    Row {
        label: "cluster: fan-out: order violations / ok",
        source: Source::Bench("cluster-fanout"),
        keys: &["orderViolations", "ok"],
        target: "0 / true",
    },
];

fn matches(source: Source, report: &Value) -> bool {
    match source {
        Source::Bench(name) => report["bench"] == name,
        Source::Fanout(coalesce) => {
            report["bench"] == "fanout" && report["coalesceDeltas"] == coalesce
        }
    }
}

fn format_value(value: &Value) -> String {
    match value {
        Value::Number(number) => {
            let float = number.as_f64().unwrap_or_default();
            if float.fract() == 0.0 && float.abs() >= 1000.0 {
                group(float as i64)
            } else if float.fract() == 0.0 {
                format!("{}", float as i64)
            } else if float.abs() >= 100.0 {
                format!("{float:.0}")
            } else if float.abs() >= 10.0 {
                format!("{float:.1}")
            } else {
                format!("{float:.2}")
            }
        }
        Value::Bool(flag) => flag.to_string(),
        Value::Null => "—".to_owned(),
        other => other.to_string(),
    }
}

fn group(number: i64) -> String {
    let digits = number.abs().to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    if number < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// `columns`: (column name, JSON-lines file), in the order they are shown.
pub fn table(columns: &[(String, PathBuf)]) -> io::Result<String> {
    let mut reports: Vec<(String, Vec<Value>)> = Vec::new();
    for (name, path) in columns {
        let text = std::fs::read_to_string(path)?;
        let lines = text
            .lines()
            .filter(|line| line.starts_with('{'))
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        reports.push((name.clone(), lines));
    }
    let mut out = String::from("| figure | target |");
    for (column, _) in &reports {
        out.push_str(&format!(" {column} |"));
    }
    out.push_str("\n|---|---|");
    out.push_str(&"---:|".repeat(reports.len()));
    out.push('\n');
    for row in ROWS {
        out.push_str(&format!("| {} | {} |", row.label, row.target));
        for (_, lines) in &reports {
            let cell = match lines.iter().find(|report| matches(row.source, report)) {
                None => "—".to_owned(),
                Some(report) => row
                    .keys
                    .iter()
                    .map(|key| format_value(&report[*key]))
                    .collect::<Vec<_>>()
                    .join(" / "),
            };
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers_for_reading() {
        assert_eq!(format_value(&Value::from(123456.0)), "123,456");
        assert_eq!(format_value(&Value::from(42.25)), "42.2");
        assert_eq!(format_value(&Value::from(0.0312)), "0.03");
        assert_eq!(format_value(&Value::from(7)), "7");
        assert_eq!(group(3_500_000), "3,500,000");
    }
}
