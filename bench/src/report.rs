//! Results: the JSON record of one run, its human summary, and the Markdown comparison table.
//!
//! Latencies are reported in milliseconds, read from the microsecond histogram. `compare` pairs
//! results of the same (workload, clients, conns) across labels: one row per configuration, one
//! column group per label, and for each label but the baseline the throughput ratio
//! label/baseline.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::BenchError;
use crate::runner::Measurement;
use crate::workload::Plan;

/// One run's result, as written by `--json` and read by `compare`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    pub label: String,
    pub workload: String,
    pub clients: usize,
    pub conns: usize,
    pub key_size: usize,
    pub val_size: usize,
    /// Measured seconds: end of the warmup to the last reply.
    pub duration_s: f64,
    /// Requests that got a reply (errors excluded).
    pub ops: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// When the result was made, UTC, RFC 3339.
    pub date: String,
    /// Distinct keys the requests went to.
    #[serde(default)]
    pub key_space: u64,
    #[serde(default)]
    pub key_order: String,
    /// `txn`: compare-and-swaps whose compare failed (another client wrote the key first).
    #[serde(default)]
    pub txn_conflicts: u64,
    /// `range`: reads that returned no key.
    #[serde(default)]
    pub range_empty: u64,
}

impl BenchResult {
    pub fn new(label: String, plan: &Plan, key_space: u64, m: &Measurement) -> Self {
        let secs = m.elapsed.as_secs_f64();
        let ms = |q: f64| {
            if m.latency_us.is_empty() {
                0.0
            } else {
                m.latency_us.value_at_quantile(q) as f64 / 1000.0
            }
        };
        BenchResult {
            label,
            workload: plan.workload.name().to_string(),
            clients: plan.clients,
            conns: plan.conns,
            key_size: plan.key_size,
            val_size: plan.val_size,
            duration_s: round(secs, 3),
            ops: m.ops,
            errors: m.errors,
            ops_per_sec: if secs > 0.0 {
                round(m.ops as f64 / secs, 1)
            } else {
                0.0
            },
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: m.latency_us.max() as f64 / 1000.0,
            date: now_rfc3339(),
            key_space,
            key_order: plan.key_order.name().to_string(),
            txn_conflicts: m.txn_conflicts,
            range_empty: m.range_empty,
        }
    }

    /// The human summary printed to stdout.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} on {} (clients {}, conns {}; key {} B, value {} B; {} keys, {} order)\n",
            self.workload,
            self.label,
            self.clients,
            self.conns,
            self.key_size,
            self.val_size,
            self.key_space,
            self.key_order
        );
        let _ = writeln!(
            s,
            "  {:.0} ops/s: {} ops, {} errors in {:.2} s",
            self.ops_per_sec, self.ops, self.errors, self.duration_s
        );
        let _ = writeln!(
            s,
            "  latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms
        );
        if self.txn_conflicts > 0 {
            let _ = writeln!(
                s,
                "  txn compare failed (conflicts): {}",
                self.txn_conflicts
            );
        }
        if self.range_empty > 0 {
            let _ = writeln!(s, "  range returned no key: {}", self.range_empty);
        }
        s
    }

    pub fn write_json(&self, path: &Path) -> Result<(), BenchError> {
        let io = |source| BenchError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut text = serde_json::to_string_pretty(self).expect("a result serializes");
        text.push('\n');
        std::fs::write(path, text).map_err(io)
    }

    pub fn read_json(path: &Path) -> Result<Self, BenchError> {
        let text = std::fs::read_to_string(path).map_err(|source| BenchError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| BenchError::Json {
            path: path.to_path_buf(),
            source,
        })
    }

    fn config(&self) -> (String, usize, usize) {
        (self.workload.clone(), self.clients, self.conns)
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&Rfc3339).unwrap_or_else(|_| now.to_string())
}

/// The Markdown table comparing `results`; `baseline` is the label ratios divide by.
///
/// Returns the table and warnings (e.g. a configuration measured twice for one label).
pub fn compare_table(results: &[BenchResult], baseline: Option<&str>) -> (String, Vec<String>) {
    let mut warnings = Vec::new();
    let labels = ordered_labels(results);
    let base = pick_baseline(&labels, baseline, &mut warnings);
    let others: Vec<&str> = labels.iter().copied().filter(|l| *l != base).collect();
    // The baseline's columns come last: "concord ops/s | etcd ops/s | ratio concord/etcd".
    let labels: Vec<&str> = others.iter().copied().chain(Some(base)).collect();

    // (configuration, label) -> result; configurations in order of first appearance.
    let mut configs = Vec::new();
    let mut cells: HashMap<((String, usize, usize), &str), &BenchResult> = HashMap::new();
    for r in results {
        let config = r.config();
        if !configs.contains(&config) {
            configs.push(config.clone());
        }
        if cells.insert((config, r.label.as_str()), r).is_some() {
            warnings.push(format!(
                "{} {} clients/{} conns measured twice for {}: using the later file",
                r.workload, r.clients, r.conns, r.label
            ));
        }
    }

    let mut header = vec!["workload".to_string(), "clients/conns".to_string()];
    header.extend(labels.iter().map(|l| format!("{l} ops/s")));
    header.extend(others.iter().map(|l| format!("ratio {l}/{base}")));
    header.extend(labels.iter().map(|l| format!("{l} p50/p99 ms")));
    let mut table = row(&header);
    table.push_str(&row(&vec!["---".to_string(); header.len()]));
    for config in &configs {
        let cell = |label: &str| cells.get(&(config.clone(), label)).copied();
        let mut line = vec![config.0.clone(), format!("{}/{}", config.1, config.2)];
        line.extend(
            labels
                .iter()
                .map(|l| cell(l).map_or("-".into(), throughput)),
        );
        line.extend(others.iter().map(|l| match (cell(l), cell(base)) {
            (Some(a), Some(b)) if b.ops_per_sec > 0.0 => {
                format!("{:.2}x", a.ops_per_sec / b.ops_per_sec)
            }
            _ => "-".into(),
        }));
        line.extend(
            labels.iter().map(|l| {
                cell(l).map_or("-".into(), |r| format!("{:.2} / {:.2}", r.p50_ms, r.p99_ms))
            }),
        );
        table.push_str(&row(&line));
    }
    (table, warnings)
}

fn row(cells: &[String]) -> String {
    format!("| {} |\n", cells.join(" | "))
}

/// Throughput cell: ops/s, plus the error count when there were errors.
fn throughput(r: &BenchResult) -> String {
    if r.errors > 0 {
        format!("{:.0} ({} errors)", r.ops_per_sec, r.errors)
    } else {
        format!("{:.0}", r.ops_per_sec)
    }
}

fn ordered_labels(results: &[BenchResult]) -> Vec<&str> {
    let mut labels: Vec<&str> = Vec::new();
    for r in results {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
    }
    labels
}

/// `--baseline` if given and present; else the label "etcd"; else the one label containing "etcd";
/// else the last label.
fn pick_baseline<'a>(
    labels: &[&'a str],
    wanted: Option<&str>,
    warnings: &mut Vec<String>,
) -> &'a str {
    if let Some(w) = wanted {
        if let Some(l) = labels.iter().find(|l| **l == w) {
            return l;
        }
        warnings.push(format!("baseline {w:?} is not among the labels {labels:?}"));
    }
    if let Some(l) = labels.iter().find(|l| l.eq_ignore_ascii_case("etcd")) {
        return l;
    }
    let etcd: Vec<&str> = labels
        .iter()
        .copied()
        .filter(|l| l.to_ascii_lowercase().contains("etcd"))
        .collect();
    match etcd.as_slice() {
        [one] => one,
        _ => labels.last().copied().unwrap_or(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(label: &str, workload: &str, ops_per_sec: f64) -> BenchResult {
        BenchResult {
            label: label.into(),
            workload: workload.into(),
            clients: 256,
            conns: 16,
            key_size: 8,
            val_size: 256,
            duration_s: 5.0,
            ops: (ops_per_sec * 5.0) as u64,
            errors: 0,
            ops_per_sec,
            p50_ms: 1.5,
            p90_ms: 2.0,
            p99_ms: 3.25,
            p999_ms: 4.0,
            max_ms: 5.0,
            date: "2025-01-01T00:00:00Z".into(),
            key_space: 100,
            key_order: "random".into(),
            txn_conflicts: 0,
            range_empty: 0,
        }
    }

    #[test]
    fn pairs_by_config_and_divides_by_etcd() {
        let results = [
            result("etcd", "put", 10_000.0),
            result("concord", "put", 5_000.0),
            result("concord", "txn", 1_000.0),
        ];
        let (table, warnings) = compare_table(&results, None);
        assert!(warnings.is_empty());
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "| workload | clients/conns | concord ops/s | etcd ops/s | ratio concord/etcd | concord p50/p99 ms | etcd p50/p99 ms |"
        );
        assert_eq!(
            lines[2],
            "| put | 256/16 | 5000 | 10000 | 0.50x | 1.50 / 3.25 | 1.50 / 3.25 |"
        );
        assert_eq!(
            lines[3],
            "| txn | 256/16 | 1000 | - | - | 1.50 / 3.25 | - |"
        );
    }

    #[test]
    fn json_round_trips() {
        let r = result("etcd", "put", 1.0);
        let back: BenchResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.label, "etcd");
        assert_eq!(back.p99_ms, 3.25);
    }
}
