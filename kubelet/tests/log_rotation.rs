//! Container log rotation against a writer that appends like containerd's shim
//! (`O_APPEND`, from another thread, as fast as it can): nothing is lost or repeated,
//! files stay bounded and dense, and readers see one byte sequence across the files.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use rkubelet::logrotate::{
    maintain_container_dir, parse_size, rotate, CollapseRange, LogStream, PrefixCut, RotationPolicy,
};

/// A filesystem without `FALLOC_FL_COLLAPSE_RANGE` (tmpfs, btrfs).
struct NoCollapse;

impl PrefixCut for NoCollapse {
    fn cut_prefix(&self, _file: &File, _len: u64) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(95)) // EOPNOTSUPP
    }
    fn granularity(&self, _file: &File) -> io::Result<u64> {
        Ok(4096)
    }
}

/// The shim's side: appends numbered lines to `path` until `count` are written.
fn spawn_appender(path: PathBuf, lines: std::ops::Range<usize>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        for i in lines {
            // One write per line, like a container printing line by line.
            file.write_all(format!("line {i:08}\n").as_bytes()).unwrap();
        }
    })
}

fn expected(lines: std::ops::Range<usize>) -> String {
    lines.map(|i| format!("line {i:08}\n")).collect()
}

/// The whole stream as readers see it, and where it starts.
fn read_stream(live: &Path) -> (u64, String) {
    let stream = LogStream::new(live.to_path_buf());
    let first = stream.pieces().unwrap().first().map_or(0, |p| p.start);
    let end = stream.end().unwrap();
    let mut content = Vec::new();
    let mut position = first;
    let mut buf = vec![0u8; 64 * 1024];
    while position < end {
        let read = stream.read_at(position, &mut buf).unwrap();
        assert_eq!(read.start, position, "a gap in the stream at {position}");
        assert!(read.len > 0);
        content.extend_from_slice(&buf[..read.len]);
        position += read.len as u64;
    }
    (first, String::from_utf8(content).unwrap())
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn assert_dense(path: &Path) {
    let metadata = std::fs::metadata(path).unwrap();
    // Allocated space covers the length (up to the last partial block): no holes.
    assert!(
        metadata.blocks() * 512 + metadata.blksize() >= metadata.len(),
        "{} is sparse: {} bytes in {} blocks",
        path.display(),
        metadata.len(),
        metadata.blocks()
    );
}

#[test]
fn rotation_under_a_concurrent_appender_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("0.stdout");
    File::create(&live).unwrap();
    let policy = RotationPolicy::new(64 * 1024, 10_000).unwrap();
    let lines = 0..200_000;
    let writer = spawn_appender(live.clone(), lines.clone());
    let mut rotations = 0;
    while !writer.is_finished() {
        if rotate(&live, &policy, &CollapseRange).unwrap() {
            rotations += 1;
        }
    }
    writer.join().unwrap();
    while rotate(&live, &policy, &CollapseRange).unwrap() {
        rotations += 1;
    }
    assert!(rotations >= 10, "only {rotations} rotations");

    let (first, content) = read_stream(&live);
    assert_eq!(first, 0);
    assert!(content == expected(lines), "lines lost or repeated");
    for file in log_files(dir.path()) {
        assert_dense(&file);
    }
    assert!(std::fs::metadata(&live).unwrap().len() <= policy.max_size);
}

#[test]
fn a_reader_position_survives_rotation_and_a_restarted_kubelet() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("3.stderr");
    let policy = RotationPolicy::new(16 * 1024, 100).unwrap();
    spawn_appender(live.clone(), 0..5_000).join().unwrap();
    // A follower that has read up to some line...
    let stream = LogStream::new(live.clone());
    let position = 1_234 * 14;
    let mut before = vec![0u8; 14 * 10];
    let read = stream.read_at(position, &mut before).unwrap();
    assert_eq!(read.len, before.len());
    // ...rotation moves that part of the file into a segment...
    assert!(rotate(&live, &policy, &CollapseRange).unwrap());
    let mut after = vec![0u8; before.len()];
    let read = stream.read_at(position, &mut after).unwrap();
    assert_eq!((read.start, read.len), (position, after.len()));
    assert_eq!(after, before, "the same position names the same bytes");
    drop(stream);
    // A new process (no shared state but the files) carries on from the names on disk.
    spawn_appender(live.clone(), 5_000..9_000).join().unwrap();
    assert!(rotate(&live, &policy, &CollapseRange).unwrap());
    let (first, content) = read_stream(&live);
    assert_eq!(first, 0);
    assert_eq!(content, expected(0..9_000));
}

#[test]
fn only_max_files_are_kept_and_they_end_with_the_newest_line() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("0.stdout");
    let policy = RotationPolicy::new(32 * 1024, 3).unwrap();
    for batch in 0..20 {
        spawn_appender(live.clone(), batch * 3_000..(batch + 1) * 3_000)
            .join()
            .unwrap();
        rotate(&live, &policy, &CollapseRange).unwrap();
    }
    let files = log_files(dir.path());
    assert_eq!(files.len(), 3, "{files:?}");
    let (first, content) = read_stream(&live);
    assert!(first > 0);
    // What is kept is a contiguous end of the output (the oldest file may begin mid-line).
    let whole = expected(0..60_000);
    assert!(whole.ends_with(&content));
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert!(
        total <= 3 * (policy.max_size + 64 * 1024),
        "{total} bytes kept"
    );
}

#[test]
fn without_collapse_rotation_copies_then_truncates() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("0.stdout");
    let policy = RotationPolicy::new(10_000, 100).unwrap();
    let mut written = 0;
    for _ in 0..5 {
        spawn_appender(live.clone(), written..written + 1_000)
            .join()
            .unwrap();
        written += 1_000;
        assert!(rotate(&live, &policy, &NoCollapse).unwrap());
        assert_eq!(std::fs::metadata(&live).unwrap().len(), 0);
    }
    let (_, content) = read_stream(&live);
    assert_eq!(content, expected(0..written));
}

#[test]
fn files_of_instances_before_the_previous_one_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    for instance in 0..4 {
        for stream in ["stdout", "stderr"] {
            std::fs::write(dir.path().join(format!("{instance}.{stream}")), "x\n").unwrap();
        }
    }
    std::fs::write(dir.path().join("1.stdout.00000000000000000000"), "old\n").unwrap();
    let policy = RotationPolicy::default();
    maintain_container_dir(dir.path(), &policy, &CollapseRange).unwrap();
    let names: Vec<String> = log_files(dir.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["2.stderr", "2.stdout", "3.stderr", "3.stdout"]);
}

#[test]
fn sizes_and_counts_are_validated_like_upstream() {
    assert_eq!(parse_size("10Mi").unwrap(), 10 * 1024 * 1024);
    assert_eq!(parse_size("512Ki").unwrap(), 512 * 1024);
    assert_eq!(parse_size("1G").unwrap(), 1_000_000_000);
    assert_eq!(parse_size("4096").unwrap(), 4096);
    for bad in ["", "0", "10MB", "-1Mi", "Mi", "99999999999999999999"] {
        assert!(parse_size(bad).is_err(), "{bad:?}");
    }
    assert!(RotationPolicy::new(1, 1).is_err());
    assert_eq!(
        RotationPolicy::default(),
        RotationPolicy::new(10 << 20, 5).unwrap()
    );
}

/// A second writer keeps appending while many rotations run: the flag stops it.
#[test]
fn many_rotations_with_a_slow_trickle_keep_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("0.stdout");
    File::create(&live).unwrap();
    let policy = RotationPolicy::new(4096, 100_000).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let live = live.clone();
        let done = done.clone();
        thread::spawn(move || {
            let mut file = OpenOptions::new().append(true).open(&live).unwrap();
            let mut i = 0;
            while !done.load(Ordering::Relaxed) || i < 20_000 {
                file.write_all(format!("line {i:08}\n").as_bytes()).unwrap();
                i += 1;
                if i % 64 == 0 {
                    thread::yield_now();
                }
            }
            i
        })
    };
    for _ in 0..200 {
        rotate(&live, &policy, &CollapseRange).unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    let (_, content) = read_stream(&live);
    assert!(content == expected(0..written), "lines lost or repeated");
}
