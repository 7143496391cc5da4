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

use super::{rfc3339_nano, KubeletApi, RequestError};
use crate::logrotate::{LogStream, Piece};

mod options;

pub(crate) use options::LogOptions;

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

/// A log stream's position at the moment it was marked; following it sends everything
/// appended since, so output caused by what happens after the mark is never missed.
pub(crate) struct MarkedEnd(StreamCursor);

impl MarkedEnd {
    pub(crate) async fn of(path: PathBuf) -> std::io::Result<MarkedEnd> {
        let mut cursor = StreamCursor::new(0, path);
        cursor.position = stream_end(&cursor.stream).await?;
        Ok(MarkedEnd(cursor))
    }

    /// Streams what was appended after the mark, unfinished lines included, until the
    /// container stops (attach's view of the main process's output).
    pub(crate) async fn follow(
        self,
        followed: Followed,
        out: mpsc::Sender<Bytes>,
    ) -> std::io::Result<()> {
        let MarkedEnd(mut cursor) = self;
        let mut emitter = Emitter::new(out, false, None);
        follow(&mut [&mut cursor], &followed, &mut emitter, true).await
    }
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
mod tests;
