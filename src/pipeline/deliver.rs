//! The deliver stage: objects written to S3 with retries (and, past the retention age, to the
//! error output); batches of HTTP destinations (OpenSearch, Splunk) delivered, then the objects
//! that follow from them.

use super::encode::backup_all;
use super::*;
use crate::deliver::blocked::Change;
use crate::deliver::{HttpOutcome, Sending};

/// Counts and settles what an HTTP destination took, and turns what it did not into its error
/// output in the backup bucket.
fn after_http_delivery(
    ctx: &StreamContext,
    current: &Versioned,
    batch_id: u64,
    outcome: HttpOutcome,
    dest_metrics: &crate::metrics::DestinationMetrics,
) -> Option<EncodedObject> {
    let HttpOutcome {
        delivered,
        failed,
        error_type,
        latency_per_record,
        error_prefix,
    } = outcome;
    let bytes: u64 = delivered.iter().map(|r| r.data.len() as u64).sum();
    ctx.shared.metrics.delivered_http(
        dest_metrics,
        &ctx.name,
        &delivered.iter().map(|r| r.arrival_ms).collect::<Vec<_>>(),
        bytes,
        now_ms(),
        latency_per_record,
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
        code = %failed[0].reason.code,
        first_reason = %failed[0].reason.message,
        "records the destination did not take go to the S3 backup"
    );
    let mut backup = std::borrow::Cow::Borrowed(current.spec.s3_output());
    if let Some(prefix) = error_prefix {
        backup.to_mut().error_prefix = prefix;
    }
    Some(crate::encode::encode_error_output(
        failed,
        error_type,
        &backup,
        &ctx.name,
        current.version,
        batch_id,
        now_ms(),
    ))
}

/// Counts records written to the error output (metrics and `/status`).
fn to_error_output(ctx: &StreamContext, error_type: crate::encode::ErrorOutputType, records: u64) {
    ctx.shared
        .metrics
        .error_output(&ctx.name, error_type.as_str(), records);
    ctx.stats
        .error_output_records
        .fetch_add(records, Ordering::Relaxed);
}

/// A failed S3 attempt: a cause retrying cannot fix is logged once (an operator must act) and
/// counted after; other failures are warnings. Either way the records wait for the next attempt.
fn blocked_or_retried(ctx: &StreamContext, key: &str, reason: &str, attempt: u32) {
    match ctx.stats.blocked.failed(reason, now_ms()) {
        Change::Started(cause) => {
            ctx.shared
                .metrics
                .delivery_blocked(&ctx.name, cause.as_str(), true);
            tracing::error!(
                key,
                attempt,
                reason = cause.as_str(),
                error = reason,
                "S3 delivery is blocked ({}): {}; records wait in the spool and delivery resumes once it is fixed (repeats are counted in hosepipe_delivery_blocked_attempts_total, not logged)",
                cause.as_str(),
                cause.advice()
            );
        }
        Change::Again(cause) => {
            ctx.shared
                .metrics
                .delivery_blocked(&ctx.name, cause.as_str(), false);
            tracing::debug!(
                key,
                attempt,
                reason = cause.as_str(),
                "S3 delivery still blocked"
            );
        }
        _ => tracing::warn!(key, attempt, reason, "S3 write failed; will retry"),
    }
}

/// Delivers a few at a time: objects to S3, each retried until it is written; batches of HTTP
/// destinations, then the objects that follow from them (failed records, backups).
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

/// An object goes to S3. A batch of an HTTP destination goes to it (`deliver::send_http` picks
/// which); then the objects that follow: with `AllDocuments` / `AllEvents` the backup of every
/// record, and the records the destination did not take.
async fn deliver(ctx: &StreamContext, work: Delivery) {
    let (current, mut batch) = match work {
        Delivery::Object(obj) => return deliver_one(ctx, obj, true).await,
        Delivery::Http(current, batch) => (current, batch),
    };
    let mut follow = Vec::new();
    if current.spec.backs_up_all() {
        follow.extend(backup_all(ctx, &current, &mut batch));
    }
    let records = std::mem::take(&mut batch.records);
    let sending = Sending {
        stream: &ctx.name,
        batch: batch.id,
        id_base: &ctx.id_base,
        channel: &ctx.channel,
        metrics: &ctx.shared.metrics,
        failed_attempts: &ctx.stats.failed_attempts,
        log: Some(&ctx.spool),
    };
    let spec = &current.spec.destination;
    let outcome = crate::deliver::send_http(spec, &ctx.shared.clients, records, &sending).await;
    let dest_metrics = ctx.shared.metrics.destination(spec.kind());
    follow.extend(after_http_delivery(
        ctx,
        &current,
        batch.id,
        outcome,
        dest_metrics,
    ));
    // Not journaled: a record here is in the destination too, and recovery must not skip it
    // there (so these objects are at-least-once).
    for obj in follow {
        deliver_one(ctx, obj, false).await;
    }
}

/// Writes one object (journaled first when `journal`, so that after a crash its records are
/// not written to a second object), then settles its records.
async fn deliver_one(ctx: &StreamContext, obj: EncodedObject, journal: bool) {
    let rewritten = obj.journal_id.is_some();
    let journaled = match journal {
        true => super::recovery::intend(ctx, &obj).await,
        false => None,
    };
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
            blocked_or_retried(ctx, &obj.key, reason, attempt);
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
    if matches!(result, DeliveryResult::Delivered { .. })
        && let Change::Cleared(cause) = ctx.stats.blocked.succeeded()
    {
        ctx.shared.metrics.unblocked(&ctx.name);
        tracing::info!(reason = cause.as_str(), "S3 delivery is no longer blocked");
    }
    match result {
        DeliveryResult::Delivered { attempts } if let Some(error_type) = obj.error_output => {
            to_error_output(ctx, error_type, records);
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
            to_error_output(
                ctx,
                crate::encode::ErrorOutputType::RetentionExpired,
                records,
            );
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
    if let Some(id) = journaled {
        super::recovery::done(ctx, id, rewritten).await;
    }
}
