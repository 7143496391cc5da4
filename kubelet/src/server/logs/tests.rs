use super::*;
use std::io::Write;

fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn options_parse_and_validate() {
    let now = Utc::now();
    let options = LogOptions::parse(
        &query(&[
            ("follow", "true"),
            ("tailLines", "5"),
            ("sinceSeconds", "10"),
            ("limitBytes", "7"),
        ]),
        now,
    )
    .unwrap();
    assert!(options.follow);
    assert_eq!(options.tail_lines, Some(5));
    assert_eq!(options.since, Some(now - chrono::Duration::seconds(10)));
    assert_eq!(options.limit_bytes, Some(7));
    assert!(LogOptions::parse(&query(&[("tailLines", "-1")]), now).is_err());
    assert!(LogOptions::parse(&query(&[("tailLines", "x")]), now).is_err());
    assert!(LogOptions::parse(&query(&[("sinceSeconds", "0")]), now).is_err());
    let century = LogOptions::parse(&query(&[("sinceSeconds", "3155760000")]), now).unwrap();
    assert_eq!(
        century.since,
        Some(now - chrono::Duration::seconds(3_155_760_000))
    );
    assert!(LogOptions::parse(
        &query(&[("sinceSeconds", "1"), ("sinceTime", "2024-01-01T00:00:00Z")]),
        now
    )
    .is_err());
}

#[test]
fn huge_since_seconds_is_a_bad_request_not_an_overflow() {
    let now = Utc::now();
    // Past chrono's Duration range, past the date range, and just past year 1.
    let just_past_year_one = (now.timestamp() + 62_135_596_800 + 1).to_string();
    for huge in ["9223372036854775807", "10000000000000", &just_past_year_one] {
        match LogOptions::parse(&query(&[("sinceSeconds", huge)]), now) {
            Err(RequestError::BadRequest(message)) => {
                assert!(
                    message.starts_with(&format!("sinceSeconds: Invalid value: {huge}:")),
                    "{message}"
                )
            }
            other => panic!("sinceSeconds={huge}: {other:?}"),
        }
    }
}

/// Writes `lines` numbered lines to `live`, rotating at 64 KiB into at most
/// `max_files` files as it goes, the way the rotator would while a container writes.
fn write_rotated(live: &std::path::Path, lines: std::ops::Range<usize>, max_files: usize) {
    let policy = crate::logrotate::RotationPolicy::new(64 * 1024, max_files).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(live)
        .unwrap();
    for i in lines {
        writeln!(file, "line {i}").unwrap();
        if i % 1000 == 0 {
            crate::logrotate::rotate(live, &policy, &crate::logrotate::CollapseRange).unwrap();
        }
    }
}

fn read_range(cursor: &StreamCursor, from: u64, to: u64) -> String {
    let mut content = Vec::new();
    let mut position = from;
    let mut buf = vec![0u8; 4096];
    while position < to {
        let want = usize::try_from(to - position).unwrap().min(buf.len());
        let read = cursor.stream.read_at(position, &mut buf[..want]).unwrap();
        assert_eq!(read.start, position, "nothing rotated away in this range");
        content.extend_from_slice(&buf[..read.len]);
        position += read.len as u64;
    }
    String::from_utf8(content).unwrap()
}

#[tokio::test]
async fn last_lines_are_found_backwards_across_chunks_and_rotated_files() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("0.stdout");
    write_rotated(&live, 0..20_000, 100);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&live)
        .unwrap()
        .write_all(b"partial")
        .unwrap();
    let cursor = StreamCursor::new(0, live.clone());
    let pieces = cursor.stream.pieces().unwrap();
    assert!(pieces.len() > 2, "rotated: {pieces:?}");
    let end = cursor.stream.end().unwrap();
    let (start, found) = cursor.tail_start(0, end, 12_000).await.unwrap();
    assert_eq!(found, 12_000);
    let mut want: String = (8_001..20_000).map(|i| format!("line {i}\n")).collect();
    want.push_str("partial");
    assert_eq!(read_range(&cursor, start, end), want);
    // More lines than there are: all of them, and how many.
    let (start, found) = cursor.tail_start(0, end, 30_000).await.unwrap();
    assert_eq!((start, found), (0, 20_001));
}

#[tokio::test]
async fn a_whole_rotated_stream_is_sent_in_order_in_bounded_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("0.stdout");
    write_rotated(&live, 0..30_000, 100);
    let (sender, mut receiver) = mpsc::channel(4096);
    let mut emitter = Emitter::new(sender, false, None);
    let mut cursor = StreamCursor::new(0, live);
    let end = cursor.stream.end().unwrap();
    assert!(cursor
        .send_until(end, u64::MAX, false, false, &mut emitter)
        .await
        .unwrap());
    drop(emitter);
    let mut content = Vec::new();
    while let Some(chunk) = receiver.recv().await {
        assert!(chunk.len() <= READ_CHUNK);
        content.extend_from_slice(&chunk);
    }
    let want: String = (0..30_000).map(|i| format!("line {i}\n")).collect();
    assert_eq!(String::from_utf8(content).unwrap(), want);
}

#[tokio::test]
async fn held_back_lines_complete_with_the_next_read_and_streams_never_share_a_line() {
    let (sender, mut receiver) = mpsc::channel(64);
    let mut emitter = Emitter::new(sender, false, None);
    let mut stdout = StreamCursor::new(0, PathBuf::from("/nonexistent/0.stdout"));
    let now = Utc::now();
    assert!(
        stdout
            .send_complete_lines(now, b"a\nb".to_vec(), &mut emitter)
            .await
    );
    assert!(
        stdout
            .send_complete_lines(now, b"c\n".to_vec(), &mut emitter)
            .await
    );
    // A line left open by stderr is ended before stdout's next line.
    assert!(emitter.emit(1, now, b"err-partial".to_vec()).await);
    assert!(emitter.emit(0, now, b"d\n".to_vec()).await);
    drop(emitter);
    let mut content = Vec::new();
    while let Some(chunk) = receiver.recv().await {
        content.extend_from_slice(&chunk);
    }
    assert_eq!(
        String::from_utf8(content).unwrap(),
        "a\nbc\nerr-partial\nd\n"
    );
}

#[tokio::test]
async fn timestamps_start_lines_only_and_limit_bytes_cuts() {
    let (sender, mut receiver) = mpsc::channel(64);
    let mut emitter = Emitter::new(sender, true, Some(54));
    let at = DateTime::parse_from_rfc3339("2024-05-06T07:08:09Z")
        .unwrap()
        .with_timezone(&Utc);
    assert!(emitter.emit(0, at, b"one\ntw".to_vec()).await);
    assert!(!emitter.emit(0, at, b"o\nthree\n".to_vec()).await);
    drop(emitter);
    let mut content = Vec::new();
    while let Some(chunk) = receiver.recv().await {
        content.extend_from_slice(&chunk);
    }
    assert_eq!(
        String::from_utf8(content).unwrap(),
        "2024-05-06T07:08:09Z one\n2024-05-06T07:08:09Z two\n2024"
    );
}
