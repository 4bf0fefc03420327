//! The encode stage: a batch named and compressed (or converted to Parquet) into objects on
//! the blocking pool; a batch for an HTTP destination goes on to the deliver stage as it is.

use super::*;

/// Names and compresses batches on the blocking pool, a few at a time.
pub(super) async fn encode_stage(
    ctx: StreamContext,
    config: watch::Receiver<Arc<Versioned>>,
    mut batches: mpsc::Receiver<Batch>,
    objects: mpsc::Sender<Delivery>,
) {
    let mut running: JoinSet<Vec<EncodedObject>> = JoinSet::new();
    let mut open = true;
    loop {
        tokio::select! {
            batch = batches.recv(), if open && running.len() < ENCODE_WORKERS => match batch {
                Some(batch) => {
                    let current = config.borrow().clone();
                    let ctx = ctx.clone();
                    let http = match &current.spec.destination {
                        DestinationSpec::S3(_) => {
                            running.spawn_blocking(move || encode_batch(&ctx, &current, batch));
                            None
                        }
                        _ => {
                            Some(Delivery::Http(current, batch))
                        }
                    };
                    if let Some(d) = http && objects.send(d).await.is_err() {
                        tracing::error!("deliver stage is gone");
                        return;
                    }
                }
                None => open = false,
            },
            Some(done) = running.join_next(), if !running.is_empty() => match done {
                Ok(objs) => {
                    for obj in objs {
                        if objects.send(Delivery::Object(obj)).await.is_err() {
                            tracing::error!("deliver stage is gone");
                            return;
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "encoding task panicked"),
            },
            else => break,
        }
    }
}

/// One batch's objects (blocking CPU work): compressed records, or a Parquet file plus the
/// error output of the records that did not fit the table.
pub(super) fn encode_batch(
    ctx: &StreamContext,
    current: &Versioned,
    batch: Batch,
) -> Vec<EncodedObject> {
    let spec = current.spec.s3_output();
    let failed = |error: &dyn std::fmt::Display, batch: Batch| {
        // Compression or Parquet writing into memory only fails on a bug.
        tracing::error!(batch = batch.id, records = batch.records.len(), error = %error, "encoding failed; these records are not delivered");
        ctx.settled_destination(batch.id);
        ctx.ledger().abandon(batch.records);
        Vec::new()
    };
    let id = batch.id;
    match (&current.converter, &spec.conversion) {
        (Some(converter), Some(conversion)) => {
            match crate::encode::encode_s3_converted(
                batch,
                spec,
                converter,
                &conversion.table,
                &ctx.name,
                current.version,
                now_ms(),
            ) {
                Ok(out) => {
                    ctx.shared
                        .metrics
                        .converted(&ctx.name, out.converted, out.failures);
                    if out.failures.0 > 0 {
                        tracing::warn!(
                            batch = id,
                            records = out.failures.0,
                            "records do not fit the table; writing them to the error output"
                        );
                    }
                    if out.object.is_none() {
                        ctx.settled_destination(id);
                    }
                    out.object.into_iter().chain(out.failed).collect()
                }
                Err((e, batch)) => failed(&e, batch),
            }
        }
        _ => match crate::encode::encode_s3(batch, spec, &ctx.name, current.version) {
            Ok(obj) => vec![obj],
            Err((e, batch)) => failed(&e, batch),
        },
    }
}

/// With `AllDocuments` / `AllEvents`: the backup object of a copy of every record of `batch`.
/// The spool keeps each record until both its delivery and its backup copy have settled.
pub(super) fn backup_all(
    ctx: &StreamContext,
    current: &Versioned,
    batch: &mut Batch,
) -> Option<EncodedObject> {
    let backup = current.spec.s3_output();
    let mut ledger = ctx.ledger();
    let copy = Batch {
        id: u64::MAX,
        records: batch.records.iter_mut().map(|r| ledger.copy(r)).collect(),
        bytes: batch.bytes,
        reason: batch.reason,
        partition: batch.partition.clone(),
        rewrite: None,
    };
    match crate::encode::encode_s3(copy, backup, &ctx.name, current.version) {
        Ok(obj) => Some(obj),
        Err((e, copy)) => {
            tracing::error!(error = %e, "cannot encode the backup of every record; this batch is not backed up");
            ledger.settle_all(copy.records);
            None
        }
    }
}
