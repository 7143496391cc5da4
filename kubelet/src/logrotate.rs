//! Container log rotation: each output file is cut at a size and kept to a file count
//! (`--container-log-max-size`, `--container-log-max-files`, upstream's names and defaults
//! of 10 MiB and 5 files), while the container keeps writing.
//!
//! # How the files are written
//!
//! The kubelet creates `<restart>.stdout` and `<restart>.stderr` and hands the plain paths to
//! containerd; containerd 1.6's runc shim opens them with `O_WRONLY|O_APPEND` and copies the
//! container's pipes into them (the real-containerd test `logs_rotate_under_a_fast_writer`
//! checks the flag on the shim's descriptor). With `O_APPEND` every write lands at the end
//! the file has at that moment, whatever was done to its head.
//!
//! # Why copy-and-collapse
//!
//! - Copy-truncate (copy the file away, then truncate it) never leaves a sparse file with an
//!   appending writer, but whatever is written between the end of the copy and the truncate
//!   is lost.
//! - The kubelet owning the writer (containerd writes to FIFOs the kubelet drains into the
//!   files) would let it reopen files at will, but a container then blocks on a full pipe
//!   whenever the kubelet is down, restarting or slow, which makes a kubelet restart stall
//!   every workload's output, and the runtime layer would have to hand out FIFOs.
//! - Chosen: copy a block-aligned head of the live file into a new segment file, then remove
//!   exactly that head from the live file with `fallocate(FALLOC_FL_COLLAPSE_RANGE)`. The
//!   kernel serialises the collapse with the shim's appends (both take the inode lock), so
//!   every write lands either before the cut (and is in the segment or after it) or after it
//!   (at the end of the shortened file): nothing is lost, nothing is sparse, and the shim
//!   never notices. ext4 and XFS support it. Where the filesystem does not (tmpfs, btrfs),
//!   rotation falls back to copy-truncate with the copy repeated until the file stops
//!   growing, which narrows the loss window to the microseconds between the last size check
//!   and the truncate; a warning says so once.
//!
//! # Names and coordinates
//!
//! A segment is named `<live name>.<offset>`, the offset (20 digits, so names sort) of its
//! first byte in everything the container instance wrote to that stream. Segments never
//! change after their rename, and the live file starts where the newest segment ends, so
//! every byte has a stable position across rotations and kubelet restarts; that is what lets
//! a follower or a long read continue into the right file ([`LogStream`]). Readers and the
//! rotator of one file take the same in-process lock ([`stream_lock`]) around the moment
//! the head moves, so a reader never maps a position with a stale layout.
//!
//! # Crashes
//!
//! The segment is written under a temporary name, synced and renamed before the collapse.
//! A kubelet killed between the rename and the collapse leaves the segment's bytes also at
//! the head of the live file: they are served twice, never lost. A temporary file left by
//! a crash is overwritten by the next rotation.
//!
//! # Retention
//!
//! `max_files` counts the live file, so a stream keeps at most `max_files - 1` segments;
//! stdout and stderr each have that budget. Of a container's instances only the current
//! and the previous one (for `--previous`) keep their files.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use rkube_api::quantity::{Format, Quantity};
use tokio::sync::watch;

/// Upstream's `containerLogMaxSize` default (10Mi).
pub const DEFAULT_MAX_SIZE: u64 = 10 * 1024 * 1024;
/// Upstream's `containerLogMaxFiles` default.
pub const DEFAULT_MAX_FILES: usize = 5;
/// Upstream's `containerLogMonitorInterval` default.
pub const DEFAULT_MONITOR_INTERVAL: Duration = Duration::from_secs(10);

const SEGMENT_DIGITS: usize = 20;
const TEMP_SUFFIX: &str = "rotating";
const COPY_CHUNK: usize = 256 * 1024;

/// When a log file is cut and how many files of one stream are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// The live file is rotated once it is larger than this.
    pub max_size: u64,
    /// Files per stream, the live one included (at least 2).
    pub max_files: usize,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        RotationPolicy {
            max_size: DEFAULT_MAX_SIZE,
            max_files: DEFAULT_MAX_FILES,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "invalid container-log-max-size {0:?}: must be a positive quantity of bytes such as 10Mi"
    )]
    MaxSize(String),
    #[error("invalid container-log-max-files {0}: must be greater than 1")]
    MaxFiles(usize),
}

impl RotationPolicy {
    pub fn new(max_size: u64, max_files: usize) -> Result<Self, PolicyError> {
        if max_size == 0 {
            return Err(PolicyError::MaxSize(max_size.to_string()));
        }
        if max_files < 2 {
            return Err(PolicyError::MaxFiles(max_files));
        }
        Ok(RotationPolicy {
            max_size,
            max_files,
        })
    }
}

/// Parses `containerLogMaxSize` as upstream does: a resource quantity (`10Mi`, `1G`) of
/// at least one byte that fits an int64.
pub fn parse_size(text: &str) -> Result<u64, PolicyError> {
    let invalid = || PolicyError::MaxSize(text.to_string());
    let quantity = Quantity::parse(text.trim()).map_err(|_| invalid())?;
    if quantity > Quantity::new(i64::MAX, Format::BinarySI) {
        return Err(invalid());
    }
    match u64::try_from(quantity.value()) {
        Ok(size) if size > 0 => Ok(size),
        _ => Err(invalid()),
    }
}

/// Removes the head of a file whose writer keeps appending.
pub trait PrefixCut: Send + Sync {
    /// Removes the first `len` bytes of `file` (a multiple of [`PrefixCut::granularity`],
    /// less than the file's size). An error means nothing was removed.
    fn cut_prefix(&self, file: &File, len: u64) -> io::Result<()>;
    /// The unit cuts must be a multiple of.
    fn granularity(&self, file: &File) -> io::Result<u64>;
}

/// `fallocate(FALLOC_FL_COLLAPSE_RANGE)`: the filesystem's block size is the unit.
pub struct CollapseRange;

impl PrefixCut for CollapseRange {
    fn cut_prefix(&self, file: &File, len: u64) -> io::Result<()> {
        rustix::fs::fallocate(file, rustix::fs::FallocateFlags::COLLAPSE_RANGE, 0, len)
            .map_err(io::Error::from)
    }

    fn granularity(&self, file: &File) -> io::Result<u64> {
        Ok(file.metadata()?.blksize().max(1))
    }
}

/// The lock that readers and the rotator of the stream whose live file is `live` share.
pub fn stream_lock(live: &Path) -> Arc<Mutex<()>> {
    static LOCKS: LazyLock<Mutex<HashMap<PathBuf, Weak<Mutex<()>>>>> =
        LazyLock::new(Default::default);
    let mut locks = LOCKS.lock();
    if let Some(lock) = locks.get(live).and_then(Weak::upgrade) {
        return lock;
    }
    // Forget the locks nobody holds any more, so the map stays as small as the set of
    // files in use.
    locks.retain(|_, lock| lock.strong_count() > 0);
    let lock = Arc::new(Mutex::new(()));
    locks.insert(live.to_path_buf(), Arc::downgrade(&lock));
    lock
}

/// One file of a stream and the positions it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub path: PathBuf,
    /// Position of the first byte in the stream.
    pub start: u64,
    pub len: u64,
    pub modified: SystemTime,
}

impl Piece {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

fn file_name(live: &Path) -> String {
    live.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn segment_path(live: &Path, start: u64) -> PathBuf {
    live.with_file_name(format!(
        "{}.{start:0width$}",
        file_name(live),
        width = SEGMENT_DIGITS
    ))
}

fn temp_path(live: &Path) -> PathBuf {
    live.with_file_name(format!("{}.{TEMP_SUFFIX}", file_name(live)))
}

/// The segments of `live` (oldest first), without taking the lock.
fn list_segments(live: &Path) -> io::Result<Vec<Piece>> {
    let Some(dir) = live.parent() else {
        return Ok(Vec::new());
    };
    let prefix = format!("{}.", file_name(live));
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(offset) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if offset.len() != SEGMENT_DIGITS || !offset.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(start) = offset.parse::<u64>() else {
            continue;
        };
        let metadata = match entry.metadata() {
            Ok(metadata) => metadata,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        segments.push(Piece {
            path: entry.path(),
            start,
            len: metadata.len(),
            modified: metadata.modified()?,
        });
    }
    segments.sort_by_key(|piece| piece.start);
    Ok(segments)
}

/// Segments then the live file, oldest first, without taking the lock.
fn list_pieces(live: &Path) -> io::Result<Vec<Piece>> {
    let mut pieces = list_segments(live)?;
    let start = pieces.last().map_or(0, Piece::end);
    match std::fs::metadata(live) {
        Ok(metadata) => pieces.push(Piece {
            path: live.to_path_buf(),
            start,
            len: metadata.len(),
            modified: metadata.modified()?,
        }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    Ok(pieces)
}

/// Bytes read by [`LogStream::read_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadAt {
    /// Where the bytes start: later than asked when older bytes were rotated away.
    pub start: u64,
    pub len: usize,
    /// The modification time of the file they came from.
    pub modified: SystemTime,
}

/// Reads one output stream of a container instance (its segments and live file) by stream
/// position, consistently with concurrent rotation.
#[derive(Clone)]
pub struct LogStream {
    live: PathBuf,
    lock: Arc<Mutex<()>>,
}

impl LogStream {
    pub fn new(live: PathBuf) -> Self {
        let lock = stream_lock(&live);
        LogStream { live, lock }
    }

    pub fn live_path(&self) -> &Path {
        &self.live
    }

    /// The stream's files, oldest first.
    pub fn pieces(&self) -> io::Result<Vec<Piece>> {
        let _guard = self.lock.lock();
        list_pieces(&self.live)
    }

    /// The position after the last byte written so far.
    pub fn end(&self) -> io::Result<u64> {
        Ok(self.pieces()?.last().map_or(0, Piece::end))
    }

    /// Reads up to `buf.len()` bytes from position `at` (or from the oldest byte still
    /// kept, if later), within one file. `len == 0` means nothing is there yet.
    pub fn read_at(&self, at: u64, buf: &mut [u8]) -> io::Result<ReadAt> {
        let _guard = self.lock.lock();
        let pieces = list_pieces(&self.live)?;
        let Some(piece) = pieces.iter().find(|piece| piece.end() > at) else {
            return Ok(ReadAt {
                start: at,
                len: 0,
                modified: SystemTime::UNIX_EPOCH,
            });
        };
        let start = at.max(piece.start);
        let available = usize::try_from(piece.end() - start).unwrap_or(usize::MAX);
        let wanted = buf.len().min(available);
        let file = File::open(&piece.path)?;
        let len = file.read_at(&mut buf[..wanted], start - piece.start)?;
        Ok(ReadAt {
            start,
            len,
            modified: piece.modified,
        })
    }
}

/// Copies `len` bytes of `from` starting at `offset` to the end of `to`.
fn copy_range(from: &File, offset: u64, len: u64, to: &mut File) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from(len - done).map_or(COPY_CHUNK, |left| left.min(COPY_CHUNK));
        let read = from.read_at(&mut buf[..want], offset + done)?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "log file shrank while it was being rotated",
            ));
        }
        to.write_all(&buf[..read])?;
        done += read as u64;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Rotates the live file `live` if it is larger than the policy allows, then drops the
/// oldest segments past the file count. True when it rotated.
pub fn rotate(live: &Path, policy: &RotationPolicy, cut: &dyn PrefixCut) -> io::Result<bool> {
    let file = match OpenOptions::new().read(true).write(true).open(live) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(err),
    };
    let size = file.metadata()?.len();
    if size <= policy.max_size {
        return Ok(false);
    }
    let dir = live.parent().unwrap_or(Path::new("."));
    let start = list_segments(live)?.last().map_or(0, Piece::end);
    let granularity = cut.granularity(&file)?.max(1);
    let aligned = size / granularity * granularity;
    // The cut must end before the end of the file.
    let cut_len = if aligned >= size {
        aligned.saturating_sub(granularity)
    } else {
        aligned
    };
    let temp = temp_path(live);
    let mut segment = File::create(&temp)?;
    // Without the lock: only this function changes the head, and the copied range is
    // below the end, where the appending writer never writes.
    copy_range(&file, 0, cut_len, &mut segment)?;
    segment.sync_all()?;

    let lock = stream_lock(live);
    let _guard = lock.lock();
    std::fs::rename(&temp, segment_path(live, start))?;
    sync_dir(dir)?;
    let collapsed = cut_len > 0
        && match cut.cut_prefix(&file, cut_len) {
            Ok(()) => true,
            Err(err) => {
                static WARNED: AtomicBool = AtomicBool::new(false);
                if !WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        file = %live.display(),
                        error = %err,
                        "the filesystem cannot remove the head of a log file; rotating by \
                         copy and truncate, which can lose lines written during the truncate"
                    );
                }
                false
            }
        };
    if !collapsed {
        let mut copied = cut_len;
        loop {
            let end = file.metadata()?.len();
            if end <= copied {
                break;
            }
            copy_range(&file, copied, end - copied, &mut segment)?;
            copied = end;
        }
        segment.sync_all()?;
        file.set_len(0)?;
    }
    let segments = list_segments(live)?;
    let keep = policy.max_files.saturating_sub(1);
    for old in segments.iter().take(segments.len().saturating_sub(keep)) {
        match std::fs::remove_file(&old.path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    Ok(true)
}

/// The instance number (`restart`) a file of a container's log directory belongs to.
fn instance_of(name: &str) -> Option<u32> {
    let (number, rest) = name.split_once('.')?;
    let stream = rest.split('.').next()?;
    if stream != "stdout" && stream != "stderr" {
        return None;
    }
    number.parse().ok()
}

/// Rotates every log file of one container's directory and removes the files of instances
/// before the previous one. Returns how many files were rotated.
pub fn maintain_container_dir(
    dir: &Path,
    policy: &RotationPolicy,
    cut: &dyn PrefixCut,
) -> io::Result<usize> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    let Some(newest) = names.iter().filter_map(|name| instance_of(name)).max() else {
        return Ok(0);
    };
    let mut rotated = 0;
    for name in &names {
        let Some(instance) = instance_of(name) else {
            continue;
        };
        let path = dir.join(name);
        if instance + 1 < newest {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
            continue;
        }
        let is_live =
            name == &format!("{instance}.stdout") || name == &format!("{instance}.stderr");
        if is_live && rotate(&path, policy, cut)? {
            rotated += 1;
        }
    }
    Ok(rotated)
}

/// One pass over a node's pods directory (`<pods>/<uid>/logs/<container>/`). Problems with
/// one directory are logged and do not stop the others.
pub fn maintain_all(pods_dir: &Path, policy: &RotationPolicy, cut: &dyn PrefixCut) -> usize {
    let mut rotated = 0;
    let Ok(pods) = std::fs::read_dir(pods_dir) else {
        return 0;
    };
    for pod in pods.flatten() {
        let Ok(containers) = std::fs::read_dir(pod.path().join("logs")) else {
            continue;
        };
        for container in containers.flatten() {
            let dir = container.path();
            match maintain_container_dir(&dir, policy, cut) {
                Ok(count) => rotated += count,
                // The pod's directory may have been removed meanwhile.
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => {
                    tracing::warn!(dir = %dir.display(), error = %err, "rotating container logs")
                }
            }
        }
    }
    rotated
}

/// Rotates the logs under `pods_dir` every `interval` until `stop` turns true.
pub async fn run(
    pods_dir: PathBuf,
    policy: RotationPolicy,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let dir = pods_dir.clone();
        let pass =
            tokio::task::spawn_blocking(move || maintain_all(&dir, &policy, &CollapseRange)).await;
        if let Err(err) = pass {
            tracing::warn!(error = %err, "container log rotation pass failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}
