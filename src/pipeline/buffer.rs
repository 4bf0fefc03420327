//! The buffer stage (before the processors, and before the destination): records in, batches
//! out by size, interval, memory pressure or close; the active-partition limit.

use super::*;

/// A buffer's hints under `v`; `None` when the stage passes records straight through (the
/// processing buffer of a stream without processors).
pub(super) fn limits_for(stage: Stage, v: &Versioned) -> Option<crate::buffer::Limits> {
    match stage {
        Stage::Destination => Some(v.spec.limits()),
        Stage::Processing => v.processing.as_ref().map(|p| p.spec.limits),
    }
}

/// The active-partition limit when `v` partitions dynamically.
pub(super) fn partition_limit(ctx: &StreamContext, stage: Stage, v: &Versioned) -> Option<usize> {
    let DestinationSpec::S3(s3) = &v.spec.destination else {
        return None;
    };
    (stage == Stage::Destination && s3.partitioning.is_some()).then(|| {
        ctx.shared
            .quotas
            .get(&ctx.name)
            .and_then(|q| q.active_partitions)
            .map_or(crate::config::DEFAULT_ACTIVE_PARTITIONS, |n| n.get()) as usize
    })
}

/// Buffers records (one buffer per partition) and flushes by size or interval; on close,
/// flushes what is left. Records of a new partition over the active-partition limit go to the
/// error output through `objects`.
pub(super) async fn buffer_stage(
    ctx: StreamContext,
    stage: Stage,
    mut config: watch::Receiver<Arc<Versioned>>,
    mut ingest: mpsc::Receiver<Vec<Record>>,
    batches: mpsc::Sender<Batch>,
    objects: mpsc::Sender<Delivery>,
) {
    let initial = limits_for(stage, &config.borrow());
    let mut passthrough = initial.is_none();
    let mut limit = partition_limit(&ctx, stage, &config.borrow());
    let mut buffer = Partitioned::new(initial.unwrap_or(crate::buffer::Limits {
        size_bytes: 1024 * 1024,
        interval: std::time::Duration::ZERO,
    }));
    let mut pending: VecDeque<Batch> = VecDeque::new();
    let mut refused: VecDeque<EncodedObject> = VecDeque::new();
    let mut open = true;
    let mut config_open = true;
    let mut pressure = ctx.shared.admission.pressure();
    let flushed = |batch: Batch, pending: &mut VecDeque<Batch>| {
        if stage == Stage::Destination {
            ctx.shared
                .metrics
                .buffer_flushes
                .get_or_create(&FlushLabels {
                    stream: ctx.name.clone(),
                    reason: batch.reason.as_str().to_string(),
                })
                .inc();
        }
        tracing::debug!(
            ?stage,
            batch = batch.id,
            reason = batch.reason.as_str(),
            records = batch.records.len(),
            bytes = batch.bytes,
            "flush"
        );
        ctx.stats.flushed(stage, &batch);
        pending.push_back(batch);
    };
    loop {
        let deadline = buffer.deadline();
        tokio::select! {
            biased;
            permit = batches.reserve(), if !pending.is_empty() => match permit {
                Ok(permit) => permit.send(pending.pop_front().expect("pending is not empty")),
                Err(_) => {
                    tracing::error!(?stage, batches = pending.len(), "the next stage is gone; records in these batches are not delivered");
                    return;
                }
            },
            permit = objects.reserve(), if !refused.is_empty() => match permit {
                Ok(permit) => permit.send(Delivery::Object(
                    refused.pop_front().expect("refused is not empty"),
                )),
                Err(_) => {
                    tracing::error!(?stage, "the deliver stage is gone; records over the partition limit are not delivered");
                    return;
                }
            },
            _ = sleep_until(deadline), if deadline.is_some() => {
                // Take what has already arrived into this batch (zero buffering under load
                // still makes objects of more than one request).
                let (now, wall) = (Instant::now(), now_ms());
                let mut over = Vec::new();
                for _ in 0..64 {
                    let Ok(records) = ingest.try_recv() else { break };
                    let records = after_restart(&ctx, stage, &config, records, false, &mut pending, &mut refused, &flushed);
                    push_all(&ctx, &mut buffer, limit, records, now, wall, &mut over, |b| flushed(b, &mut pending));
                }
                for batch in buffer.on_timer(Instant::now()) {
                    flushed(batch, &mut pending);
                }
                refused.extend(over_limit(&ctx, &config.borrow(), over));
            },
            Ok(()) = pressure.changed(), if !buffer.is_empty() => {
                // The readers are short of memory and this buffer holds some: let it go on.
                after_restart(&ctx, stage, &config, Vec::new(), true, &mut pending, &mut refused, &flushed);
                for batch in buffer.flush_all(FlushReason::Memory) {
                    flushed(batch, &mut pending);
                }
            },
            changed = config.changed(), if config_open => match changed {
                Ok(()) => {
                    let current = config.borrow_and_update().clone();
                    let limits = limits_for(stage, &current);
                    limit = partition_limit(&ctx, stage, &current);
                    passthrough = limits.is_none();
                    let flush = match limits {
                        Some(limits) => buffer.set_limits(limits, Instant::now(), now_ms()),
                        None => buffer.flush_all(FlushReason::Interval),
                    };
                    for batch in flush {
                        flushed(batch, &mut pending);
                    }
                }
                Err(_) => config_open = false,
            },
            msg = ingest.recv(), if open && !(passthrough && pending.len() >= 64) => match msg.map(|r| after_restart(&ctx, stage, &config, r, false, &mut pending, &mut refused, &flushed)) {
                Some(records) if passthrough => {
                    // Untracked: these records move on at once, and the next buffer counts them.
                    let bytes = records.iter().map(|r| r.data.len() as u64).sum();
                    pending.push_back(Batch { id: u64::MAX, records, bytes, reason: FlushReason::Size, partition: None, rewrite: None });
                }
                Some(records) => {
                    let (now, wall) = (Instant::now(), now_ms());
                    let mut over = Vec::new();
                    push_all(&ctx, &mut buffer, limit, records, now, wall, &mut over, |b| flushed(b, &mut pending));
                    refused.extend(over_limit(&ctx, &config.borrow(), over));
                }
                None => {
                    open = false;
                    after_restart(&ctx, stage, &config, Vec::new(), true, &mut pending, &mut refused, &flushed);
                    for batch in buffer.flush_all(FlushReason::Shutdown) {
                        flushed(batch, &mut pending);
                    }
                }
            },
            else => break,
        }
        ctx.stats.observe_buffer(stage, &buffer);
        if stage == Stage::Destination {
            let labels = Metrics::stream(&ctx.name);
            ctx.shared
                .metrics
                .buffered_bytes
                .get_or_create(&labels)
                .set(buffer.bytes() as i64);
            ctx.stats.observe_partitions(&buffer, limit);
            if let Some((active, limit)) = ctx.stats.active_partitions() {
                ctx.shared.metrics.partitions(&ctx.name, active, limit);
            }
        }
        if !open && pending.is_empty() && refused.is_empty() && buffer.is_empty() {
            break;
        }
    }
}

/// Applies what recovery found to records the buffer received (`force`: let objects being
/// made again go out as they are); the objects made again join the batches to encode or the
/// objects to deliver. Returns the records to buffer.
#[allow(clippy::too_many_arguments)]
fn after_restart(
    ctx: &StreamContext,
    stage: Stage,
    config: &watch::Receiver<Arc<Versioned>>,
    records: Vec<Record>,
    force: bool,
    pending: &mut VecDeque<Batch>,
    refused: &mut VecDeque<EncodedObject>,
    flushed: &impl Fn(Batch, &mut VecDeque<Batch>),
) -> Vec<Record> {
    if !ctx.recovering() {
        return records;
    }
    let current = config.borrow().clone();
    let mut remade = Vec::new();
    let processors = current.processing.is_some();
    let kept = ctx.recovered(stage, processors, records, force, &current, &mut remade);
    for r in remade {
        match r {
            super::recovery::Remade::Batch(batch) => flushed(batch, pending),
            super::recovery::Remade::Object(obj) => refused.push_back(obj),
        }
    }
    kept
}

/// Partitions with records buffered or flushed and not yet delivered (Firehose's active
/// partitions: an undeliverable partition stays active).
pub(super) fn active_partitions(ctx: &StreamContext, buffer: &Partitioned) -> usize {
    ctx.stats.count_active(buffer.partitions())
}

/// The error output for records refused by the active-partition limit.
pub(super) fn over_limit(
    ctx: &StreamContext,
    current: &Versioned,
    records: Vec<Record>,
) -> Option<EncodedObject> {
    if records.is_empty() {
        return None;
    }
    let spec = current.spec.s3_output();
    tracing::warn!(
        records = records.len(),
        "the active-partition limit is reached; records of new partitions go to the error output"
    );
    ctx.shared
        .metrics
        .partition_limit_records
        .get_or_create(&Metrics::stream(&ctx.name))
        .inc_by(records.len() as u64);
    let failed: Vec<FailedRecord> = records
        .into_iter()
        .map(|record| {
            let message = format!(
                "partition {} would exceed the active-partition limit",
                record
                    .partition
                    .as_ref()
                    .map(|p| p.describe())
                    .unwrap_or_default()
            );
            FailedRecord {
                record,
                reason: Reason {
                    attempts: 0,
                    code: PARTITION_LIMIT_EXCEEDED.into(),
                    message,
                    lambda_arn: None,
                    extra: None,
                    catalog_table: None,
                },
            }
        })
        .collect();
    Some(crate::encode::encode_error_output(
        failed,
        crate::encode::ErrorOutputType::ProcessingFailed,
        spec,
        &ctx.name,
        current.version,
        0,
        now_ms(),
    ))
}

/// The `errorCode` of records refused by the active-partition limit.
pub const PARTITION_LIMIT_EXCEEDED: &str = "DynamicPartitioning.ActivePartitionsLimitExceeded";

/// Adds records to the buffer, handing every batch they fill to `on_flush`. With an
/// active-partition `limit`, records that would open a partition over it go to `over`.
#[allow(clippy::too_many_arguments)]
pub(super) fn push_all(
    ctx: &StreamContext,
    buffer: &mut Partitioned,
    limit: Option<usize>,
    records: Vec<Record>,
    now: Instant,
    wall_ms: i64,
    over: &mut Vec<Record>,
    mut on_flush: impl FnMut(Batch),
) {
    for mut r in records {
        if limit.is_some() {
            // Records of one spool read share its buffer; scattered over partitions that flush
            // at different times, each would keep all of it alive.
            r.data = bytes::Bytes::copy_from_slice(&r.data);
        }
        if let Some(limit) = limit
            && !buffer.is_open(&r.partition)
            && !ctx.stats.is_in_flight(&r.partition)
            && active_partitions(ctx, buffer) >= limit
        {
            over.push(r);
            continue;
        }
        if let Some(batch) = buffer.push(r, now, wall_ms) {
            on_flush(batch);
        }
    }
}

pub(super) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
