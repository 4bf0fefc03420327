//! `hosepipe bench agent`: lines/s the agent reads from a file that is still being written and
//! gets accepted by an in-process daemon, against `cat` of the same file to /dev/null, in the
//! same run.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::agent::config::AgentConfig;
use crate::agent::{AgentMetrics, run_with};
use crate::config::{Config, Overrides, RawConfig};
use crate::server::Server;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchAgentArgs {
    /// Lines written (and sent).
    #[arg(long, default_value_t = 1_000_000)]
    pub lines: usize,
    /// Bytes per line, newline included.
    #[arg(long, default_value_t = 200)]
    pub line_bytes: usize,
    /// Lines per write while the file grows.
    #[arg(long, default_value_t = 5_000)]
    pub chunk: usize,
    /// Processing option for every line: none, or LOGTOJSON (lines are then Apache combined
    /// log lines).
    #[arg(long, default_value = "none")]
    pub processing: String,
    /// The in-process daemon's `[spool] sync`: fsync (default; a batch is answered after its
    /// fsync) or os.
    #[arg(long, default_value = "fsync")]
    pub sync: String,
}

fn line(i: usize, size: usize, apache: bool) -> String {
    let mut l = if apache {
        format!(
            "10.0.{}.{} - - [07/Mar/2024:16:10:02 -0800] \"GET /item/{i} HTTP/1.1\" 200 {} \"-\" \"bench/1.0 ",
            i % 256,
            (i / 256) % 256,
            i % 5000
        )
    } else {
        format!(
            "{i:09} INFO request served path=/item/{} ms={} ",
            i % 977,
            i % 250
        )
    };
    while l.len() + 2 < size {
        l.push('x');
    }
    if apache {
        l.push('"');
    }
    l.push('\n');
    l
}

pub fn run(args: BenchAgentArgs) -> Result<(), String> {
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(bench(args))
}

async fn bench(args: BenchAgentArgs) -> Result<(), String> {
    let dir = tempfile::tempdir_in(".").map_err(|e| e.to_string())?;
    let raw: RawConfig = toml::from_str(&format!(
        r#"
listen = "127.0.0.1:0"
object_store = "local"
[spool]
sync = "{}"
[streams.bench.extended_s3_destination_configuration]
bucket_arn = "arn:aws:s3:::bench"
compression_format = "GZIP"
buffering_hints = {{ size_in_mbs = 64, interval_in_seconds = 60 }}
"#,
        args.sync
    ))
    .map_err(|e| e.to_string())?;
    let overrides = Overrides {
        listen: None,
        data_dir: Some(dir.path().join("daemon")),
    };
    let config = Config::from_raw(raw, &overrides, &|_| None).map_err(|e| e.join("\n"))?;
    let server = Server::start(config).await.map_err(|e| e.to_string())?;
    let addr = server.addr;
    let (stop_daemon, daemon_stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = daemon_stopped.await;
    }));

    let apache = args.processing.eq_ignore_ascii_case("LOGTOJSON");
    let processing = if apache {
        r#", "dataProcessingOptions": [{"optionName": "LOGTOJSON", "logFormat": "COMBINEDAPACHELOG"}]"#
    } else {
        ""
    };
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
    let agent_json = dir.path().join("agent.json");
    std::fs::write(
        &agent_json,
        format!(
            r#"{{ "firehose.endpoint": "http://{addr}", "awsAccessKeyId": "bench",
                 "awsSecretAccessKey": "bench", "checkpointFile": "{}",
                 "flows": [{{ "filePattern": "{}/app.log", "deliveryStream": "bench",
                              "initialPosition": "START_OF_FILE", "maxBufferAgeMillis": 1000,
                              "minTimeBetweenFilePollsMillis": 20 {processing} }}] }}"#,
            dir.path().join("checkpoints").display(),
            logs.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let agent_config = AgentConfig::load(&agent_json)?;
    let flow_id = agent_config.flows[0].id.clone();
    let metrics = AgentMetrics::new();
    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(run_with(agent_config, metrics.clone(), async {
        let _ = agent_stopped.await;
    }));

    // The file grows while the agent reads it.
    let path = logs.join("app.log");
    let (lines, size, chunk) = (args.lines, args.line_bytes, args.chunk.max(1));
    let start = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<f64> {
        let mut f = std::fs::File::create(&path)?;
        let mut buf = String::new();
        for i in 0..lines {
            buf.push_str(&line(i, size, apache));
            if (i + 1) % chunk == 0 || i + 1 == lines {
                f.write_all(buf.as_bytes())?;
                buf.clear();
            }
        }
        Ok(start.elapsed().as_secs_f64())
    });
    let progress = Arc::clone(&metrics);
    let mut last = Instant::now();
    while progress.records_sent(&flow_id) < args.lines as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if last.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "stalled at {} of {} lines",
                progress.records_sent(&flow_id),
                args.lines
            ));
        }
        if progress.records_sent(&flow_id) > 0 {
            last = Instant::now();
        }
    }
    let agent_secs = start.elapsed().as_secs_f64();
    let write_secs = writer
        .join()
        .map_err(|_| "writer panicked".to_string())?
        .map_err(|e| e.to_string())?;
    let _ = stop_agent.send(());
    agent.await.map_err(|e| e.to_string())??;
    let _ = stop_daemon.send(());
    let _ = serving.await;

    // Baseline: cat of the same file to /dev/null (best of three).
    let file = logs.join("app.log");
    let bytes = std::fs::metadata(&file).map_err(|e| e.to_string())?.len();
    let mut cat_secs = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let status = std::process::Command::new("cat")
            .arg(&file)
            .stdout(std::fs::File::create("/dev/null").map_err(|e| e.to_string())?)
            .status()
            .map_err(|e| format!("cat: {e}"))?;
        if !status.success() {
            return Err("cat failed".into());
        }
        cat_secs = cat_secs.min(t.elapsed().as_secs_f64());
    }
    let n = args.lines as f64;
    println!(
        "bench agent: {} lines of {} B ({:.1} MiB), processing {}, daemon spool sync {}",
        args.lines,
        args.line_bytes,
        bytes as f64 / 1048576.0,
        args.processing,
        args.sync
    );
    println!(
        "  writer finished after        {write_secs:8.2} s ({:>12.0} lines/s)",
        n / write_secs
    );
    println!(
        "  agent → daemon (all accepted) {agent_secs:8.2} s ({:>12.0} lines/s, {:.1} MiB/s)",
        n / agent_secs,
        bytes as f64 / 1048576.0 / agent_secs
    );
    println!(
        "  cat > /dev/null (baseline)    {cat_secs:8.3} s ({:>12.0} lines/s)",
        n / cat_secs
    );
    println!("  agent / cat: {:.3}×", cat_secs / agent_secs);
    Ok(())
}
