//! `hosepipe top`: a live terminal view of a running daemon, refreshed from its `/status`
//! endpoint — per stream incoming and delivered rates, freshness, backlog, throttling and
//! errors — sortable, and patient with a daemon that goes away.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row, Table};

use crate::status::{Status, StreamRow};

#[derive(clap::Args, Debug)]
pub struct TopArgs {
    /// The daemon's address.
    #[arg(long, default_value = "http://127.0.0.1:4573")]
    pub endpoint: String,
    /// The daemon's `[auth] metrics_token` (default: HOSEPIPE_METRICS_TOKEN).
    #[arg(long, env = "HOSEPIPE_METRICS_TOKEN")]
    pub token: Option<String>,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
}

/// The columns, in order; the view sorts by one of them.
pub const COLUMNS: [&str; 9] = [
    "STREAM",
    "DESTINATION",
    "IN REC/S",
    "IN B/S",
    "OUT REC/S",
    "FRESHNESS",
    "BACKLOG",
    "THROTTLED/S",
    "ERRORS",
];

/// One stream's line: rates over the last interval, levels now.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamLine {
    pub name: String,
    pub destination: String,
    pub in_records: f64,
    pub in_bytes: f64,
    pub out_records: f64,
    pub freshness: Option<f64>,
    pub backlog: u64,
    pub throttled: f64,
    /// Failed delivery attempts and records to the error output, both since the daemon started.
    pub failed_attempts: u64,
    pub error_output: u64,
}

impl StreamLine {
    fn cells(&self) -> [String; 9] {
        [
            self.name.clone(),
            self.destination.clone(),
            format!("{:.1}", self.in_records),
            human_rate(self.in_bytes),
            format!("{:.1}", self.out_records),
            self.freshness
                .map(|f| format!("{f:.1}s"))
                .unwrap_or_else(|| "-".into()),
            self.backlog.to_string(),
            format!("{:.1}", self.throttled),
            format!("{} tries, {} out", self.failed_attempts, self.error_output),
        ]
    }

    fn key(&self, column: usize) -> f64 {
        match column {
            2 => self.in_records,
            3 => self.in_bytes,
            4 => self.out_records,
            5 => self.freshness.unwrap_or(0.0),
            6 => self.backlog as f64,
            7 => self.throttled,
            _ => (self.failed_attempts + self.error_output) as f64,
        }
    }
}

fn human_rate(bytes: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let (mut v, mut u) = (bytes, 0);
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// The lines from two samples `seconds` apart (the rates are the counters' differences; a
/// stream new since the earlier sample, or a daemon restarted, shows its counters from zero).
pub fn lines(earlier: Option<&Status>, now: &Status, seconds: f64) -> Vec<StreamLine> {
    let seconds = seconds.max(1e-3);
    now.streams
        .iter()
        .map(|s| {
            let before = earlier.and_then(|e| e.streams.iter().find(|b| b.name == s.name));
            let rate = |f: fn(&StreamRow) -> u64| match before {
                Some(b) => f(s).saturating_sub(f(b)) as f64 / seconds,
                None => 0.0,
            };
            StreamLine {
                name: s.name.clone(),
                destination: s.destination.clone(),
                in_records: rate(|r| r.incoming_records),
                in_bytes: rate(|r| r.incoming_bytes),
                out_records: rate(|r| r.delivered_records),
                freshness: s.oldest_undelivered_age_seconds,
                backlog: s.backlog_records,
                throttled: rate(|r| r.throttled_records),
                failed_attempts: s.failed_attempts,
                error_output: s.error_output_records,
            }
        })
        .collect()
}

/// Sorts by `column`: names A→Z, numbers largest first; `reverse` flips it.
pub fn sort(lines: &mut [StreamLine], column: usize, reverse: bool) {
    lines.sort_by(|a, b| {
        let order = match column {
            0 => a.name.cmp(&b.name),
            1 => a.destination.cmp(&b.destination).then(a.name.cmp(&b.name)),
            c => b.key(c).total_cmp(&a.key(c)).then(a.name.cmp(&b.name)),
        };
        if reverse { order.reverse() } else { order }
    });
}

/// What the fetcher last saw.
#[derive(Default)]
struct Seen {
    previous: Option<(Instant, Status)>,
    latest: Option<(Instant, Status)>,
    /// The last fetch failed: why, and since when.
    error: Option<(String, Instant)>,
    fetches: u64,
}

async fn fetch(client: &reqwest::Client, url: &str, token: Option<&str>) -> anyhow::Result<Status> {
    let mut request = client.get(url).timeout(Duration::from_secs(2));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    Ok(request.send().await?.error_for_status()?.json().await?)
}

/// Runs the view until `q`, Esc or Ctrl-C.
pub fn run(args: TopArgs) -> anyhow::Result<()> {
    let url = format!("{}/status", args.endpoint.trim_end_matches('/'));
    let interval = Duration::from_secs_f64(args.interval.clamp(0.1, 3600.0));
    crate::aws_client::trust_ca_bundle(None)?;
    let client = crate::aws_client::client_builder().build()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let fetcher = {
        let seen = seen.clone();
        let url = url.clone();
        let token = args.token.clone();
        std::thread::spawn(move || {
            runtime.block_on(async move {
                loop {
                    let result = fetch(&client, &url, token.as_deref()).await;
                    {
                        let mut seen = seen.lock().expect("top lock");
                        seen.fetches += 1;
                        match result {
                            Ok(status) => {
                                seen.previous = seen.latest.take();
                                seen.latest = Some((Instant::now(), status));
                                seen.error = None;
                            }
                            Err(e) => {
                                let since = seen.error.take().map_or_else(Instant::now, |(_, t)| t);
                                // The innermost cause says it best ("Connection refused").
                                let why = e.chain().last().map(|c| c.to_string());
                                seen.error = Some((why.unwrap_or_default(), since));
                            }
                        }
                    }
                    tokio::time::sleep(interval).await;
                }
            })
        })
    };
    drop(fetcher);
    let mut terminal = ratatui::init();
    let (mut column, mut reverse) = (2usize, false);
    let outcome = (|| -> anyhow::Result<()> {
        loop {
            let frame_lines = {
                let seen = seen.lock().expect("top lock");
                view(&seen, &args.endpoint, column, reverse)
            };
            terminal.draw(|frame| draw(frame, &frame_lines, column))?;
            if event::poll(Duration::from_millis(200))?
                && let Event::Key(key) = event::read()?
                && key.kind == KeyEventKind::Press
            {
                match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(());
                    }
                    KeyCode::Right | KeyCode::Char('s') | KeyCode::Tab => {
                        column = (column + 1) % COLUMNS.len()
                    }
                    KeyCode::Left | KeyCode::BackTab => {
                        column = (column + COLUMNS.len() - 1) % COLUMNS.len()
                    }
                    KeyCode::Char('r') => reverse = !reverse,
                    KeyCode::Char(d @ '1'..='9') => column = d as usize - '1' as usize,
                    _ => {}
                }
            }
        }
    })();
    ratatui::restore();
    outcome
}

/// What a frame shows: the header lines and the table's lines.
struct Frame {
    header: Vec<String>,
    lines: Vec<StreamLine>,
    stale: bool,
    footer: String,
}

fn view(seen: &Seen, endpoint: &str, column: usize, reverse: bool) -> Frame {
    let mut header = Vec::new();
    let stale = seen.error.is_some();
    let lines = match &seen.latest {
        Some((at, status)) => {
            let earlier = seen.previous.as_ref();
            let seconds = earlier.map_or(1.0, |(t, _)| at.duration_since(*t).as_secs_f64());
            let mut lines = lines(earlier.map(|(_, s)| s), status, seconds);
            sort(&mut lines, column, reverse);
            let node = status
                .node
                .as_ref()
                .map(|n| format!(" (fleet node {n})"))
                .unwrap_or_default();
            header.push(format!(
                "hosepipe top — {endpoint}{node} — {} streams; spool {} of {}; memory {} of {}",
                status.streams.len(),
                crate::status::human(status.spool_bytes),
                crate::status::human(status.spool_max_bytes),
                crate::status::human(status.memory_used_bytes),
                crate::status::human(status.memory_budget_bytes),
            ));
            lines
        }
        None => {
            header.push(format!("hosepipe top — {endpoint}"));
            Vec::new()
        }
    };
    match &seen.error {
        Some((why, since)) => header.push(format!(
            "DAEMON NOT ANSWERING for {}s: {why} — retrying{}",
            since.elapsed().as_secs(),
            if seen.latest.is_some() {
                "; the table is the last answer"
            } else {
                ""
            }
        )),
        None if seen.latest.is_none() => header.push("connecting…".into()),
        None => header.push(String::new()),
    }
    Frame {
        header,
        lines,
        stale,
        footer: format!(
            "sorted by {}{} — ←/→ or 1-9: sort column, r: reverse, q: quit",
            COLUMNS[column],
            if reverse { " (reversed)" } else { "" }
        ),
    }
}

fn draw(frame: &mut ratatui::Frame, f: &Frame, column: usize) {
    let [head, table, foot] = Layout::vertical([
        Constraint::Length(f.header.len() as u16),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(
        Paragraph::new(
            f.header
                .iter()
                .map(|l| Line::from(l.as_str()))
                .collect::<Vec<_>>(),
        ),
        head,
    );
    let header = Row::new(COLUMNS.iter().enumerate().map(|(i, c)| {
        let style = Style::new().add_modifier(Modifier::BOLD);
        Cell::from(*c).style(if i == column {
            style.add_modifier(Modifier::REVERSED)
        } else {
            style
        })
    }));
    let style = if f.stale {
        Style::new().add_modifier(Modifier::DIM)
    } else {
        Style::new()
    };
    let rows = f
        .lines
        .iter()
        .map(|l| Row::new(l.cells().map(Cell::from)).style(style));
    let widths = [
        Constraint::Min(12),
        Constraint::Min(11),
        Constraint::Length(10),
        Constraint::Length(11),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(9),
        Constraint::Length(12),
        Constraint::Min(16),
    ];
    frame.render_widget(Table::new(rows, widths).header(header), table);
    frame.render_widget(Paragraph::new(f.footer.as_str()), foot);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(rows: serde_json::Value) -> Status {
        serde_json::from_value(serde_json::json!({"streams": rows, "spool_bytes": 0})).unwrap()
    }

    fn row(name: &str, incoming: u64, delivered: u64, backlog: u64) -> serde_json::Value {
        serde_json::json!({"name": name, "state": "ACTIVE", "destination": "bucket b",
            "buffered_bytes": 0, "buffered_records": 0, "in_flight_records": 0,
            "oldest_undelivered_age_seconds": null, "delivered_records": delivered,
            "failed_attempts": 0, "spool_bytes": 0, "spool_segments": 0,
            "incoming_records": incoming, "incoming_bytes": incoming * 100,
            "backlog_records": backlog})
    }

    #[test]
    fn rates_come_from_two_samples_and_sorting_follows_the_column() {
        let before = status(serde_json::json!([row("a", 100, 50, 0), row("b", 0, 0, 0)]));
        let now = status(serde_json::json!([
            row("a", 300, 150, 7),
            row("b", 1000, 0, 900),
            row("c", 5, 5, 0)
        ]));
        let mut got = lines(Some(&before), &now, 2.0);
        assert_eq!(got[0].in_records, 100.0);
        assert_eq!(got[0].in_bytes, 10_000.0);
        assert_eq!(got[0].out_records, 50.0);
        assert_eq!(
            got[2].in_records, 0.0,
            "new since the last sample: no rate yet"
        );
        sort(&mut got, 2, false);
        let names: Vec<_> = got.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["b", "a", "c"]);
        // By backlog (b 900, a 7, c 0), reversed: smallest first.
        sort(&mut got, 6, true);
        let names: Vec<_> = got.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["c", "a", "b"]);
        sort(&mut got, 0, false);
        assert_eq!(got[0].name, "a");
        // A restarted daemon's counters start again: no negative rates.
        let restarted = status(serde_json::json!([row("a", 3, 0, 0)]));
        assert_eq!(lines(Some(&now), &restarted, 1.0)[0].in_records, 0.0);
    }
}
