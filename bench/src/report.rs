//! Results: the JSON record of one run, its human summary, and the Markdown comparison table.
//!
//! Latencies are reported in milliseconds, read from the microsecond histogram. `compare` pairs
//! results of the same (workload, parameters, clients, conns) across labels: one row per
//! configuration, one column group per label, and for each label but the baseline the throughput
//! ratio label/baseline. `put`, `range` and `txn` share one table; `watch-fanout`,
//! `lease-keepalive` and `lease-expiry-storm` each get their own, with their own columns, since
//! their "ops" are different things (events delivered, renewals, puts during a storm).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::BenchError;
use crate::keepalive::{self, KeepAliveStats};
use crate::runner::Measurement;
use crate::storm::{self, StormStats};
use crate::watch::{self, WatchStats};
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
    /// The workload's own parameters, e.g. `1000 watchers / 10 streams / 200 puts/s`; part of
    /// the configuration `compare` pairs results by. Empty for put, range and txn.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub params: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<KeepAliveStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm: Option<StormStats>,
}

impl BenchResult {
    pub fn new(label: String, plan: &Plan, key_space: u64, m: &Measurement) -> Self {
        let mut r = BenchResult::measured(
            label,
            plan,
            plan.workload.name(),
            key_space,
            m.elapsed,
            m.ops,
            m.errors,
            &m.latency_us,
        );
        r.txn_conflicts = m.txn_conflicts;
        r.range_empty = m.range_empty;
        r
    }

    /// A result of `ops` successful operations in `elapsed`, with their latencies in µs.
    #[allow(clippy::too_many_arguments)]
    pub fn measured(
        label: String,
        plan: &Plan,
        workload: &str,
        key_space: u64,
        elapsed: Duration,
        ops: u64,
        errors: u64,
        latency_us: &Histogram<u64>,
    ) -> Self {
        let secs = elapsed.as_secs_f64();
        BenchResult {
            label,
            workload: workload.to_string(),
            clients: plan.clients,
            conns: plan.conns,
            key_size: plan.key_size,
            val_size: plan.val_size,
            duration_s: round(secs, 3),
            ops,
            errors,
            ops_per_sec: if secs > 0.0 {
                round(ops as f64 / secs, 1)
            } else {
                0.0
            },
            p50_ms: quantile_ms(latency_us, 0.5),
            p90_ms: quantile_ms(latency_us, 0.9),
            p99_ms: quantile_ms(latency_us, 0.99),
            p999_ms: quantile_ms(latency_us, 0.999),
            max_ms: latency_us.max() as f64 / 1000.0,
            date: now_rfc3339(),
            key_space,
            key_order: plan.key_order.name().to_string(),
            txn_conflicts: 0,
            range_empty: 0,
            params: String::new(),
            watch: None,
            keepalive: None,
            storm: None,
        }
    }

    /// What `ops` counts, for the summary.
    fn unit(&self) -> &'static str {
        if self.watch.is_some() {
            "events delivered"
        } else if self.keepalive.is_some() {
            "renewals"
        } else if self.storm.is_some() {
            "puts"
        } else {
            "ops"
        }
    }

    /// The human summary printed to stdout.
    pub fn summary(&self) -> String {
        let params = if self.params.is_empty() {
            String::new()
        } else {
            format!("{}; ", self.params)
        };
        let mut s = if self.keepalive.is_some() {
            format!(
                "{} on {} ({params}clients {}, conns {})\n",
                self.workload, self.label, self.clients, self.conns
            )
        } else {
            format!(
                "{} on {} ({params}clients {}, conns {}; key {} B, value {} B; {} keys, {} order)\n",
                self.workload,
                self.label,
                self.clients,
                self.conns,
                self.key_size,
                self.val_size,
                self.key_space,
                self.key_order
            )
        };
        let unit = self.unit();
        let _ = writeln!(
            s,
            "  {:.0} {unit}/s: {} {unit}, {} errors in {:.2} s",
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
        if let Some(w) = &self.watch {
            watch::summary(w, self.clients, &mut s);
        }
        if let Some(k) = &self.keepalive {
            keepalive::summary(k, &mut s);
        }
        if let Some(st) = &self.storm {
            storm::summary(st, &mut s);
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

    fn config(&self) -> Config {
        (
            self.workload.clone(),
            self.params.clone(),
            self.clients,
            self.conns,
        )
    }
}

/// What `compare` pairs results by: (workload, params, clients, conns).
type Config = (String, String, usize, usize);

pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// A duration in whole microseconds (saturating), as histograms record it.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// An empty latency histogram in microseconds, 3 significant digits, that grows as needed (a
/// fixed range up to an hour would take 190 KiB, per task).
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant digits are valid")
}

/// Records `d` in a [`latency_histogram`] (at least 1 µs). `record` grows the histogram, where
/// `saturating_record` would clamp to its current maximum.
pub fn record_latency(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record(micros(d).max(1));
}

/// The quantile `q` of a microsecond histogram, in milliseconds (0 when empty).
pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&Rfc3339).unwrap_or_else(|_| now.to_string())
}

/// The Markdown tables comparing `results`; `baseline` is the label ratios divide by.
///
/// One table for put, range and txn, then one per other workload kind present, each under a
/// line that says what its columns mean. Returns the text and warnings (e.g. a configuration
/// measured twice for one label).
pub fn compare_table(results: &[BenchResult], baseline: Option<&str>) -> (String, Vec<String>) {
    let mut warnings = Vec::new();
    let base = pick_baseline(&ordered_labels(results), baseline, &mut warnings);
    let mut out = String::new();
    for spec in TABLES {
        let rows: Vec<&BenchResult> = results
            .iter()
            .filter(|r| table_of(r).workload == spec.workload)
            .collect();
        if rows.is_empty() {
            continue;
        }
        // Only the labels measured in this table get columns; the baseline is the same in every
        // table that has it.
        let labels = ordered_labels(rows.iter().copied());
        let base = if labels.contains(&base) {
            base
        } else {
            pick_baseline(&labels, None, &mut Vec::new())
        };
        let others: Vec<&str> = labels.iter().copied().filter(|l| *l != base).collect();
        // The baseline's columns come last: "concord ops/s | etcd ops/s | ratio concord/etcd".
        let labels: Vec<&str> = others.iter().copied().chain(Some(base)).collect();
        let columns = Columns {
            labels: &labels,
            others: &others,
            base,
        };
        if !out.is_empty() {
            out.push('\n');
        }
        if let Some(heading) = spec.heading {
            out.push_str(heading);
            out.push_str("\n\n");
        }
        out.push_str(&table(spec, &rows, &columns, &mut warnings));
    }
    (out, warnings)
}

/// The labels in column order (baseline last), and the baseline.
struct Columns<'a> {
    labels: &'a [&'a str],
    others: &'a [&'a str],
    base: &'a str,
}

/// One kind of table: which results it holds and its columns. Every table starts with the
/// workload, the parameters (if any), clients/conns, then `main` per label (the throughput and
/// errors), the ratio of `ops_per_sec` to the baseline's, then each of `rest` per label.
struct TableSpec {
    /// The workload name the table holds; `None`: every workload no other table claims.
    workload: Option<&'static str>,
    heading: Option<&'static str>,
    /// Title of the parameters column, if the workload has parameters.
    params: Option<&'static str>,
    main: &'static str,
    rest: &'static [(&'static str, Cell)],
}

/// Renders one label's cell of a column.
type Cell = fn(&BenchResult) -> String;

const TABLES: &[TableSpec] = &[
    TableSpec {
        workload: None,
        heading: None,
        params: None,
        main: "ops/s",
        rest: &[("p50/p99 ms", |r| {
            format!("{:.2} / {:.2}", r.p50_ms, r.p99_ms)
        })],
    },
    TableSpec {
        workload: Some("watch-fanout"),
        heading: Some(
            "watch-fanout: events/s = watch events delivered per second (writes + drain); \
             puts/s = achieved write rate; delivered = share of puts × watchers received \
             (then duplicates, out-of-order, unexpected if any); drain = seconds from the last \
             put until every watcher saw it; latency = put sent to event received; \
             B/watcher = server RSS growth per idle watcher.",
        ),
        params: Some("watchers / streams / rate"),
        main: "events/s",
        rest: &[
            ("puts/s", |r| {
                watch_cell(r, |w| format!("{:.0}", w.put_rate))
            }),
            ("delivered", |r| watch_cell(r, delivered)),
            ("drain s", |r| {
                watch_cell(r, |w| {
                    let late = if w.drained { "" } else { " (timed out)" };
                    format!("{:.2}{late}", w.drain_s)
                })
            }),
            ("latency p50/p99/max ms", p50_p99_max),
            ("B/watcher", |r| {
                watch_cell(r, |w| {
                    w.server_bytes_per_watcher
                        .map_or("-".into(), |b| format!("{b:.0}"))
                })
            }),
        ],
    },
    TableSpec {
        workload: Some("lease-keepalive"),
        heading: Some(
            "lease-keepalive: renewals/s = LeaseKeepAlive round trips per second; grants/s = \
             LeaseGrant throughput before; alive = granted leases still listed at the end.",
        ),
        params: Some("leases / ttl"),
        main: "renewals/s",
        rest: &[
            ("renew p50/p99 ms", |r| {
                format!("{:.2} / {:.2}", r.p50_ms, r.p99_ms)
            }),
            ("grants/s", |r| {
                keepalive_cell(r, |k| format!("{:.0}", k.grants_per_sec))
            }),
            ("alive", |r| {
                keepalive_cell(r, |k| {
                    let listed = k.alive_listed.map_or("?".into(), |n| n.to_string());
                    format!("{listed}/{}", k.granted)
                })
            }),
        ],
    },
    TableSpec {
        workload: Some("lease-expiry-storm"),
        heading: Some(
            "lease-expiry-storm: puts/s = the whole run; before / storm = puts sent before the \
             first leased key disappeared / from then to the end; expiry = seconds from the first \
             leased key gone to the last.",
        ),
        params: Some("leases / ttl"),
        main: "puts/s",
        rest: &[
            ("puts/s before / storm", |r| {
                storm_cell(r, |w| format!("{:.0}", w.ops_per_sec))
            }),
            ("p99 ms before / storm", |r| {
                storm_cell(r, |w| format!("{:.2}", w.p99_ms))
            }),
            ("max ms before / storm", |r| {
                storm_cell(r, |w| format!("{:.1}", w.max_ms))
            }),
            ("expiry s", |r| {
                r.storm
                    .as_ref()
                    .map_or("-".into(), |st| match (st.first_gone_s, st.all_gone_s) {
                        (Some(a), Some(b)) => format!("{:.1}", b - a),
                        _ => format!("not done ({} left)", st.keys_left),
                    })
            }),
        ],
    },
];

/// The table `r` belongs in.
fn table_of(r: &BenchResult) -> &'static TableSpec {
    TABLES
        .iter()
        .find(|t| t.workload == Some(r.workload.as_str()))
        .unwrap_or(&TABLES[0])
}

/// One table of `rows` (results of one kind).
fn table(
    spec: &TableSpec,
    rows: &[&BenchResult],
    columns: &Columns,
    warnings: &mut Vec<String>,
) -> String {
    let Columns {
        labels,
        others,
        base,
    } = *columns;
    // (configuration, label) -> result; configurations in order of first appearance.
    let mut configs = Vec::new();
    let mut cells: HashMap<(Config, &str), &BenchResult> = HashMap::new();
    for r in rows {
        let config = r.config();
        if !configs.contains(&config) {
            configs.push(config.clone());
        }
        if cells.insert((config, r.label.as_str()), r).is_some() {
            let params = if r.params.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.params)
            };
            warnings.push(format!(
                "{}{params} {} clients/{} conns measured twice for {}: using the later file",
                r.workload, r.clients, r.conns, r.label
            ));
        }
    }

    let mut header = vec!["workload".to_string()];
    header.extend(spec.params.map(str::to_string));
    header.push("clients/conns".to_string());
    header.extend(labels.iter().map(|l| format!("{l} {}", spec.main)));
    header.extend(others.iter().map(|l| format!("ratio {l}/{base}")));
    for (title, _) in spec.rest {
        header.extend(labels.iter().map(|l| format!("{l} {title}")));
    }
    let mut table = row(&header);
    table.push_str(&row(&vec!["---".to_string(); header.len()]));
    for config in &configs {
        let cell = |label: &str| cells.get(&(config.clone(), label)).copied();
        let mut line = vec![config.0.clone()];
        if spec.params.is_some() {
            line.push(config.1.clone());
        }
        line.push(format!("{}/{}", config.2, config.3));
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
        for (_, render) in spec.rest {
            line.extend(labels.iter().map(|l| cell(l).map_or("-".into(), render)));
        }
        table.push_str(&row(&line));
    }
    table
}

fn p50_p99_max(r: &BenchResult) -> String {
    format!("{:.2} / {:.2} / {:.1}", r.p50_ms, r.p99_ms, r.max_ms)
}

fn watch_cell(r: &BenchResult, f: impl Fn(&WatchStats) -> String) -> String {
    r.watch.as_ref().map_or("-".into(), f)
}

fn keepalive_cell(r: &BenchResult, f: impl Fn(&KeepAliveStats) -> String) -> String {
    r.keepalive.as_ref().map_or("-".into(), f)
}

/// "before / storm": `f` of the storm's two windows ("-" for a storm that never came).
fn storm_cell(r: &BenchResult, f: impl Fn(&storm::Window) -> String) -> String {
    match &r.storm {
        Some(st) => format!(
            "{} / {}",
            f(&st.before),
            st.storm.as_ref().map_or("-".into(), &f)
        ),
        None => "-".into(),
    }
}

/// "99.50%", with the anomalies after it if there were any.
fn delivered(w: &WatchStats) -> String {
    let mut cell = if w.events_delivered == w.events_expected {
        "100%".to_string()
    } else {
        // Rounded down, so that a single missing event never shows as 100.00%.
        let pct = w.events_delivered as f64 * 100.0 / w.events_expected.max(1) as f64;
        format!("{:.2}%", (pct * 100.0).floor() / 100.0)
    };
    if w.duplicates + w.out_of_order + w.unexpected > 0 {
        cell.push_str(&format!(
            " (dup {}, ooo {}, unexp {})",
            w.duplicates, w.out_of_order, w.unexpected
        ));
    }
    cell
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

fn ordered_labels<'a>(results: impl IntoIterator<Item = &'a BenchResult>) -> Vec<&'a str> {
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
            params: String::new(),
            watch: None,
            keepalive: None,
            storm: None,
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

    fn watch_result(label: &str, delivered: u64) -> BenchResult {
        let mut r = result(label, "watch-fanout", 1000.0);
        r.params = "10 watchers / 2 streams / 100 puts/s".into();
        r.watch = Some(WatchStats {
            watchers: 10,
            streams: 2,
            created: 10,
            target_rate: 100.0,
            puts: 100,
            puts_measured: 80,
            put_rate: 99.5,
            put_errors: 0,
            put_p50_ms: 1.0,
            put_p99_ms: 2.0,
            put_mean_ms: 1.2,
            events_expected: 1000,
            events_delivered: delivered,
            events_received: delivered + 1,
            missing: 1000 - delivered,
            duplicates: 1,
            out_of_order: 0,
            unexpected: 0,
            canceled: 0,
            setup_s: 0.1,
            drain_s: 0.25,
            drained: delivered == 1000,
            server_rss_before_kib: Some(1000),
            server_rss_after_kib: Some(2000),
            server_bytes_per_watcher: Some(102_400.0),
            client_cpu_cores: Some(0.5),
            server_cpu_cores: None,
        });
        r
    }

    #[test]
    fn watch_results_get_their_own_table() {
        let results = [
            result("etcd", "put", 10_000.0),
            watch_result("concord", 999),
            watch_result("etcd", 1000),
        ];
        let (text, warnings) = compare_table(&results, None);
        assert!(warnings.is_empty());
        let lines: Vec<&str> = text.lines().collect();
        // The put table first, unchanged, then a blank line, the heading, a blank line, the table.
        assert_eq!(
            lines[0],
            "| workload | clients/conns | etcd ops/s | etcd p50/p99 ms |"
        );
        assert_eq!(lines[3], "");
        assert!(lines[4].starts_with("watch-fanout: events/s = "));
        assert!(lines[6].starts_with(
            "| workload | watchers / streams / rate | clients/conns | concord events/s | etcd \
             events/s | ratio concord/etcd | concord puts/s | etcd puts/s | concord delivered |"
        ));
        assert_eq!(
            lines[8],
            "| watch-fanout | 10 watchers / 2 streams / 100 puts/s | 256/16 | 1000 | 1000 | 1.00x \
             | 100 | 100 | 99.90% (dup 1, ooo 0, unexp 0) | 100% (dup 1, ooo 0, unexp 0) \
             | 0.25 (timed out) | 0.25 | 1.50 / 3.25 / 5.0 | 1.50 / 3.25 / 5.0 | 102400 | 102400 |"
        );
    }

    #[test]
    fn old_result_files_still_read() {
        // A file written before the watch and lease workloads existed.
        let old = r#"{"label":"etcd","workload":"put","clients":1,"conns":1,"key_size":8,
            "val_size":256,"duration_s":1.0,"ops":10,"errors":0,"ops_per_sec":10.0,"p50_ms":1.0,
            "p90_ms":1.0,"p99_ms":1.0,"p999_ms":1.0,"max_ms":1.0,"date":"2025-01-01T00:00:00Z"}"#;
        let r: BenchResult = serde_json::from_str(old).unwrap();
        assert!(r.params.is_empty() && r.watch.is_none() && r.storm.is_none());
        // And results of put, range and txn are written without the new fields.
        let text = serde_json::to_string(&result("etcd", "put", 1.0)).unwrap();
        assert!(!text.contains("params") && !text.contains("watch"));
    }

    #[test]
    fn json_round_trips() {
        let r = result("etcd", "put", 1.0);
        let back: BenchResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.label, "etcd");
        assert_eq!(back.p99_ms, 3.25);
    }
}
