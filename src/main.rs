//! The binary edge: command line, config load, signals, exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hosepipe::config::{Config, Overrides};
use hosepipe::server::Server;

#[derive(Parser)]
#[command(
    name = "hosepipe",
    version = env!("HOSEPIPE_BUILD"),
    about = "A self-hosted delivery-stream daemon that speaks the Amazon Data Firehose API"
)]
struct Cli {
    /// How log lines are written to stderr: `text`, or `json` (one object per line, for a log
    /// collector). Default: HOSEPIPE_LOG_FORMAT, else text.
    #[arg(long, global = true, value_enum, env = "HOSEPIPE_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// Config file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:4573).
        #[arg(long)]
        listen: Option<String>,
        /// Where hosepipe keeps its state and, by default, its buckets.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Check a config file; print every error with its field path.
    Validate {
        #[arg(long)]
        config: PathBuf,
    },
    /// A live view of the running daemon's streams: rates, freshness, backlog, errors (q quits).
    #[cfg(feature = "operator-tools")]
    Top(hosepipe::top::TopArgs),
    /// Print a table of the running daemon's streams.
    Status {
        /// The daemon's address.
        #[arg(long, default_value = "http://127.0.0.1:4573")]
        endpoint: String,
        /// The daemon's `[auth] metrics_token` (default: HOSEPIPE_METRICS_TOKEN).
        #[arg(long)]
        token: Option<String>,
    },
    /// Print the columns record format conversion would use for a table (local catalog or Glue).
    Schema {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        database: String,
        #[arg(long)]
        table: String,
        /// Glue catalog id (default: the caller's account).
        #[arg(long)]
        catalog_id: Option<String>,
        /// A pinned table version (default: the latest).
        #[arg(long)]
        version_id: Option<String>,
    },
    /// Tail log files into delivery streams (the Kinesis Agent's job; reads its agent.json).
    Agent {
        /// agent.json (the Kinesis Agent's format) or a TOML file with the same settings.
        #[arg(long)]
        config: PathBuf,
    },
    /// Send records built from a template at a set rate (the Kinesis Data Generator's job).
    Generate(hosepipe::generate::GenerateArgs),
    /// Build and try transforms: a Firehose Lambda handler (Python or Node.js) or a crate made
    /// into a component, and any transform run over records from a file.
    Transform {
        #[command(subcommand)]
        action: TransformAction,
    },
    /// Decrypt an object written by a stream with KMSEncryptionConfig (a file or s3://bucket/key).
    Decrypt {
        #[arg(long)]
        config: Option<PathBuf>,
        /// A local path, or s3://bucket/key through the configured S3.
        input: String,
        /// Where the plaintext goes (default: stdout, once all of it has authenticated).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Print a shell's completion script (e.g. `hosepipe completions bash >
    /// /etc/bash_completion.d/hosepipe`).
    #[cfg(feature = "operator-tools")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (hosepipe.1 and one per command) into a directory.
    #[cfg(feature = "operator-tools")]
    Man {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Create, list and rotate the local keyring's master keys.
    Keys {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: hosepipe::crypto::cli::KeysAction,
    },
    /// Benchmarks, each against a baseline measured in the same run (BENCHMARKS.md has their
    /// commands and results).
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
}

/// `hosepipe transform <action>`.
#[derive(Subcommand)]
enum TransformAction {
    /// Make a Lambda handler (FILE.py, FILE.mjs, FILE.js, or a directory of modules) or a
    /// transform crate (CRATE_DIR) into a component for `[transforms] dir`.
    Build(hosepipe::transform::build::BuildArgs),
    /// Run a transform (FILE.wasm, a function in the config's transforms dir, or a built-in
    /// blueprint) over records from a file, as a stream would; exit status 1 when any record
    /// failed.
    Test(hosepipe::transform::trial::TestArgs),
}

/// `hosepipe bench <what>`.
#[derive(Subcommand)]
enum Bench {
    /// Measure accepted-and-delivered throughput against bare gzip of the same bytes.
    Ingest(hosepipe::bench::ingest::BenchArgs),
    /// Measure a destination outage backing up on disk, a kill -9 restart and the drain.
    Backlog(hosepipe::bench::backlog::BenchBacklogArgs),
    /// Measure one stream's put latency while another's UpdateDestination waits on a slow KMS.
    Control(hosepipe::bench::control::BenchControlArgs),
    /// Measure fleets of 1-3 nodes on a NATS JetStream cluster against the local spool and a
    /// bare JetStream client.
    Fleet(hosepipe::bench::fleet::BenchFleetArgs),
    /// Measure JSON → Parquet conversion against a bare JSON parse of the same bytes.
    Convert(hosepipe::bench::convert::BenchConvertArgs),
    /// Measure the WASM sandbox's per-record cost against the same transforms run natively.
    Transform(hosepipe::bench::transform::BenchTransformArgs),
    /// Measure dynamic partitioning (jq keys, a buffer per partition) against one partition.
    Partition(hosepipe::bench::partition::BenchPartitionArgs),
    /// Measure the encryption stage against bare AES-256-GCM of the same bytes.
    Encrypt(hosepipe::bench::encrypt::BenchEncryptArgs),
    /// Benchmark: records/s into OpenSearch through hosepipe's _bulk path vs a bare HTTP client.
    Opensearch(hosepipe::bench::opensearch::BenchOpenSearchArgs),
    /// Benchmark: records/s into a Splunk HEC through hosepipe's path vs a bare HTTP client.
    Splunk(hosepipe::bench::splunk::BenchSplunkArgs),
    /// Benchmark: records/s to an HTTP endpoint through hosepipe's path vs a bare HTTP client,
    /// and the receiver's ingest.
    HttpEndpoint(hosepipe::bench::http_endpoint::BenchHttpEndpointArgs),
    /// Benchmark: rows/s committed into an Iceberg table vs the plain Parquet path, and commit
    /// latency.
    #[cfg(feature = "iceberg")]
    Iceberg(hosepipe::bench::iceberg::BenchIcebergArgs),
    /// Benchmark: lines/s the agent sends from a growing file vs `cat` of it to /dev/null.
    Agent(hosepipe::bench::agent::BenchAgentArgs),
    /// Soak: load at half of capacity for N minutes with a destination outage every few
    /// minutes; RSS, open fds, threads and spool sampled; every record counted at the end.
    Soak(hosepipe::bench::soak::BenchSoakArgs),
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Colours only on a terminal: a log file or a collector gets plain text.
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // One JSON object per line: timestamp, level, target, fields (message included) and
        // the spans it happened in.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

/// Writes `hosepipe.1` and a page per command (`hosepipe-serve.1`, …) into `dir`.
#[cfg(feature = "operator-tools")]
fn write_man_pages(dir: &std::path::Path) -> std::io::Result<usize> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    let cli = Cli::command();
    let mut written = 0;
    let mut page = |name: String, cmd: clap::Command| -> std::io::Result<()> {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut out)?;
        std::fs::write(dir.join(format!("{name}.1")), out)?;
        written += 1;
        Ok(())
    };
    for sub in cli.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("hosepipe-{}", sub.get_name());
        let cmd = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("hosepipe {}", sub.get_name()));
        page(name, cmd)?;
    }
    page("hosepipe".into(), cli)?;
    Ok(written)
}

/// Waits for SIGINT or SIGTERM. The handlers are installed when this is called (not when the
/// future is first polled), so a signal that arrives right after the "listening" line is not
/// lost to the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind: SignalKind, name: &'static str| {
        signal(kind)
            .map_err(|e| tracing::error!(error = %e, "cannot listen for {name}"))
            .ok()
    };
    let mut int = install(SignalKind::interrupt(), "SIGINT");
    let mut term = install(SignalKind::terminate(), "SIGTERM");
    async fn wait(s: Option<&mut tokio::signal::unix::Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
    async move {
        tokio::select! {
            _ = wait(int.as_mut()) => tracing::info!("SIGINT received"),
            _ = wait(term.as_mut()) => tracing::info!("SIGTERM received"),
        }
    }
}

/// Runs `f` on a multi-threaded runtime.
/// The exit code of a one-shot command, its error printed.
/// glibc gives each thread that allocates under contention an arena of its own (up to eight
/// per core) and keeps what is freed in it: the daemon's memory would grow past its budget by
/// what those arenas hold. Two arenas serve its threads with little contention. Set before any
/// thread starts.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a tunable of the allocator; it is called before any other
    // thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn finished(command: &str, result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{command} failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `hosepipe transform test`: 0 when every record came out Ok or Dropped, 1 when any failed,
/// 2 when the transform or the records cannot be read.
fn transform_test(args: hosepipe::transform::trial::TestArgs) -> ExitCode {
    use hosepipe::transform::trial;
    let cfg = match load_quietly(args.config.as_deref()) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let inputs = match std::fs::read(&args.records)
        .map_err(|e| format!("{}: {e}", args.records.display()))
        .and_then(|text| trial::read_records(&text, now_ms))
    {
        Ok(inputs) => inputs,
        Err(e) => {
            eprintln!("hosepipe transform test: {e}");
            return ExitCode::from(2);
        }
    };
    match trial::run(&args, cfg.transforms, &inputs) {
        Ok(answers) => {
            if args.json {
                println!("{:#}", trial::lambda_answer(&inputs, &answers));
            } else {
                print!("{}", trial::table(&inputs, &answers));
            }
            let failed = answers
                .iter()
                .any(|a| matches!(a, trial::Answer::ProcessingFailed { .. }));
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("hosepipe transform test: {e}");
            ExitCode::from(2)
        }
    }
}

/// Loads the config for a one-shot command; on errors prints them and gives the exit code.
fn load_quietly(config: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    Config::load(config, &Overrides::default(), &env).map_err(|errors| {
        for e in &errors {
            eprintln!("{e}");
        }
        ExitCode::from(2)
    })
}

fn block_on(f: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let log_format = cli.log_format;
    match cli.command {
        #[cfg(feature = "operator-tools")]
        Command::Completions { shell } => {
            use clap::CommandFactory;
            use std::io::Write;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "hosepipe", &mut script);
            // A closed pipe (`| head`) is the reader's choice, not a failure.
            match std::io::stdout().write_all(&script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
                _ => ExitCode::SUCCESS,
            }
        }
        #[cfg(feature = "operator-tools")]
        Command::Top(args) => match hosepipe::top::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hosepipe top: {e:#}");
                ExitCode::FAILURE
            }
        },
        #[cfg(feature = "operator-tools")]
        Command::Man { dir } => match write_man_pages(&dir) {
            Ok(n) => {
                println!("wrote {n} man pages to {}", dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
        Command::Validate { config } => {
            match Config::load(Some(&config), &Overrides::default(), &env) {
                Ok(cfg) => {
                    println!("{}: ok ({} streams)", config.display(), cfg.streams.len());
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    for e in &errors {
                        eprintln!("{e}");
                    }
                    eprintln!("{}: {} error(s)", config.display(), errors.len());
                    ExitCode::from(2)
                }
            }
        }
        Command::Serve {
            config,
            listen,
            data_dir,
        } => {
            init_tracing(log_format);
            let overrides = Overrides { listen, data_dir };
            let cfg = match Config::load(config.as_deref(), &overrides, &env) {
                Ok(cfg) => cfg,
                Err(errors) => {
                    for e in &errors {
                        eprintln!("{e}");
                    }
                    return ExitCode::from(2);
                }
            };
            block_on(async {
                let server = match Server::start(cfg).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start");
                        return ExitCode::FAILURE;
                    }
                };
                let stop = shutdown_signal();
                // Tests and scripts read the address from this line.
                println!(
                    "hosepipe listening on {}://{}",
                    server.scheme(),
                    server.addr
                );
                match server.run(stop).await {
                    0 => ExitCode::SUCCESS,
                    _ => ExitCode::FAILURE,
                }
            })
        }
        Command::Status { endpoint, token } => block_on(async {
            let token = token.or_else(|| std::env::var("HOSEPIPE_METRICS_TOKEN").ok());
            match hosepipe::status::run(&endpoint, token.as_deref()).await {
                Ok(table) => {
                    print!("{table}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("status: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }),
        Command::Schema {
            config,
            database,
            table,
            catalog_id,
            version_id,
        } => {
            let cfg = match Config::load(config.as_deref(), &Overrides::default(), &env) {
                Ok(cfg) => cfg,
                Err(errors) => {
                    for e in &errors {
                        eprintln!("{e}");
                    }
                    return ExitCode::from(2);
                }
            };
            let table = hosepipe::schema::TableRef {
                catalog_id,
                database,
                table,
                region: None,
                version_id,
            };
            block_on(async move {
                let glue = match cfg.glue_endpoint() {
                    Ok(glue) => glue,
                    Err(msg) => {
                        eprintln!("schema: {msg}");
                        return ExitCode::FAILURE;
                    }
                };
                match hosepipe::schema::resolve(&table, &cfg.catalog, glue.as_ref()).await {
                    Ok(schema) => {
                        print!("{}", hosepipe::schema::describe(&schema));
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("schema: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Decrypt {
            config,
            input,
            output,
        } => match load_quietly(config.as_deref()) {
            Err(code) => code,
            Ok(cfg) => finished(
                "decrypt",
                hosepipe::crypto::cli::decrypt(&cfg, &input, output.as_deref()).map(drop),
            ),
        },
        Command::Agent { config } => {
            let cfg = match hosepipe::agent::config::AgentConfig::load(&config) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            init_tracing(log_format);
            block_on(async move {
                match hosepipe::agent::run(cfg, shutdown_signal()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!("agent: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Generate(args) => match hosepipe::generate::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("generate: {e}");
                ExitCode::from(2)
            }
        },
        Command::Transform {
            action: TransformAction::Build(args),
        } => match hosepipe::transform::build::run(args) {
            Ok(path) => {
                println!("wrote {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hosepipe transform build: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Transform {
            action: TransformAction::Test(args),
        } => transform_test(args),
        Command::Bench { what } => match what {
            Bench::Ingest(args) => {
                init_tracing(log_format);
                block_on(async {
                    match hosepipe::bench::ingest::run(args).await {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => {
                            eprintln!("bench ingest failed: {e:#}");
                            ExitCode::FAILURE
                        }
                    }
                })
            }
            Bench::Backlog(args) => finished("bench backlog", hosepipe::bench::backlog::run(args)),
            Bench::Soak(args) => finished("bench soak", hosepipe::bench::soak::run(args)),
            Bench::Control(args) => finished("bench control", hosepipe::bench::control::run(args)),
            Bench::Fleet(args) => finished("bench fleet", hosepipe::bench::fleet::run(args)),
            Bench::Convert(args) => finished("bench convert", hosepipe::bench::convert::run(args)),
            Bench::Transform(args) => {
                init_tracing(log_format);
                finished("bench transform", hosepipe::bench::transform::run(args))
            }
            Bench::Partition(args) => {
                finished("bench partition", hosepipe::bench::partition::run(args))
            }
            Bench::Encrypt(args) => finished("bench encrypt", hosepipe::bench::encrypt::run(args)),
            Bench::Opensearch(args) => {
                finished("bench opensearch", hosepipe::bench::opensearch::run(args))
            }
            Bench::Splunk(args) => finished("bench splunk", hosepipe::bench::splunk::run(args)),
            Bench::HttpEndpoint(args) => finished(
                "bench http-endpoint",
                hosepipe::bench::http_endpoint::run(args),
            ),
            #[cfg(feature = "iceberg")]
            Bench::Iceberg(args) => finished("bench iceberg", hosepipe::bench::iceberg::run(args)),
            Bench::Agent(args) => finished("bench agent", hosepipe::bench::agent::run(args)),
        },
        Command::Keys { config, action } => match load_quietly(config.as_deref()) {
            Err(code) => code,
            Ok(cfg) => match hosepipe::crypto::cli::keys(&cfg, &action) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("keys: {e}");
                    ExitCode::FAILURE
                }
            },
        },
    }
}
