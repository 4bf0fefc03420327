//! The process stage: a batch through the stream's processors on the blocking pool; what they
//! emit goes on, what fails becomes error output.

use super::*;

/// Runs batches through the stream's processors on the blocking pool, a few at a time; sends
/// what they emit on to the destination buffer and what fails to the error output.
pub(super) async fn process_stage(
    ctx: StreamContext,
    config: watch::Receiver<Arc<Versioned>>,
    mut batches: mpsc::Receiver<Batch>,
    records: mpsc::Sender<Vec<Record>>,
    objects: mpsc::Sender<Delivery>,
) {
    let mut running: JoinSet<(u64, Vec<Record>, Vec<EncodedObject>)> = JoinSet::new();
    let mut open = true;
    loop {
        tokio::select! {
            batch = batches.recv(), if open && running.len() < PROCESS_WORKERS => match batch {
                Some(batch) => {
                    let current = config.borrow().clone();
                    match current.processing.clone() {
                        Some(processing) => {
                            let ctx = ctx.clone();
                            running.spawn_blocking(move || process_batch(&ctx, &current, &processing, batch));
                        }
                        _ => {
                            let id = batch.id;
                            if records.send(batch.records).await.is_err() {
                                tracing::error!("buffer stage is gone");
                                return;
                            }
                            ctx.stats.settled(Stage::Processing, id);
                        }
                    }
                }
                None => open = false,
            },
            Some(done) = running.join_next(), if !running.is_empty() => match done {
                Ok((id, emitted, failed)) => {
                    for obj in failed {
                        if objects.send(Delivery::Object(obj)).await.is_err() {
                            tracing::error!("deliver stage is gone");
                            return;
                        }
                    }
                    let mut emitted = emitted.into_iter().peekable();
                    while emitted.peek().is_some() {
                        let chunk: Vec<Record> = emitted.by_ref().take(500).collect();
                        if records.send(chunk).await.is_err() {
                            tracing::error!("buffer stage is gone");
                            return;
                        }
                    }
                    ctx.stats.settled(Stage::Processing, id);
                }
                Err(e) => tracing::error!(error = %e, "processing task panicked"),
            },
            else => break,
        }
    }
}

/// Runs one batch through the processors (blocking). Returns the batch id, the records to
/// deliver, and the error-output objects for the records that failed.
pub(super) fn process_batch(
    ctx: &StreamContext,
    current: &Versioned,
    processing: &Processing,
    batch: Batch,
) -> (u64, Vec<Record>, Vec<EncodedObject>) {
    let started = std::time::Instant::now();
    let (fates, jq_time) = processing.run_timed(&batch.records);
    let seconds = started.elapsed().as_secs_f64();
    let spec = current.spec.s3_output();
    if processing.query.is_some() {
        ctx.shared
            .metrics
            .jq_processing_duration
            .get_or_create(&Metrics::stream(&ctx.name))
            .observe(jq_time.as_secs_f64());
    }
    // With dynamic partitioning each output record gets its partition here; one whose keys
    // are missing, or whose prefix does not evaluate, fails its input record.
    let now = now_ms();
    let mut partitioner = spec.partitioning.as_ref().map(|_| {
        let time = crate::encode::zoned(now, spec.time_zone);
        Partitioner::new(spec.prefix.partition_keys(), move |keys| {
            spec.prefix
                .render(&RenderContext {
                    time: &time,
                    error_output_type: None,
                    partition: Some(keys),
                })
                .map(drop)
                .map_err(|e| e.to_string())
        })
    });
    // A destination that routes records to tables (Iceberg) takes each record's route as its
    // partition: a record without one goes to the destination's single table.
    let mut router = current
        .spec
        .routes_records()
        .then(crate::partition::Router::default);
    let mut emitted = Vec::new();
    let mut failed: BTreeMap<&'static str, (crate::encode::ErrorOutputType, Vec<FailedRecord>)> =
        BTreeMap::new();
    let mut ledger = ctx.ledger();
    let (mut ok_bytes, mut dropped_bytes, mut failed_bytes) = (0, 0, 0);
    let (mut ok_records, mut dropped) = (0, 0);
    let id = batch.id;
    for (record, fate) in batch.records.into_iter().zip(fates) {
        let (fate, partitions) = match (fate, partitioner.as_mut()) {
            (Fate::Emit(out), Some(p)) => {
                match out
                    .iter()
                    .map(|e| p.assign(&e.query_keys, &e.partition_keys).map(Some))
                    .collect::<Result<Vec<_>, String>>()
                {
                    Ok(partitions) => (Fate::Emit(out), partitions),
                    Err(message) => (
                        Fate::Failed {
                            error_type: crate::encode::ErrorOutputType::ProcessingFailed,
                            failure: Failure::new(METADATA_EXTRACTION_FAILED, message),
                            attempts: 1,
                            lambda_arn: None,
                        },
                        Vec::new(),
                    ),
                }
            }
            (Fate::Emit(out), None) if router.is_some() => {
                let r = router.as_mut().expect("a router");
                let routes = out
                    .iter()
                    .map(|e| r.assign(&e.query_keys, &e.partition_keys))
                    .collect();
                (Fate::Emit(out), routes)
            }
            (fate, _) => (fate, Vec::new()),
        };
        match fate {
            Fate::Emit(out) if out.is_empty() => {
                dropped_bytes += record.data.len() as u64;
                dropped += 1;
                ledger.settle(record);
            }
            Fate::Emit(out) => {
                ok_records += 1;
                let mut partitions = partitions.into_iter();
                let parts = out
                    .into_iter()
                    .map(|e| {
                        ok_bytes += e.data.len() as u64;
                        (e.data, partitions.next().flatten())
                    })
                    .collect();
                ledger.remake(record, parts, &mut emitted);
            }
            Fate::Failed {
                error_type,
                failure,
                attempts,
                lambda_arn,
            } => {
                failed_bytes += record.data.len() as u64;
                failed
                    .entry(error_type.as_str())
                    .or_insert_with(|| (error_type, Vec::new()))
                    .1
                    .push(FailedRecord {
                        record,
                        reason: Reason {
                            attempts,
                            code: failure.code,
                            message: failure.message,
                            lambda_arn,
                            extra: None,
                            catalog_table: None,
                        },
                    });
            }
        }
    }
    let failed_records: u64 = failed.values().map(|(_, v)| v.len() as u64).sum();
    ctx.shared.metrics.processed(
        &ctx.name,
        seconds,
        &[
            ("ok", ok_records, ok_bytes),
            ("dropped", dropped, dropped_bytes),
            ("failed", failed_records, failed_bytes),
        ],
    );
    if failed_records > 0 {
        tracing::warn!(
            batch = id,
            records = failed_records,
            "records failed processing; writing them to the error output"
        );
    }
    // The memory budget now holds what goes on instead of what came in.
    drop(ledger);
    let objects = failed
        .into_values()
        .map(|(error_type, records)| {
            crate::encode::encode_error_output(
                records,
                error_type,
                spec,
                &ctx.name,
                current.version,
                id,
                now,
            )
        })
        .collect();
    (id, emitted, objects)
}
