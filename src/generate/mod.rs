//! `hosepipe generate`: the Kinesis Data Generator's job from a terminal. Renders a template
//! ([`template`]) into records at a target rate and sends them with `PutRecordBatch` (failed
//! entries retried), with a progress bar, until a count or a duration is reached; then prints a
//! summary with the rate achieved.

pub mod template;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinSet;

use crate::producer::{Backoff, MAX_BATCH_RECORDS, Producer, SendEvent, Target};
use template::Template;

#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// The delivery stream.
    #[arg(long)]
    pub stream: String,
    /// A template file (see config/templates/).
    #[arg(long)]
    pub template: PathBuf,
    /// Records per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Stop after this many records.
    #[arg(long, conflicts_with = "duration")]
    pub count: Option<u64>,
    /// Stop after this many seconds (rate × seconds records). Neither: until Ctrl-C.
    #[arg(long)]
    pub duration: Option<f64>,
    /// The Firehose endpoint (default: AWS_ENDPOINT_URL_FIREHOSE, AWS_ENDPOINT_URL, else the
    /// local daemon).
    #[arg(long)]
    pub endpoint: Option<String>,
    #[arg(long)]
    pub region: Option<String>,
    /// CA certificates (PEM) to trust besides the system's, for an `https://` endpoint a private
    /// CA signed (default: AWS_CA_BUNDLE).
    #[arg(long)]
    pub ca_bundle: Option<PathBuf>,
    /// Print `--count` rendered records (default 1) instead of sending.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress bar (a line a second instead, to stderr).
    #[arg(long)]
    pub quiet: bool,
}

/// Batches sent at once: enough to keep up a high rate over a slow link.
const IN_FLIGHT: usize = 4;

#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    retried: AtomicU64,
    failed_calls: AtomicU64,
    bytes: AtomicU64,
}

pub fn run(args: GenerateArgs) -> Result<(), String> {
    let text = std::fs::read_to_string(&args.template)
        .map_err(|e| format!("{}: {e}", args.template.display()))?;
    let template =
        Template::compile(&text).map_err(|e| format!("{}: {e}", args.template.display()))?;
    if args.dry_run {
        let mut s = String::new();
        for _ in 0..args.count.unwrap_or(1) {
            template.render(&mut s);
        }
        print!("{s}");
        return Ok(());
    }
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return Err(format!("--rate must be above 0, got {}", args.rate));
    }
    crate::aws_client::trust_ca_bundle(args.ca_bundle.as_deref()).map_err(|e| e.to_string())?;
    let endpoint = args.endpoint.clone().or_else(|| {
        let set = |k| std::env::var(k).is_ok_and(|v: String| !v.is_empty());
        (!set("AWS_ENDPOINT_URL_FIREHOSE") && !set("AWS_ENDPOINT_URL"))
            .then(|| "http://127.0.0.1:4573".to_string())
    });
    // A local daemon without auth accepts any keys: placeholder ones when no static keys are
    // set, rather than asking a metadata service that is not there.
    let local = endpoint
        .as_deref()
        .is_some_and(|e| e.contains("127.0.0.1") || e.contains("localhost"));
    let placeholder = (local && crate::credentials::static_keys(None)?.is_none())
        .then(|| ("hosepipe-generate".to_string(), "unused".to_string()));
    let total = match (args.count, args.duration) {
        (Some(c), _) => Some(c),
        (None, Some(d)) => Some((args.rate * d).round() as u64),
        (None, None) => None,
    };
    let rt = tokio::runtime::Runtime::new().map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async {
        let target =
            Target::resolve(endpoint.as_deref(), args.region.as_deref(), placeholder).await?;
        generate(args, template, target, total).await
    })
}

async fn generate(
    args: GenerateArgs,
    template: Template,
    target: Target,
    total: Option<u64>,
) -> Result<(), String> {
    let producer = Producer::new(&target, &args.stream);
    let totals = Arc::new(Totals::default());
    let bar = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    if args.quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} records  {msg}",
        )
        .expect("progress template"),
    );
    eprintln!(
        "sending to {} on {} at {} records/s{}",
        args.stream,
        target.endpoint,
        args.rate,
        total.map_or(" until Ctrl-C".to_string(), |n| format!(", {n} records"))
    );
    let start = Instant::now();
    let mut produced = 0u64;
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
    let tick = Duration::from_millis(20);
    let mut last_line = Instant::now();
    'run: loop {
        if total.is_some_and(|t| produced >= t) {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = &mut ctrl_c => break 'run,
        }
        let due = (args.rate * start.elapsed().as_secs_f64()) as u64;
        let due = total.map_or(due, |t| due.min(t));
        while produced < due {
            let n = ((due - produced) as usize).min(MAX_BATCH_RECORDS);
            let mut records = Vec::with_capacity(n);
            let mut s = String::new();
            for _ in 0..n {
                s.clear();
                template.render(&mut s);
                records.push(Bytes::copy_from_slice(s.as_bytes()));
            }
            produced += n as u64;
            while tasks.len() >= IN_FLIGHT {
                tasks.join_next().await;
            }
            let (p, t) = (producer.clone(), totals.clone());
            tasks.spawn(async move { send(p, records, t).await });
        }
        let elapsed = start.elapsed().as_secs_f64();
        let sent = totals.sent.load(Ordering::Relaxed);
        let msg = format!(
            "{:.1}/s  retried {}  failed calls {}",
            sent as f64 / elapsed.max(1e-3),
            totals.retried.load(Ordering::Relaxed),
            totals.failed_calls.load(Ordering::Relaxed)
        );
        bar.set_position(sent);
        bar.set_message(msg.clone());
        if args.quiet && last_line.elapsed() >= Duration::from_secs(1) {
            last_line = Instant::now();
            eprintln!("{sent} sent, {msg}");
        }
    }
    let sending = start.elapsed().as_secs_f64();
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed().as_secs_f64();
    let sent = totals.sent.load(Ordering::Relaxed);
    bar.set_position(sent);
    bar.finish_and_clear();
    // Scripts and tests read this line.
    println!(
        "generated {produced} records, sent {sent} ({} bytes) in {elapsed:.2} s: {:.1} records/s \
         (target {}; {:.1}/s over the {sending:.2} s of generating); {} entries retried, {} calls failed and retried",
        totals.bytes.load(Ordering::Relaxed),
        sent as f64 / elapsed.max(1e-3),
        args.rate,
        produced as f64 / sending.max(1e-3),
        totals.retried.load(Ordering::Relaxed),
        totals.failed_calls.load(Ordering::Relaxed),
    );
    Ok(())
}

async fn send(producer: Producer, records: Vec<Bytes>, totals: Arc<Totals>) {
    let bytes: usize = records.iter().map(Bytes::len).sum();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    producer
        .send_all(records, &mut backoff, &mut |e| match e {
            SendEvent::Accepted(n) => {
                totals.sent.fetch_add(n as u64, Ordering::Relaxed);
            }
            SendEvent::EntryFailed { .. } => {
                totals.retried.fetch_add(1, Ordering::Relaxed);
            }
            SendEvent::CallFailed(e) => {
                totals.failed_calls.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "PutRecordBatch failed; retrying");
                eprintln!("PutRecordBatch failed ({e}); retrying");
            }
        })
        .await;
    totals.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
}
