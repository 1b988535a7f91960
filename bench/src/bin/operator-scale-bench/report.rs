//! What the run measured: the scraped reconcile histogram, summaries, the table.

use serde_json::json;

use crate::Args;

#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// (upper bound, cumulative count).
    pub(crate) buckets: Vec<(f64, f64)>,
    pub(crate) count: f64,
    pub(crate) sum: f64,
}

impl Histogram {
    /// Prometheus' `histogram_quantile`: linear within the bucket holding the rank.
    pub(crate) fn quantile(&self, q: f64) -> f64 {
        if self.count <= 0.0 {
            return 0.0;
        }
        let rank = q * self.count;
        let mut prev = (0.0, 0.0);
        for &(le, c) in &self.buckets {
            if c >= rank {
                if le.is_infinite() {
                    return prev.0;
                }
                let span = c - prev.1;
                return if span > 0.0 {
                    prev.0 + (le - prev.0) * (rank - prev.1) / span
                } else {
                    le
                };
            }
            prev = (le, c);
        }
        prev.0
    }
}

pub(crate) fn parse_histogram(text: &str, name: &str) -> Histogram {
    let mut h = Histogram::default();
    let bucket = format!("{name}_bucket{{le=\"");
    for line in text.lines() {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        if let Some(le) = key.strip_prefix(&bucket) {
            let le = le.trim_end_matches("\"}");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            h.buckets.push((le, v));
        } else if key == format!("{name}_count") {
            h.count = v;
        } else if key == format!("{name}_sum") {
            h.sum = v;
        }
    }
    h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    h
}

pub(crate) fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

pub(crate) fn summary(mut v: Vec<f64>) -> serde_json::Value {
    if v.is_empty() {
        return json!({"n": 0});
    }
    v.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    };
    json!({"n": v.len(), "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": v[v.len() - 1]})
}

pub(crate) fn print_table(args: &Args, r: &serde_json::Value) {
    let f = |p: &str| {
        r.pointer(p)
            .map(|v| match v.as_f64() {
                Some(x) => format!("{x:.1}"),
                None => v.to_string(),
            })
            .unwrap_or_else(|| "-".into())
    };
    let mib = |p: &str| {
        r.pointer(p)
            .and_then(serde_json::Value::as_f64)
            .map(|k| format!("{:.1} MiB", k / 1024.0))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "\n### operator scale bench: {} requests over {} nodes ({}% migrations, agent delay {} ms)\n",
        args.requests, args.nodes, args.migrate_percent, args.agent_delay_ms
    );
    println!("| metric | value |\n|---|---|");
    let rows = [
        (
            "reconcile p50 / p99 (ms, /metrics histogram)",
            format!("{} / {}", f("/reconcile/p50_ms"), f("/reconcile/p99_ms")),
        ),
        (
            "reconciles (count, mean ms, errors)",
            format!(
                "{}, {}, {}",
                f("/reconcile/count"),
                f("/reconcile/mean_ms"),
                f("/reconcile/errors")
            ),
        ),
        (
            "create → Checkpointing p50 / p99 (ms)",
            format!(
                "{} / {}",
                f("/request_latency_ms/create_to_checkpointing/p50"),
                f("/request_latency_ms/create_to_checkpointing/p99")
            ),
        ),
        (
            "agent's last write → request terminal p50 / p99 (ms)",
            format!(
                "{} / {}",
                f("/request_latency_ms/agent_done_to_terminal/p50"),
                f("/request_latency_ms/agent_done_to_terminal/p99")
            ),
        ),
        (
            "create → terminal p50 / p99 (ms)",
            format!(
                "{} / {}",
                f("/request_latency_ms/create_to_terminal/p50"),
                f("/request_latency_ms/create_to_terminal/p99")
            ),
        ),
        (
            "time to all terminal (s, from the first create)",
            format!(
                "{} ({} of {} terminal)",
                f("/time_to_all_terminal_s"),
                f("/terminal"),
                args.requests
            ),
        ),
        ("final phases", f("/final_phases")),
        (
            "requests created in (s)",
            f("/requests_created_s").to_string(),
        ),
        (
            "operator RSS idle / peak (VmHWM) / end",
            format!(
                "{} / {} / {}",
                mib("/operator_rss_kib/idle_after_sync"),
                mib("/operator_rss_kib/vm_hwm"),
                mib("/operator_rss_kib/end")
            ),
        ),
        (
            "targets: p99 < 1 s, RSS < 200 MiB",
            format!(
                "{}, {}",
                f("/targets/reconcile_p99_under_1s"),
                f("/targets/rss_under_200_mib")
            ),
        ),
        (
            "setup: control plane / pods Running (s)",
            format!("{} / {}", f("/cluster_up_s"), f("/pods_running_s")),
        ),
    ];
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}
