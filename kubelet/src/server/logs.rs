//! `GET /containerLogs`: serving a container's output from its two log streams.
//!
//! The runtime appends stdout and stderr to separate files and records nothing else, so
//! neither the true interleaving of the two streams nor per-line times exist. Each stream
//! is its rotated segments (oldest first) and its live file, read as one byte sequence by
//! stream position ([`crate::logrotate::LogStream`]), so rotation never splits or repeats
//! a line. The choices:
//!
//! - Existing content: the stream whose live file was modified longer ago comes first
//!   (stdout first on a tie), each stream in order. A line is stamped with the modification
//!   time of the file it starts in, so `timestamps=true` output never goes back in time and
//!   `sinceSeconds`/`sinceTime` keep or drop a whole file's old content. `tailLines` applies
//!   to this combined output and is found by reading backwards in chunks.
//! - Memory stays bounded whatever the size: content is read in chunks (each a short
//!   blocking read) and sent through a small channel, so a slow client slows the reading
//!   and holds no thread.
//! - Following: after the existing content, both streams are polled and new lines are sent
//!   as they appear, stamped with the time they were read. The stream ends when the client
//!   goes away, or when the container is no longer running and both streams are drained. A
//!   container that is not running when the request arrives is served as if not following.
//! - A final line without a newline is sent as is at the very end of the output; elsewhere
//!   it gets a newline so it does not run into the other stream's next line.
//! - `limitBytes` counts the bytes sent, timestamps included, and cuts the last line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use rkube_cri::{ContainerRuntime, ContainerState, LogPaths, RuntimeError};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{query_flag, query_value, rfc3339_nano, KubeletApi, RequestError};
use crate::logrotate::{LogStream, Piece};

/// How often files are checked for new output while following.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often the runtime is asked whether the followed container still runs.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(1);
/// The most read from one file in one poll, so a burst cannot take all memory.
const MAX_READ_PER_POLL: u64 = 1 << 20;
/// Chunk size when reading backwards for `tailLines` or looking for a line's end.
const TAIL_CHUNK: usize = 64 * 1024;
/// Chunk size of forward reads (one message to the client).
const READ_CHUNK: usize = 256 * 1024;
/// While following, an unfinished line longer than this is sent in parts.
const MAX_PENDING_LINE: usize = 1 << 20;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LogOptions {
    pub follow: bool,
    pub tail_lines: Option<usize>,
    pub since: Option<DateTime<Utc>>,
    pub timestamps: bool,
    pub previous: bool,
    pub limit_bytes: Option<u64>,
}

impl LogOptions {
    /// Parses the query like upstream's PodLogOptions validation.
    pub(crate) fn parse(
        query: &[(String, String)],
        now: DateTime<Utc>,
    ) -> Result<Self, RequestError> {
        let number = |key: &str| -> Result<Option<i64>, RequestError> {
            match query_value(query, key) {
                None | Some("") => Ok(None),
                Some(raw) => raw.parse::<i64>().map(Some).map_err(|_| {
                    RequestError::BadRequest(format!(
                        "invalid value {raw:?} for query parameter {key}"
                    ))
                }),
            }
        };
        let tail_lines = match number("tailLines")? {
            Some(n) if n < 0 => {
                return Err(RequestError::BadRequest(
                    "tailLines: Invalid value: must be greater than or equal to 0".into(),
                ))
            }
            other => other.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        };
        let limit_bytes = match number("limitBytes")? {
            Some(n) if n < 1 => {
                return Err(RequestError::BadRequest(
                    "limitBytes: Invalid value: must be greater than 0".into(),
                ))
            }
            other => other.map(|n| n.unsigned_abs()),
        };
        let since_seconds = match number("sinceSeconds")? {
            Some(n) if n < 1 => {
                return Err(RequestError::BadRequest(
                    "sinceSeconds: Invalid value: must be greater than 0".into(),
                ))
            }
            other => other,
        };
        let since_time = match query_value(query, "sinceTime") {
            None | Some("") => None,
            Some(raw) => Some(
                DateTime::parse_from_rfc3339(raw)
                    .map_err(|_| {
                        RequestError::BadRequest(format!(
                            "invalid value {raw:?} for query parameter sinceTime"
                        ))
                    })?
                    .with_timezone(&Utc),
            ),
        };
        let since = match (since_seconds, since_time) {
            (Some(_), Some(_)) => {
                return Err(RequestError::BadRequest(
                    "at most one of `sinceTime` or `sinceSeconds` may be specified".into(),
                ))
            }
            (Some(seconds), None) => Some(since_seconds_ago(now, seconds)?),
            (None, time) => time,
        };
        Ok(LogOptions {
            follow: query_flag(query, "follow"),
            tail_lines,
            since,
            timestamps: query_flag(query, "timestamps"),
            previous: query_flag(query, "previous"),
            limit_bytes,
        })
    }
}

/// `now - seconds`, or a 400 when that is before the earliest time a timestamp can name
/// (year 1, Go's zero time), rather than an arithmetic overflow.
fn since_seconds_ago(now: DateTime<Utc>, seconds: i64) -> Result<DateTime<Utc>, RequestError> {
    let earliest = DateTime::<Utc>::from_naive_utc_and_offset(
        chrono::NaiveDate::from_ymd_opt(1, 1, 1)
            .and_then(|day| day.and_hms_opt(0, 0, 0))
            .unwrap_or(chrono::NaiveDateTime::MIN),
        Utc,
    );
    let max = (now - earliest).num_seconds();
    chrono::Duration::try_seconds(seconds)
        .and_then(|ago| now.checked_sub_signed(ago))
        .filter(|since| *since >= earliest)
        .ok_or_else(|| {
            RequestError::BadRequest(format!(
                "sinceSeconds: Invalid value: {seconds}: must be less than or equal to {max} \
                 (the seconds since 0001-01-01T00:00:00Z)"
            ))
        })
}

/// A container whose end finishes a follow.
pub(crate) struct Followed {
    pub id: String,
    pub runtime: Arc<dyn ContainerRuntime>,
}

impl Followed {
    async fn has_stopped(&self) -> bool {
        match self.runtime.status(&self.id).await {
            Ok(info) => !matches!(
                info.state,
                ContainerState::Running { .. } | ContainerState::Created
            ),
            Err(RuntimeError::NotFound(_)) => true,
            // A runtime hiccup must not end a long follow; the next check decides.
            Err(err) => {
                tracing::debug!(container = %self.id, error = %err, "container status for log follow");
                false
            }
        }
    }
}

pub(crate) async fn serve(
    api: Arc<dyn KubeletApi>,
    namespace: String,
    pod: String,
    container: Option<String>,
    query: Vec<(String, String)>,
) -> Response {
    match start(api, &namespace, &pod, container.as_deref(), &query).await {
        Ok(body) => ([(header::CONTENT_TYPE, "text/plain")], body).into_response(),
        Err(err) => err.into_response(),
    }
}

async fn start(
    api: Arc<dyn KubeletApi>,
    namespace: &str,
    pod: &str,
    container: Option<&str>,
    query: &[(String, String)],
) -> Result<Body, RequestError> {
    let options = LogOptions::parse(query, Utc::now())?;
    let paths = api
        .log_paths(namespace, pod, container, options.previous)
        .await?;
    let followed = if options.follow && !options.previous {
        match api.running_container(namespace, pod, container).await {
            Ok(id) => api.runtime_for(&id).map(|runtime| Followed { id, runtime }),
            // Not running: upstream serves what is there and ends.
            Err(_) => None,
        }
    } else {
        None
    };
    let (sender, receiver) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        if let Err(err) = write_logs(paths, options, followed, sender).await {
            tracing::warn!(error = %err, "reading container logs");
        }
    });
    let chunks = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), receiver))
    });
    Ok(Body::from_stream(chunks))
}

/// Sends output to the client, adding timestamps and enforcing `limitBytes`.
struct Emitter {
    out: mpsc::Sender<Bytes>,
    timestamps: bool,
    remaining: Option<u64>,
    /// The stream whose last line sent has no newline yet.
    open: Option<usize>,
}

impl Emitter {
    fn new(out: mpsc::Sender<Bytes>, timestamps: bool, limit_bytes: Option<u64>) -> Self {
        Emitter {
            out,
            timestamps,
            remaining: limit_bytes,
            open: None,
        }
    }

    /// Sends `data` of stream `stream`, each line that starts in it stamped with `at`. A
    /// line another stream left unfinished gets a newline first, so the two never run into
    /// one line. False when nothing more may be sent (client gone or limit reached).
    async fn emit(&mut self, stream: usize, at: DateTime<Utc>, data: Vec<u8>) -> bool {
        if data.is_empty() {
            return true;
        }
        let ends_open = data.last() != Some(&b'\n');
        let separate = self.open.is_some_and(|open| open != stream);
        let mut chunk = if self.timestamps || separate {
            let mut chunk = Vec::with_capacity(data.len() + 64);
            if separate {
                chunk.push(b'\n');
                self.open = None;
            }
            if self.timestamps {
                let stamp = rfc3339_nano(at);
                for line in data.split_inclusive(|b| *b == b'\n') {
                    if self.open.is_none() {
                        chunk.extend_from_slice(stamp.as_bytes());
                        chunk.push(b' ');
                    }
                    chunk.extend_from_slice(line);
                    self.open = (line.last() != Some(&b'\n')).then_some(stream);
                }
            } else {
                chunk.extend_from_slice(&data);
            }
            chunk
        } else {
            // The common case sends the bytes as read, without copying them.
            data
        };
        self.open = ends_open.then_some(stream);
        if let Some(remaining) = self.remaining.as_mut() {
            let allowed = usize::try_from(*remaining).unwrap_or(usize::MAX);
            chunk.truncate(allowed);
            *remaining -= chunk.len() as u64;
        }
        if !chunk.is_empty() && self.out.send(Bytes::from(chunk)).await.is_err() {
            return false;
        }
        self.remaining != Some(0)
    }
}

/// Bytes read from a stream, and the file metadata that stamps them.
struct Chunk {
    start: u64,
    data: Vec<u8>,
    modified: DateTime<Utc>,
}

/// Reads up to `max` bytes of `stream` at `position` on a blocking thread: each read is
/// short, so no request holds a thread while it waits for its client.
async fn read_chunk(stream: &LogStream, position: u64, max: usize) -> std::io::Result<Chunk> {
    let stream = stream.clone();
    tokio::task::spawn_blocking(move || {
        let mut data = vec![0u8; max];
        let read = stream.read_at(position, &mut data)?;
        data.truncate(read.len);
        Ok(Chunk {
            start: read.start,
            data,
            modified: read.modified.into(),
        })
    })
    .await
    .map_err(std::io::Error::other)?
}

async fn stream_pieces(stream: &LogStream) -> std::io::Result<Vec<Piece>> {
    let stream = stream.clone();
    tokio::task::spawn_blocking(move || stream.pieces())
        .await
        .map_err(std::io::Error::other)?
}

async fn stream_end(stream: &LogStream) -> std::io::Result<u64> {
    Ok(stream_pieces(stream).await?.last().map_or(0, Piece::end))
}

/// One output stream being served: where it is read from and the unfinished line held
/// back while following.
struct StreamCursor {
    index: usize,
    stream: LogStream,
    position: u64,
    pending: Vec<u8>,
}

impl StreamCursor {
    fn new(index: usize, live: PathBuf) -> Self {
        StreamCursor {
            index,
            stream: LogStream::new(live),
            position: 0,
            pending: Vec::new(),
        }
    }

    /// Sends the stream's bytes from `position` up to `end` (at most `budget` bytes),
    /// stamped with their file's modification time, or with the time of reading when
    /// `read_time`. With `hold_back`, an unfinished last line waits in `pending` for the
    /// rest of it. Returns false when nothing more may be sent.
    async fn send_until(
        &mut self,
        end: u64,
        budget: u64,
        read_time: bool,
        hold_back: bool,
        emitter: &mut Emitter,
    ) -> std::io::Result<bool> {
        let mut sent = 0u64;
        while self.position < end && sent < budget {
            let want = usize::try_from((end - self.position).min(budget - sent))
                .map_or(READ_CHUNK, |left| left.min(READ_CHUNK));
            let chunk = read_chunk(&self.stream, self.position, want).await?;
            if chunk.data.is_empty() {
                break;
            }
            self.position = chunk.start + chunk.data.len() as u64;
            sent += chunk.data.len() as u64;
            let at = if read_time {
                Utc::now()
            } else {
                chunk.modified
            };
            let flowing = if hold_back {
                self.send_complete_lines(at, chunk.data, emitter).await
            } else {
                emitter.emit(self.index, at, chunk.data).await
            };
            if !flowing {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn send_complete_lines(
        &mut self,
        at: DateTime<Utc>,
        mut data: Vec<u8>,
        emitter: &mut Emitter,
    ) -> bool {
        match data.iter().rposition(|b| *b == b'\n') {
            Some(last_newline) => {
                let rest = data.split_off(last_newline + 1);
                let complete = if self.pending.is_empty() {
                    data
                } else {
                    let mut line = std::mem::take(&mut self.pending);
                    line.extend_from_slice(&data);
                    line
                };
                self.pending = rest;
                emitter.emit(self.index, at, complete).await
            }
            None => {
                self.pending.extend_from_slice(&data);
                // A line this long is sent in parts rather than held without bound.
                if self.pending.len() >= MAX_PENDING_LINE {
                    let part = std::mem::take(&mut self.pending);
                    return emitter.emit(self.index, at, part).await;
                }
                true
            }
        }
    }

    async fn flush_pending(&mut self, emitter: &mut Emitter) -> bool {
        let line = std::mem::take(&mut self.pending);
        emitter.emit(self.index, Utc::now(), line).await
    }

    /// The byte at `position`, if there is one.
    async fn byte_at(&self, position: u64) -> std::io::Result<Option<u8>> {
        let chunk = read_chunk(&self.stream, position, 1).await?;
        Ok((chunk.start == position)
            .then(|| chunk.data.first().copied())
            .flatten())
    }

    /// Where the lines written at or after `since` start: the first file modified at or
    /// after it, past the end of a line begun in an older file.
    async fn since_floor(
        &self,
        pieces: &[Piece],
        since: DateTime<Utc>,
        end: u64,
    ) -> std::io::Result<u64> {
        let Some(first_kept) = pieces
            .iter()
            .position(|piece| DateTime::<Utc>::from(piece.modified) >= since)
        else {
            return Ok(end);
        };
        let start = pieces[first_kept].start;
        if first_kept == 0 || self.byte_at(start - 1).await? == Some(b'\n') {
            return Ok(start);
        }
        let mut position = start;
        while position < end {
            let want =
                usize::try_from(end - position).map_or(TAIL_CHUNK, |left| left.min(TAIL_CHUNK));
            let chunk = read_chunk(&self.stream, position, want).await?;
            if chunk.data.is_empty() {
                break;
            }
            if let Some(newline) = chunk.data.iter().position(|b| *b == b'\n') {
                return Ok(chunk.start + newline as u64 + 1);
            }
            position = chunk.start + chunk.data.len() as u64;
        }
        Ok(end)
    }

    /// Where the last `lines` lines of `[floor, end)` start, reading backwards in chunks,
    /// and how many lines there are from there (fewer when the range has fewer). A final
    /// line without a newline counts.
    async fn tail_start(
        &self,
        floor: u64,
        end: u64,
        lines: usize,
    ) -> std::io::Result<(u64, usize)> {
        if lines == 0 || end <= floor {
            return Ok((end, 0));
        }
        let ends_with_newline = self.byte_at(end - 1).await? == Some(b'\n');
        // The start is just after the newline that ends the line before the wanted ones.
        let boundary = lines + usize::from(ends_with_newline);
        let mut newlines = 0usize;
        let mut position = end;
        while position > floor {
            let from = position.saturating_sub(TAIL_CHUNK as u64).max(floor);
            let mut block = Vec::with_capacity(TAIL_CHUNK);
            while (block.len() as u64) < position - from {
                let at = from + block.len() as u64;
                let want = usize::try_from(position - at).unwrap_or(TAIL_CHUNK);
                let chunk = read_chunk(&self.stream, at, want).await?;
                if chunk.data.is_empty() || chunk.start != at {
                    // Rotated away meanwhile: what is left starts here.
                    let lines_found = newlines + usize::from(!ends_with_newline);
                    return Ok((position, lines_found.min(lines)));
                }
                block.extend_from_slice(&chunk.data);
            }
            for (index, byte) in block.iter().enumerate().rev() {
                if *byte == b'\n' {
                    newlines += 1;
                    if newlines == boundary {
                        return Ok((from + index as u64 + 1, lines));
                    }
                }
            }
            position = from;
        }
        let lines_found = newlines + usize::from(!ends_with_newline);
        Ok((floor, lines_found))
    }
}

/// Produces the whole response body into `out`.
pub(crate) async fn write_logs(
    paths: LogPaths,
    options: LogOptions,
    followed: Option<Followed>,
    out: mpsc::Sender<Bytes>,
) -> std::io::Result<()> {
    let mut emitter = Emitter::new(out, options.timestamps, options.limit_bytes);
    let mut streams = [
        StreamCursor::new(0, paths.stdout),
        StreamCursor::new(1, paths.stderr),
    ];
    let mut plans = Vec::with_capacity(2);
    for stream in &streams {
        let pieces = stream_pieces(&stream.stream).await?;
        let end = pieces.last().map_or(0, Piece::end);
        let mut floor = pieces.first().map_or(0, |piece| piece.start);
        if let Some(since) = options.since {
            floor = stream.since_floor(&pieces, since, end).await?;
        }
        // Missing files sort first, as the oldest.
        let modified = pieces
            .last()
            .map_or(DateTime::<Utc>::MIN_UTC, |piece| piece.modified.into());
        plans.push((stream.index, modified, floor, end));
    }
    // Older stream first: the order that is most likely to be the order of writing.
    plans.sort_by_key(|(_, modified, _, _)| *modified);
    if let Some(mut wanted) = options.tail_lines {
        // The last lines of the combined output: the later stream's, then the earlier's.
        for (index, _, floor, end) in plans.iter_mut().rev() {
            let (start, found) = streams[*index].tail_start(*floor, *end, wanted).await?;
            *floor = start;
            wanted -= found;
        }
    }
    let following = followed.is_some();
    for (index, _, floor, end) in &plans {
        let stream = &mut streams[*index];
        stream.position = *floor;
        if !stream
            .send_until(*end, u64::MAX, false, following, &mut emitter)
            .await?
        {
            return Ok(());
        }
        // Whatever else is in the file now is sent by the follow, stamped when read.
        stream.position = stream.position.max(*end);
    }
    let Some(followed) = followed else {
        return Ok(());
    };
    let [stdout, stderr] = &mut streams;
    follow(&mut [stdout, stderr], &followed, &mut emitter, false).await
}

/// Streams what is appended to `path` from now on, unfinished lines included, until the
/// container stops (attach's view of the main process's output).
pub(crate) async fn follow_from_end(
    path: PathBuf,
    followed: Followed,
    out: mpsc::Sender<Bytes>,
) -> std::io::Result<()> {
    let mut cursor = StreamCursor::new(0, path);
    cursor.position = stream_end(&cursor.stream).await?;
    let mut emitter = Emitter::new(out, false, None);
    follow(&mut [&mut cursor], &followed, &mut emitter, true).await
}

/// Sends new output of `streams` until the container stops and they are drained, or the
/// client goes away. Without `send_partial_lines` a line is sent once it is complete.
/// Positions are stream positions, so output rotated into a segment between two polls is
/// read from there: nothing is skipped or sent twice.
async fn follow(
    streams: &mut [&mut StreamCursor],
    followed: &Followed,
    emitter: &mut Emitter,
    send_partial_lines: bool,
) -> std::io::Result<()> {
    let mut last_liveness_check: Option<Instant> = None;
    let mut stopped = false;
    loop {
        let mut progressed = false;
        for stream in streams.iter_mut() {
            let end = stream_end(&stream.stream).await?;
            if stream.position < end {
                progressed = true;
                let hold_back = !(send_partial_lines || stopped);
                if !stream
                    .send_until(end, MAX_READ_PER_POLL, true, hold_back, emitter)
                    .await?
                {
                    return Ok(());
                }
            }
            if (send_partial_lines || stopped) && !stream.pending.is_empty() {
                progressed = true;
                if !stream.flush_pending(emitter).await {
                    return Ok(());
                }
            }
        }
        if progressed {
            continue;
        }
        if stopped {
            // Everything the container wrote has been sent.
            return Ok(());
        }
        if last_liveness_check.is_none_or(|at| at.elapsed() >= LIVENESS_INTERVAL) {
            last_liveness_check = Some(Instant::now());
            if followed.has_stopped().await {
                // One more pass reads what it wrote last, unfinished lines included.
                stopped = true;
                continue;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = emitter.out.closed() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
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
}
