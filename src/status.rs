//! `hosepipe status`: a table of the running daemon's streams, from its `/status` endpoint.

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct StreamRow {
    pub name: String,
    pub state: String,
    /// Where it delivers (an older daemon does not say).
    #[serde(default)]
    pub destination: String,
    pub buffered_bytes: u64,
    pub buffered_records: u64,
    pub in_flight_records: u64,
    pub oldest_undelivered_age_seconds: Option<f64>,
    pub delivered_records: u64,
    pub failed_attempts: u64,
    pub spool_bytes: u64,
    pub spool_segments: u64,
    /// Accepted and not yet settled, on disk or in the pipeline.
    #[serde(default)]
    pub backlog_records: u64,
    /// On disk only, not yet read into the pipeline.
    #[serde(default)]
    pub unread_records: u64,
    /// Counters since the daemon started (`hosepipe top` makes rates of them).
    #[serde(default)]
    pub incoming_records: u64,
    #[serde(default)]
    pub incoming_bytes: u64,
    #[serde(default)]
    pub throttled_records: u64,
    #[serde(default)]
    pub error_output_records: u64,
    /// In a fleet: handed to this node and not yet acknowledged.
    #[serde(default)]
    pub held_records: u64,
    /// In a fleet: messages (each a put's records) handed to any node and not yet
    /// acknowledged.
    #[serde(default)]
    pub ack_pending_messages: u64,
    /// In a fleet: messages in JetStream not yet handed to any node.
    #[serde(default)]
    pub pending_messages: u64,
    /// Delivery blocked by a failure retrying cannot fix.
    #[serde(default)]
    pub blocked: Option<BlockedRow>,
}

#[derive(Debug, Deserialize)]
pub struct BlockedRow {
    pub reason: String,
    pub advice: String,
    pub message: String,
    pub since_ms: i64,
    pub attempts: u64,
}

#[derive(Debug, Deserialize)]
pub struct Status {
    /// This node's name in a fleet.
    #[serde(default)]
    pub node: Option<String>,
    pub streams: Vec<StreamRow>,
    pub spool_bytes: u64,
    #[serde(default)]
    pub spool_max_bytes: u64,
    #[serde(default)]
    pub memory_used_bytes: u64,
    #[serde(default)]
    pub memory_budget_bytes: u64,
}

pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Renders the table.
pub fn render(status: &Status) -> String {
    let header = [
        "STREAM",
        "STATE",
        "DESTINATION",
        "BUFFERED",
        "RECORDS",
        "IN FLIGHT",
        "OLDEST AGE",
        "DELIVERED",
        "FAILED TRIES",
        "BACKLOG (ON DISK ONLY)",
        "SPOOL",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for s in &status.streams {
        rows.push(vec![
            s.name.clone(),
            s.state.clone(),
            s.destination.clone(),
            human(s.buffered_bytes),
            s.buffered_records.to_string(),
            s.in_flight_records.to_string(),
            s.oldest_undelivered_age_seconds
                .map(|a| format!("{a:.1}s"))
                .unwrap_or_else(|| "-".into()),
            s.delivered_records.to_string(),
            s.failed_attempts.to_string(),
            format!("{} ({})", s.backlog_records, s.unread_records),
            format!("{} ({} seg)", human(s.spool_bytes), s.spool_segments),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for s in &status.streams {
        if let Some(b) = &s.blocked {
            let since = chrono::DateTime::from_timestamp_millis(b.since_ms)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                .unwrap_or_default();
            out.push_str(&format!(
                "{}: delivery BLOCKED ({}) since {since}, {} failed attempts; records wait in the spool. To fix: {}. Last error: {}\n",
                s.name, b.reason, b.attempts, b.advice, b.message
            ));
        }
    }
    match &status.node {
        None => out.push_str(&format!(
            "spool {} on disk of {}; memory {} in use of {}\n",
            human(status.spool_bytes),
            human(status.spool_max_bytes),
            human(status.memory_used_bytes),
            human(status.memory_budget_bytes)
        )),
        Some(node) => {
            out.push_str(&format!(
                "node {node} of a fleet (records in JetStream); memory {} in use of {}\n",
                human(status.memory_used_bytes),
                human(status.memory_budget_bytes)
            ));
            for s in &status.streams {
                out.push_str(&format!(
                    "  {}: {} records held by this node; messages: {} held by the fleet, {} waiting in JetStream\n",
                    s.name, s.held_records, s.ack_pending_messages, s.pending_messages
                ));
            }
        }
    }
    out
}

/// Fetches `/status` from `endpoint` (with `token` as the bearer token when the daemon has
/// `[auth] metrics_token`; an `https://` daemon's CA from `AWS_CA_BUNDLE`).
pub async fn run(endpoint: &str, token: Option<&str>) -> anyhow::Result<String> {
    let url = format!("{}/status", endpoint.trim_end_matches('/'));
    crate::aws_client::trust_ca_bundle(None)?;
    let mut request = crate::aws_client::client_builder().build()?.get(&url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let status: Status = request
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?
        .error_for_status()?
        .json()
        .await
        .context("the daemon's answer is not a status")?;
    Ok(render(&status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_row_per_stream() {
        let status: Status = serde_json::from_value(serde_json::json!({
            "streams": [{"name": "clicks", "state": "ACTIVE",
                "destination": "iceberg lake: web.clicks", "buffered_bytes": 2048,
                "buffered_records": 2, "in_flight_records": 0,
                "oldest_undelivered_age_seconds": 1.25, "delivered_records": 10,
                "failed_attempts": 0, "spool_bytes": 4096, "spool_segments": 1,
                "backlog_records": 7, "unread_records": 5}],
            "spool_bytes": 4096, "spool_max_bytes": 1 << 30, "memory_used_bytes": 2048,
            "memory_budget_bytes": 128 << 20
        }))
        .unwrap();
        let table = render(&status);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("STREAM"));
        assert!(
            lines[1].starts_with("clicks  ACTIVE  iceberg lake: web.clicks  2.0 KiB"),
            "{table}"
        );
        assert!(lines[1].contains("1.2s") || lines[1].contains("1.3s"));
        assert!(lines[1].contains("7 (5)"), "{table}");
        assert!(lines[2].contains("of 1.0 GiB") && lines[2].contains("of 128.0 MiB"));
    }

    #[test]
    fn a_fleet_node_names_itself_and_its_share_of_the_log() {
        let status: Status = serde_json::from_value(serde_json::json!({
            "node": "node-2", "log": "jetstream",
            "streams": [{"name": "clicks", "state": "ACTIVE", "buffered_bytes": 0,
                "buffered_records": 0, "in_flight_records": 0,
                "oldest_undelivered_age_seconds": null, "delivered_records": 10,
                "failed_attempts": 0, "spool_bytes": 0, "spool_segments": 0,
                "backlog_records": 5, "unread_records": 0, "held_records": 5,
                "ack_pending_messages": 12, "pending_messages": 4}],
            "spool_bytes": 0, "memory_used_bytes": 0, "memory_budget_bytes": 128 << 20
        }))
        .unwrap();
        let table = render(&status);
        assert!(table.contains("node node-2 of a fleet"), "{table}");
        assert!(
            table.contains(
                "clicks: 5 records held by this node; messages: 12 held by the fleet, 4 waiting in JetStream"
            ),
            "{table}"
        );
    }
}
