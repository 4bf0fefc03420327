//! The deliver stage: objects written to S3 with retries (and, past the retention age, to the
//! error output); OpenSearch and Splunk batches delivered and what follows from them.

use super::encode::backup_all;
use super::*;
use crate::config::opensearch::OpenSearchSpec;
use crate::config::splunk::SplunkSpec;

/// A destination reached over HTTP.
#[derive(Clone, Copy)]
pub(super) enum Http {
    OpenSearch,
    Splunk,
}

/// Counts and settles what an HTTP destination took (`delivered`), and turns what it did not
/// into its error output in the backup bucket.
pub(super) fn after_http_delivery(
    ctx: &StreamContext,
    current: &Versioned,
    batch_id: u64,
    delivered: Vec<Record>,
    failed: Vec<FailedRecord>,
    dest: Http,
) -> Option<EncodedObject> {
    let metrics = &ctx.shared.metrics;
    // OpenSearch's latency histogram is per document; Splunk's is the acknowledgement's.
    let (dest_metrics, error_type, per_record_latency) = match dest {
        Http::OpenSearch => (
            &metrics.opensearch,
            crate::encode::ErrorOutputType::OpenSearchFailed,
            true,
        ),
        Http::Splunk => (
            &metrics.splunk,
            crate::encode::ErrorOutputType::SplunkFailed,
            false,
        ),
    };
    let bytes: u64 = delivered.iter().map(|r| r.data.len() as u64).sum();
    metrics.delivered_http(
        dest_metrics,
        &ctx.name,
        &delivered.iter().map(|r| r.arrival_ms).collect::<Vec<_>>(),
        bytes,
        now_ms(),
        per_record_latency,
    );
    dest_metrics
        .failed
        .get_or_create(&Metrics::stream(&ctx.name))
        .inc_by(failed.len() as u64);
    ctx.stats
        .delivered_records
        .fetch_add(delivered.len() as u64, Ordering::Relaxed);
    ctx.ledger().settle_all(delivered);
    ctx.settled_destination(batch_id);
    if failed.is_empty() {
        return None;
    }
    tracing::warn!(
        batch = batch_id,
        records = failed.len(),
        code = %failed[0].code,
        first_reason = %failed[0].message,
        "records the destination did not take go to the S3 backup"
    );
    Some(crate::encode::encode_error_output(
        failed,
        error_type,
        current.spec.s3_output(),
        &ctx.name,
        current.version,
        batch_id,
        now_ms(),
    ))
}

/// Indexes one batch in OpenSearch (retrying what failed for a retryable reason, within the
/// stream's `RetryOptions`); returns the S3 objects that follow from it: the failed documents
/// (`AmazonOpenSearchService-failed`) and, with `AllDocuments`, the backup of every record.
async fn deliver_opensearch(
    ctx: &StreamContext,
    current: &Versioned,
    spec: &OpenSearchSpec,
    mut batch: Batch,
) -> Vec<EncodedObject> {
    let mut objects = Vec::new();
    if spec.backup_all {
        objects.extend(backup_all(ctx, current, &mut batch, &spec.backup));
    }
    let (docs, mut failed) = crate::encode::opensearch::prepare(spec, batch.records, &ctx.id_base);
    let outcome =
        crate::deliver::opensearch::deliver(&ctx.shared.opensearch, spec, docs, |attempt| {
            ctx.shared
                .metrics
                .opensearch
                .request(&ctx.name, attempt.answered);
            if attempt.pending > 0 {
                ctx.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
            }
            if attempt.retrying {
                tracing::warn!(
                    batch = batch.id,
                    documents = attempt.pending,
                    reason = attempt.reason,
                    "OpenSearch did not take every document; retrying those"
                );
            }
        })
        .await;
    let indexed: Vec<Record> = outcome.indexed.into_iter().map(|d| d.record).collect();
    failed.extend(outcome.failed);
    let failed: Vec<FailedRecord> = failed
        .into_iter()
        .map(|f| FailedRecord {
            extra: Some(crate::encode::opensearch::failed_fields(
                &f,
                spec.type_name.as_deref(),
            )),
            record: f.doc.record,
            attempts: f.attempts,
            code: f.code,
            message: f.message,
            lambda_arn: None,
            catalog_table: None,
        })
        .collect();
    objects.extend(after_http_delivery(
        ctx,
        current,
        batch.id,
        indexed,
        failed,
        Http::OpenSearch,
    ));
    objects
}

/// Sends one batch to Splunk HEC and waits for its indexer acknowledgement (sending it again
/// when the ack does not come in time, within `RetryOptions`); returns the S3 objects that
/// follow: the failed events (`splunk-failed`) and, with `AllEvents`, the backup of every record.
async fn deliver_splunk(
    ctx: &StreamContext,
    current: &Versioned,
    spec: &SplunkSpec,
    mut batch: Batch,
) -> Vec<EncodedObject> {
    let mut objects = Vec::new();
    if spec.backup_all {
        objects.extend(backup_all(ctx, current, &mut batch, &spec.backup));
    }
    let outcome = ctx
        .shared
        .splunk
        .deliver(spec, &ctx.name, &ctx.hec_channel, &batch.records, |attempt| {
            ctx.shared.metrics.splunk.request(&ctx.name, false);
            ctx.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
            if let Some(f) = attempt.failure {
                tracing::warn!(batch = batch.id, code = f.code, reason = %f.message, retrying = attempt.retrying, "Splunk HEC did not take the batch");
            }
        })
        .await;
    let (delivered, failed) = match outcome.result {
        Ok(latency) => {
            let splunk = &ctx.shared.metrics.splunk;
            splunk.request(&ctx.name, true);
            splunk
                .latency
                .get_or_create(&Metrics::stream(&ctx.name))
                .observe(latency.as_secs_f64());
            (batch.records, Vec::new())
        }
        Err(f) => {
            let mut n: HashMap<u64, u32> = HashMap::new();
            let failed: Vec<FailedRecord> = batch
                .records
                .into_iter()
                .map(|r| {
                    let k = n.entry(r.seq).or_insert(0);
                    *k += 1;
                    let mut extra = serde_json::Map::new();
                    extra.insert(
                        "EventId".into(),
                        crate::encode::splunk::event_id(r.seq, *k - 1).into(),
                    );
                    FailedRecord {
                        record: r,
                        attempts: outcome.attempts,
                        code: f.code.to_string(),
                        message: f.message.clone(),
                        lambda_arn: None,
                        extra: Some(extra),
                        catalog_table: None,
                    }
                })
                .collect();
            (Vec::new(), failed)
        }
    };
    objects.extend(after_http_delivery(
        ctx,
        current,
        batch.id,
        delivered,
        failed,
        Http::Splunk,
    ));
    objects
}

/// Delivers a few at a time: objects to S3, each retried until it is written; OpenSearch and
/// Splunk batches, then the objects that follow from them (failed records, backups).
pub(super) async fn deliver_stage(ctx: StreamContext, mut objects: mpsc::Receiver<Delivery>) {
    let mut running: JoinSet<()> = JoinSet::new();
    let mut open = true;
    loop {
        tokio::select! {
            obj = objects.recv(), if open && running.len() < DELIVER_WORKERS => match obj {
                Some(work) => {
                    let ctx = ctx.clone();
                    running.spawn(async move { deliver(&ctx, work).await }.in_current_span());
                }
                None => open = false,
            },
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "delivery task panicked");
                }
            },
            else => break,
        }
    }
}

async fn deliver(ctx: &StreamContext, work: Delivery) {
    let (current, batch) = match work {
        Delivery::Object(obj) => return deliver_one(ctx, obj).await,
        Delivery::Http(current, batch) => (current, batch),
    };
    let follow = match &current.spec.destination {
        DestinationSpec::OpenSearch(spec) => deliver_opensearch(ctx, &current, spec, batch).await,
        DestinationSpec::Splunk(spec) => deliver_splunk(ctx, &current, spec, batch).await,
        DestinationSpec::S3(_) => unreachable!("the encode stage turns S3 batches into objects"),
    };
    for obj in follow {
        deliver_one(ctx, obj).await;
    }
}

async fn deliver_one(ctx: &StreamContext, obj: EncodedObject) {
    let records = obj.records.len() as u64;
    let expired_counted = std::sync::atomic::AtomicBool::new(false);
    let labels = Metrics::stream(&ctx.name);
    // A stream with KMSEncryptionConfig writes every object through the encrypting sink.
    let sink: Arc<dyn hosepipe_sinks::Destination> = match &obj.encryption {
        None => ctx.shared.sink.clone(),
        Some(key_id) => {
            let (metrics, stream) = (ctx.shared.metrics.clone(), ctx.name.clone());
            Arc::new(crate::crypto::sink::Encrypting {
                inner: ctx.shared.sink.clone(),
                keys: ctx.shared.keys.clone(),
                key_id: key_id.clone(),
                stream: ctx.name.clone(),
                cache: ctx.data_keys.clone(),
                reuse: ctx.shared.key_reuse,
                on_call: Arc::new(move |result| metrics.key_service_call(&stream, result)),
                sealed: Default::default(),
            })
        }
    };
    let result = crate::deliver::s3::write(
        &sink,
        &obj,
        ctx.shared.retention,
        now_ms,
        |reason, attempt, expired| {
            ctx.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
            ctx.shared.metrics.s3_failure(&ctx.name);
            tracing::warn!(key = %obj.key, attempt, reason, "S3 write failed; will retry");
            if expired && !expired_counted.swap(true, Ordering::Relaxed) {
                ctx.shared
                    .metrics
                    .spool_expired_records
                    .get_or_create(&labels)
                    .inc_by(records);
                tracing::error!(key = %obj.key, records, error_key = %obj.error_key, "records are past the retention age (or dynamic partitioning's retry duration) and still undelivered; trying the error output too");
            }
        },
    )
    .await;
    match result {
        DeliveryResult::Delivered { attempts } if obj.error_output.is_some() => {
            tracing::info!(key = %obj.key, attempts, records, "failed records written to the error output");
        }
        DeliveryResult::Delivered { attempts } => {
            ctx.shared.metrics.delivered_to_s3(
                &ctx.name,
                &obj.arrivals_ms(),
                obj.raw_bytes,
                now_ms(),
            );
            ctx.stats
                .delivered_records
                .fetch_add(records, Ordering::Relaxed);
            tracing::debug!(key = %obj.key, attempts, records, "delivered");
        }
        DeliveryResult::ErrorOutput { attempts, reason } => {
            tracing::error!(key = %obj.error_key, attempts, records, reason, "records past the retention age written to the error output");
        }
        DeliveryResult::Rejected { attempts, reason } => {
            ctx.shared
                .metrics
                .undelivered_records
                .get_or_create(&labels)
                .inc_by(records);
            tracing::error!(key = %obj.key, attempts, reason, records, "S3 refused the object for good; its records are not delivered");
        }
    }
    if obj.error_output.is_none() {
        ctx.settled_destination(obj.batch_id);
    }
    // Delivered, in the error output, or refused for good and logged: either way the spool may
    // let them go.
    ctx.ledger().settle_all(obj.records);
}
