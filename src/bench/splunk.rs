//! `hosepipe bench splunk`: records/s into a HEC receiver through hosepipe's path (body, post,
//! indexer-acknowledgement polling) against the same bodies, built beforehand and posted by a
//! bare HTTP client that does not wait for acknowledgements, in the same run.

use std::time::{Duration, Instant};

use crate::config::splunk::SplunkSpec;
use crate::deliver::splunk::Hec;
use crate::encode::splunk::{EventFields, body};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchSplunkArgs {
    /// The collector (e.g. tests/integration/hec_receiver.py as in BENCHMARKS.md).
    #[arg(long)]
    pub endpoint: String,
    #[arg(long, default_value = "hec-token")]
    pub token: String,
    /// `Raw` or `Event`.
    #[arg(long, default_value = "Event")]
    pub endpoint_type: String,
    /// Records per measurement.
    #[arg(long, default_value_t = 50_000)]
    pub records: usize,
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// Records per post (a buffer flush): 1 MiB of 1 KiB records by default.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
}

fn spec(args: &BenchSplunkArgs) -> Result<SplunkSpec, String> {
    let input: crate::config::stream::CreateDeliveryStreamInput =
        serde_json::from_value(serde_json::json!({
            "SplunkDestinationConfiguration": {
                "HECEndpoint": args.endpoint, "HECEndpointType": args.endpoint_type,
                "HECToken": args.token, "S3Configuration": {"BucketARN": "arn:aws:s3:::bench"},
            }
        }))
        .map_err(|e| e.to_string())?;
    match crate::config::stream::validate("bench", &input)
        .map_err(|e| format!("{e:?}"))?
        .destination
    {
        crate::config::stream::DestinationSpec::Splunk(s) => Ok(*s),
        _ => Err("not a Splunk spec".into()),
    }
}

pub fn run(args: BenchSplunkArgs) -> Result<(), String> {
    let spec = spec(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let recs = crate::bench::opensearch::records(args.records, args.record_bytes);
        let fields = EventFields::default();
        let http = reqwest::Client::new();
        println!(
            "{} records of {} bytes, {} per post ({}), into {}",
            args.records, args.record_bytes, args.batch, args.endpoint_type, args.endpoint
        );
        let path = if args.endpoint_type == "Raw" { "raw" } else { "event" };
        let bodies: Vec<Vec<u8>> = recs
            .chunks(args.batch)
            .map(|c| body(&spec, &fields, "bench", c))
            .collect();
        let crate::config::http::Credential::Inline(token) = &spec.token else {
            return Err("the benchmark takes an inline token".into());
        };
        let started = Instant::now();
        for b in bodies {
            let r = http
                .post(format!("{}/services/collector/{path}?channel=bench-bare", spec.endpoint))
                .header("Authorization", format!("Splunk {token}"))
                .header("X-Splunk-Request-Channel", "bench-bare")
                .body(b)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(format!("HEC answered {}", r.status()));
            }
            r.bytes().await.map_err(|e| e.to_string())?;
        }
        let bare = args.records as f64 / started.elapsed().as_secs_f64();
        let secrets = crate::secrets::Secrets::new(Default::default()).map_err(|e| e.to_string())?;
        let client = Hec {
            client: hosepipe_sinks::hec::HecClient::new(None, None).map_err(|e| e.to_string())?,
            fields,
            ack_timeout: Some(Duration::from_secs(60)),
            secrets: std::sync::Arc::new(secrets),
        };
        let channel = uuid::Uuid::new_v4().to_string();
        let metrics = crate::metrics::Metrics::default();
        let failed_attempts = std::sync::atomic::AtomicU64::new(0);
        let seen = crate::deliver::Sending {
            stream: "bench",
            batch: 0,
            id_base: "bench",
            channel: &channel,
            metrics: &metrics,
            failed_attempts: &failed_attempts,
            log: None,
        };
        let started = Instant::now();
        for chunk in recs.chunks(args.batch) {
            let out = client.deliver(&spec, &seen, chunk, |_| {}).await;
            if let Err(f) = out.result {
                return Err(format!("{}: {}", f.code, f.message));
            }
        }
        let ours = args.records as f64 / started.elapsed().as_secs_f64();
        println!(
            "\n  baseline: bare HTTP client, prebuilt bodies, no ack wait  {bare:>10.0} records/s"
        );
        println!(
            "  hosepipe HEC path (body + post + ack polling)           {ours:>10.0} records/s  = {:.2}x baseline",
            ours / bare
        );
        Ok(())
    })
}
