//! Statistics over samples, and the output of a subcommand: readable figures, then one JSON line.

use serde_json::{Map, Value};

/// Order statistics and moments of latency samples in nanoseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub mean: f64,
    pub stddev: f64,
    pub max: f64,
}

impl Summary {
    /// Summarises `samples` (sorted in place). Percentiles are nearest-rank.
    pub fn of(samples: &mut [u64]) -> Summary {
        if samples.is_empty() {
            return Summary::default();
        }
        samples.sort_unstable();
        let count = samples.len();
        let rank = |p: f64| -> f64 {
            let index = ((p / 100.0) * count as f64).ceil() as usize;
            samples[index.clamp(1, count) - 1] as f64
        };
        let mean = samples.iter().map(|&s| s as f64).sum::<f64>() / count as f64;
        let variance = samples
            .iter()
            .map(|&s| (s as f64 - mean).powi(2))
            .sum::<f64>()
            / count as f64;
        Summary {
            count,
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            mean,
            stddev: variance.sqrt(),
            max: samples[count - 1] as f64,
        }
    }
}

/// Rounds for output: three significant decimals are plenty for every figure here.
pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// The figures of one run of one subcommand.
pub struct Report {
    bench: String,
    fields: Map<String, Value>,
    lines: Vec<String>,
}

impl Report {
    pub fn new(bench: &str, binary: &str, flags: &str) -> Report {
        let mut report = Report {
            bench: bench.to_owned(),
            fields: Map::new(),
            lines: Vec::new(),
        };
        report.fields.insert("bench".into(), bench.into());
        report.fields.insert("binary".into(), binary.into());
        report.fields.insert("gatewayFlags".into(), flags.into());
        // Other work on the machine shows in every figure: keep how busy it was.
        if let Some(load) = crate::server::loadavg() {
            report.fields.insert("loadavg1".into(), load.into());
        }
        report
    }

    /// A figure: printed as `label: value unit` and kept in the JSON line under `key`.
    pub fn figure(&mut self, key: &str, label: &str, value: impl Into<Value>, unit: &str) {
        let value = match value.into() {
            Value::Number(number) if number.is_f64() => {
                let rounded = round3(number.as_f64().unwrap_or_default());
                if rounded.fract() == 0.0 && rounded.abs() < 1e15 {
                    Value::from(rounded as i64)
                } else {
                    Value::from(rounded)
                }
            }
            other => other,
        };
        let shown = match &value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        if unit.is_empty() {
            self.lines.push(format!("  {label}: {shown}"));
        } else {
            self.lines.push(format!("  {label}: {shown} {unit}"));
        }
        self.fields.insert(key.to_owned(), value);
    }

    /// A latency summary in microseconds under `prefix` (`<prefix>P50Us`, ...).
    pub fn latency(&mut self, prefix: &str, label: &str, summary: &Summary, with_moments: bool) {
        let us = |ns: f64| round3(ns / 1000.0);
        self.lines.push(format!(
            "  {label} (µs, n={}): p50 {} p95 {} p99 {}{}",
            summary.count,
            us(summary.p50),
            us(summary.p95),
            us(summary.p99),
            if with_moments {
                format!(
                    " mean {} stddev {} max {}",
                    us(summary.mean),
                    us(summary.stddev),
                    us(summary.max)
                )
            } else {
                String::new()
            }
        ));
        let mut put = |name: &str, ns: f64| {
            self.fields
                .insert(format!("{prefix}{name}Us"), Value::from(us(ns)));
        };
        put("P50", summary.p50);
        put("P95", summary.p95);
        put("P99", summary.p99);
        if with_moments {
            put("Mean", summary.mean);
            put("Stddev", summary.stddev);
            put("Max", summary.max);
        }
    }

    /// A line of explanation, printed but not in the JSON.
    pub fn note(&mut self, text: &str) {
        self.lines.push(format!("  note: {text}"));
    }

    /// Prints the figures and the JSON line; returns the JSON object.
    pub fn print(self) -> Value {
        println!("{}:", self.bench);
        for line in &self.lines {
            println!("{line}");
        }
        let value = Value::Object(self.fields);
        println!("{value}");
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<u64> = (1..=100).rev().collect();
        let summary = Summary::of(&mut samples);
        assert_eq!(summary.p50, 50.0);
        assert_eq!(summary.p95, 95.0);
        assert_eq!(summary.p99, 99.0);
        assert_eq!(summary.max, 100.0);
        assert!((summary.mean - 50.5).abs() < 1e-9);
    }
}
