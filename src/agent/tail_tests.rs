use std::io::Write;
use std::path::Path;

use super::*;
use crate::agent::checkpoint::Entry;

fn flow(dir: &Path, multi_line: Option<&str>) -> Arc<Flow> {
    Arc::new(Flow {
        id: "test".into(),
        file_pattern: format!("{}/app.log*", dir.display()),
        delivery_stream: "s".into(),
        initial_position: InitialPosition::StartOfFile,
        max_buffer_age: Duration::from_secs(1),
        max_buffer_records: 500,
        max_buffer_bytes: 4 << 20,
        multi_line_start: multi_line.map(|p| regex::Regex::new(p).unwrap()),
        skip_header_lines: 0,
        truncated_record_terminator: b"\n".to_vec(),
        file_footer: None,
        poll_interval: Duration::from_millis(10),
        retry_initial_backoff: Duration::from_millis(10),
        retry_max_backoff: Duration::from_millis(100),
        publish_queue_capacity: 10,
        aggregated_record_size: 0,
        converters: Vec::new(),
    })
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn truncate(path: &Path) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(0)
        .unwrap();
}

fn poll(t: &mut Tailer) -> Vec<Record> {
    let mut out = Vec::new();
    assert!(t.poll(&mut |r| {
        out.push(r);
        true
    }));
    out
}

fn texts(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.data.clone()).unwrap())
        .collect()
}

fn empty_checkpoints(dir: &Path) -> Checkpoints {
    Checkpoints::open(&dir.join("cp"), Duration::from_secs(3600)).unwrap()
}

/// 80 bytes per line, so a file's first bytes are long enough to fingerprint a copy.
fn line(n: usize) -> String {
    format!("{n:06} {}\n", "x".repeat(73))
}

#[test]
fn appends_partial_lines_and_rename_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, "one\ntw");
    let mut t = Tailer::new(flow(dir.path(), None), &empty_checkpoints(dir.path()));
    let r = poll(&mut t);
    assert_eq!(texts(&r), ["one\n"]);
    assert_eq!(r[0].end, 4);
    append(&log, "o\nthree\n");
    assert_eq!(texts(&poll(&mut t)), ["two\n", "three\n"]);
    // logrotate's default: rename, then create; the writer may still append to the old one.
    std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    append(&dir.path().join("app.log.1"), "four\n");
    append(&log, "five\n");
    assert_eq!(texts(&poll(&mut t)), ["four\n", "five\n"]);
    assert!(poll(&mut t).is_empty(), "nothing is read twice");
}

#[test]
fn an_unfinished_line_is_sent_after_the_flush_age() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, "no newline yet");
    let mut t = Tailer::new(flow(dir.path(), None), &empty_checkpoints(dir.path()));
    assert!(poll(&mut t).is_empty());
    std::thread::sleep(Duration::from_millis(1100));
    let r = poll(&mut t);
    assert_eq!(texts(&r), ["no newline yet"]);
    append(&log, " and the rest\n");
    assert_eq!(texts(&poll(&mut t)), [" and the rest\n"]);
}

#[test]
fn copytruncate_reads_the_copy_from_where_the_original_was() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, &(line(1) + &line(2)));
    let mut t = Tailer::new(flow(dir.path(), None), &empty_checkpoints(dir.path()));
    assert_eq!(poll(&mut t).len(), 2);
    // Written after the last poll, then copied and truncated before the next one.
    append(&log, &line(3));
    std::fs::copy(&log, dir.path().join("app.log.1")).unwrap();
    truncate(&log);
    append(&log, &line(4));
    assert_eq!(texts(&poll(&mut t)), [line(3), line(4)]);
    assert!(poll(&mut t).is_empty());
}

#[test]
fn copy_seen_before_the_truncation_is_not_read_twice() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, &(line(1) + &line(2)));
    let mut t = Tailer::new(flow(dir.path(), None), &empty_checkpoints(dir.path()));
    assert_eq!(poll(&mut t).len(), 2);
    // Appended, copied, and seen by a poll before the truncation: read once, from the original.
    append(&log, &line(3));
    std::fs::copy(&log, dir.path().join("app.log.1")).unwrap();
    assert_eq!(
        texts(&poll(&mut t)),
        [line(3)],
        "the copy repeats the original"
    );
    append(&log, &line(4));
    std::fs::copy(&log, dir.path().join("app.log.2")).unwrap();
    truncate(&log);
    append(&log, &line(5));
    // line 4 was only ever read from a copy.
    assert_eq!(texts(&poll(&mut t)), [line(4), line(5)]);
    assert!(poll(&mut t).is_empty());
}

#[test]
fn truncate_and_refill_between_polls_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, &line(1));
    let mut t = Tailer::new(flow(dir.path(), None), &empty_checkpoints(dir.path()));
    assert_eq!(poll(&mut t).len(), 1);
    // Same size again before the next poll: only the fingerprint tells.
    std::fs::write(&log, line(2)).unwrap();
    assert_eq!(texts(&poll(&mut t)), [line(2)]);
}

#[test]
fn resumes_from_a_checkpoint_and_starts_new_files_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, &(line(1) + &line(2)));
    let mut cp = empty_checkpoints(dir.path());
    let first = {
        let mut t = Tailer::new(flow(dir.path(), None), &cp);
        poll(&mut t).remove(0)
    };
    cp.advance(
        "test",
        Entry {
            path: first.path.clone(),
            id: first.file,
            fingerprint: first.fingerprint,
            offset: first.end,
            updated: 0,
        },
    );
    std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    append(&log, &line(3));
    let mut t = Tailer::new(flow(dir.path(), None), &cp);
    assert_eq!(texts(&poll(&mut t)), [line(2), line(3)]);
}

#[test]
fn end_of_file_skips_what_exists_on_the_first_run_only() {
    let dir = tempfile::tempdir().unwrap();
    append(&dir.path().join("app.log"), "old\n");
    let mut f = (*flow(dir.path(), None)).clone();
    f.initial_position = InitialPosition::EndOfFile;
    let mut t = Tailer::new(Arc::new(f), &empty_checkpoints(dir.path()));
    assert!(poll(&mut t).is_empty());
    let skipped = t.take_skipped();
    assert_eq!(
        skipped.len(),
        1,
        "checkpointed at its end, so a restart skips it too"
    );
    assert_eq!(skipped[0].offset, 4);
    append(&dir.path().join("app.log"), "new\n");
    append(&dir.path().join("app.log.2"), "other new file\n");
    assert_eq!(texts(&poll(&mut t)).len(), 2);
}

#[test]
fn multi_line_records_headers_and_footers() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let mut f = (*flow(dir.path(), Some(r"^\d{4}-"))).clone();
    f.skip_header_lines = 1;
    f.file_footer = Some(regex::Regex::new("^END$").unwrap());
    append(
        &log,
        "HEADER\n2024-01-01 boom\n  at a\n  at b\n2024-01-01 ok\n",
    );
    let mut t = Tailer::new(Arc::new(f), &empty_checkpoints(dir.path()));
    let r = poll(&mut t);
    assert_eq!(texts(&r), ["2024-01-01 boom\n  at a\n  at b\n"]);
    assert_eq!(
        r[0].end,
        7 + 16 + 7 + 7,
        "the record ends where the next starts"
    );
    append(&log, "  more\nEND\nafter the footer\n");
    assert_eq!(texts(&poll(&mut t)), ["2024-01-01 ok\n  more\n"]);
}

#[test]
fn an_over_long_line_is_truncated_with_the_terminator() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let mut f = (*flow(dir.path(), None)).clone();
    f.truncated_record_terminator = b"<cut>\n".to_vec();
    append(
        &log,
        &format!("{}\nnext\n", "y".repeat(MAX_RECORD_BYTES + 10)),
    );
    let mut t = Tailer::new(Arc::new(f), &empty_checkpoints(dir.path()));
    let r = poll(&mut t);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].data.len(), MAX_RECORD_BYTES);
    assert!(r[0].data.ends_with(b"y<cut>\n"));
    assert_eq!(r[1].data, b"next\n");
}
