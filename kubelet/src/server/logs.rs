//! `GET /containerLogs`: serving a container's output from its two plain log files.
//!
//! The runtime appends stdout and stderr to separate files and records nothing else, so
//! neither the true interleaving of the two streams nor per-line times exist. The choices:
//!
//! - Existing content: the file modified longer ago comes first (stdout first on a tie),
//!   each file in order. Its lines are stamped with that file's modification time, so
//!   `timestamps=true` output never goes back in time and `sinceSeconds`/`sinceTime` keep
//!   or drop a whole file's old content. `tailLines` applies to this combined output.
//! - Following: after the existing content, both files are polled and new lines are sent
//!   as they appear, stamped with the time they were read. The stream ends when the client
//!   goes away, or when the container is no longer running and both files are drained. A
//!   container that is not running when the request arrives is served as if not following.
//! - A final line without a newline is sent as is at the very end of the output; elsewhere
//!   it gets a newline so it does not run into the other stream's next line.
//! - `limitBytes` counts the bytes sent, timestamps included, and cuts the last line.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use rkube_cri::{ContainerRuntime, ContainerState, LogPaths, RuntimeError};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{query_flag, query_value, rfc3339_nano, KubeletApi, RequestError};

/// How often files are checked for new output while following.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often the runtime is asked whether the followed container still runs.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(1);
/// The most read from one file in one poll, so a burst cannot take all memory.
const MAX_READ_PER_POLL: u64 = 1 << 20;
/// Chunk size when reading a file backwards for `tailLines`.
const TAIL_CHUNK: u64 = 64 * 1024;

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

/// Sends lines to the client, adding timestamps and enforcing `limitBytes`.
struct Emitter {
    out: mpsc::Sender<Bytes>,
    timestamps: bool,
    remaining: Option<u64>,
}

impl Emitter {
    /// False when nothing more may be sent (client gone or limit reached).
    async fn emit(&mut self, at: DateTime<Utc>, line: &[u8]) -> bool {
        let mut chunk = Vec::with_capacity(line.len() + 32);
        if self.timestamps {
            chunk.extend_from_slice(rfc3339_nano(at).as_bytes());
            chunk.push(b' ');
        }
        chunk.extend_from_slice(line);
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

/// Produces the whole response body into `out`.
pub(crate) async fn write_logs(
    paths: LogPaths,
    options: LogOptions,
    followed: Option<Followed>,
    out: mpsc::Sender<Bytes>,
) -> std::io::Result<()> {
    let mut emitter = Emitter {
        out,
        timestamps: options.timestamps,
        remaining: options.limit_bytes,
    };
    let stdout = Snapshot::read(&paths.stdout, options.tail_lines).await?;
    let stderr = Snapshot::read(&paths.stderr, options.tail_lines).await?;
    let mut stdout_tail = Tail::new(paths.stdout.clone(), stdout.end_offset);
    let mut stderr_tail = Tail::new(paths.stderr.clone(), stderr.end_offset);

    let following = followed.is_some();
    let mut snapshots = [(stdout, &mut stdout_tail), (stderr, &mut stderr_tail)];
    // Older file first: the order that is most likely to be the order of writing.
    snapshots.sort_by_key(|(snapshot, _)| snapshot.modified);
    let mut lines: Vec<(DateTime<Utc>, Vec<u8>)> = Vec::new();
    for (snapshot, tail) in snapshots {
        let mut file_lines = snapshot.lines;
        if following {
            // An unfinished line is completed by what the container writes next.
            if let Some(last) = file_lines.last() {
                if last.last() != Some(&b'\n') {
                    tail.pending = file_lines.pop().unwrap_or_default();
                }
            }
        }
        lines.extend(file_lines.into_iter().map(|line| (snapshot.modified, line)));
    }
    if let Some(since) = options.since {
        lines.retain(|(at, _)| *at >= since);
    }
    if let Some(n) = options.tail_lines {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let count = lines.len();
    for (index, (at, mut line)) in lines.into_iter().enumerate() {
        let is_last = index + 1 == count && !following;
        if !is_last && line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        if !emitter.emit(at, &line).await {
            return Ok(());
        }
    }

    let Some(followed) = followed else {
        return Ok(());
    };
    follow(
        &mut [&mut stdout_tail, &mut stderr_tail],
        &followed,
        &mut emitter,
        false,
    )
    .await
}

/// Streams what is appended to `path` from now on, unfinished lines included, until the
/// container stops (attach's view of the main process's output).
pub(crate) async fn follow_from_end(
    path: PathBuf,
    followed: Followed,
    out: mpsc::Sender<Bytes>,
) -> std::io::Result<()> {
    let offset = match tokio::fs::metadata(&path).await {
        Ok(metadata) => metadata.len(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => 0,
        Err(err) => return Err(err),
    };
    let mut tail = Tail::new(path, offset);
    let mut emitter = Emitter {
        out,
        timestamps: false,
        remaining: None,
    };
    follow(&mut [&mut tail], &followed, &mut emitter, true).await
}

/// Sends new output of `tails` until the container stops and they are drained, or the
/// client goes away. Without `send_partial_lines` a line is sent once it is complete.
async fn follow(
    tails: &mut [&mut Tail],
    followed: &Followed,
    emitter: &mut Emitter,
    send_partial_lines: bool,
) -> std::io::Result<()> {
    let mut last_liveness_check: Option<Instant> = None;
    let mut stopped = false;
    loop {
        let mut progressed = false;
        for tail in tails.iter_mut() {
            let mut new_lines = tail.read_new().await?;
            if (send_partial_lines || stopped) && !tail.pending.is_empty() {
                new_lines.push(std::mem::take(&mut tail.pending));
            }
            progressed |= !new_lines.is_empty();
            let now = Utc::now();
            for line in new_lines {
                if !emitter.emit(now, &line).await {
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

/// A file's content at the start of the request.
struct Snapshot {
    /// Lines with their newline (the last may lack it).
    lines: Vec<Vec<u8>>,
    /// Missing files sort first, as the oldest.
    modified: DateTime<Utc>,
    end_offset: u64,
}

impl Snapshot {
    async fn read(path: &Path, tail_lines: Option<usize>) -> std::io::Result<Snapshot> {
        let mut file = match tokio::fs::File::open(path).await {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Snapshot {
                    lines: Vec::new(),
                    modified: DateTime::<Utc>::MIN_UTC,
                    end_offset: 0,
                })
            }
            Err(err) => return Err(err),
        };
        let metadata = file.metadata().await?;
        let modified = metadata
            .modified()
            .map(DateTime::<Utc>::from)
            .unwrap_or_else(|_| Utc::now());
        let len = metadata.len();
        let content = match tail_lines {
            None => {
                let mut content = Vec::new();
                (&mut file).take(len).read_to_end(&mut content).await?;
                content
            }
            Some(n) => read_last_lines(&mut file, len, n).await?,
        };
        let end_offset = match tail_lines {
            None => content.len() as u64,
            Some(_) => len,
        };
        let mut lines = split_lines(&content);
        if let Some(n) = tail_lines {
            let skip = lines.len().saturating_sub(n);
            lines.drain(..skip);
        }
        Ok(Snapshot {
            lines,
            modified,
            end_offset,
        })
    }
}

/// The end of a file holding at least its last `n` lines (or the whole file), starting at a
/// line boundary.
async fn read_last_lines(
    file: &mut tokio::fs::File,
    len: u64,
    n: usize,
) -> std::io::Result<Vec<u8>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut start = len;
    let mut content: Vec<u8> = Vec::new();
    while start > 0 {
        let chunk_start = start.saturating_sub(TAIL_CHUNK);
        let mut chunk = vec![0u8; usize::try_from(start - chunk_start).unwrap_or(0)];
        file.seek(SeekFrom::Start(chunk_start)).await?;
        file.read_exact(&mut chunk).await?;
        chunk.extend_from_slice(&content);
        content = chunk;
        start = chunk_start;
        // The text before the first newline may be the end of an earlier line; only what
        // follows it is known to be whole lines.
        let newlines = content.iter().filter(|b| **b == b'\n').count();
        let trailing_partial = usize::from(content.last().is_some_and(|b| *b != b'\n'));
        if start > 0 && newlines.saturating_sub(1) + trailing_partial >= n {
            break;
        }
    }
    if start > 0 {
        if let Some(first_newline) = content.iter().position(|b| *b == b'\n') {
            content.drain(..=first_newline);
        }
    }
    Ok(content)
}

/// Splits into lines that keep their newline; a last line without one is kept as is.
fn split_lines(content: &[u8]) -> Vec<Vec<u8>> {
    content
        .split_inclusive(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

/// Follows one growing file from an offset.
struct Tail {
    path: PathBuf,
    offset: u64,
    /// Bytes of a line whose newline has not been written yet.
    pending: Vec<u8>,
}

impl Tail {
    fn new(path: PathBuf, offset: u64) -> Self {
        Tail {
            path,
            offset,
            pending: Vec::new(),
        }
    }

    /// Complete lines written since the last call. The file is reopened every time so a
    /// file created after the request started is picked up.
    async fn read_new(&mut self) -> std::io::Result<Vec<Vec<u8>>> {
        let mut file = match tokio::fs::File::open(&self.path).await {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err),
        };
        let len = file.metadata().await?.len();
        if len < self.offset {
            // Truncated: start over rather than wait for it to grow past the old end.
            self.offset = 0;
            self.pending.clear();
        }
        if len == self.offset {
            return Ok(Vec::new());
        }
        file.seek(SeekFrom::Start(self.offset)).await?;
        let mut data = Vec::new();
        (&mut file)
            .take((len - self.offset).min(MAX_READ_PER_POLL))
            .read_to_end(&mut data)
            .await?;
        self.offset += data.len() as u64;
        let mut content = std::mem::take(&mut self.pending);
        content.extend_from_slice(&data);
        let mut lines = split_lines(&content);
        if lines.last().is_some_and(|line| line.last() != Some(&b'\n')) {
            self.pending = lines.pop().unwrap_or_default();
        }
        Ok(lines)
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

    #[tokio::test]
    async fn last_lines_are_read_from_the_end_across_chunks() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let mut expected = Vec::new();
        for i in 0..20_000 {
            writeln!(file, "line {i}").unwrap();
            expected.push(format!("line {i}\n"));
        }
        write!(file, "partial").unwrap();
        let path = file.path().to_path_buf();
        let len = std::fs::metadata(&path).unwrap().len();
        let mut handle = tokio::fs::File::open(&path).await.unwrap();
        let content = read_last_lines(&mut handle, len, 12_000).await.unwrap();
        let lines = split_lines(&content);
        assert!(lines.len() >= 12_000);
        let last: Vec<String> = lines[lines.len() - 12_000..]
            .iter()
            .map(|l| String::from_utf8(l.clone()).unwrap())
            .collect();
        let mut want: Vec<String> = expected[expected.len() - 11_999..].to_vec();
        want.push("partial".into());
        assert_eq!(last, want);
        // Starts on a line boundary.
        assert!(String::from_utf8(lines[0].clone())
            .unwrap()
            .starts_with("line "));
    }

    #[tokio::test]
    async fn tail_returns_only_complete_lines_and_keeps_the_rest() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut tail = Tail::new(file.path().to_path_buf(), 0);
        std::fs::write(file.path(), "a\nb").unwrap();
        assert_eq!(tail.read_new().await.unwrap(), vec![b"a\n".to_vec()]);
        std::fs::write(file.path(), "a\nbc\n").unwrap();
        assert_eq!(tail.read_new().await.unwrap(), vec![b"bc\n".to_vec()]);
        assert!(tail.read_new().await.unwrap().is_empty());
    }
}
