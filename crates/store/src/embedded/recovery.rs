//! Opening a store directory: loading the snapshot, replaying the log after it, cutting a
//! torn final write and, when asked, salvaging a log damaged in the middle. Separate
//! because it runs once, before the writer exists, and owns the damage reports.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::state::State;
use super::wal::{self, Record};
use super::{sync_dir, SNAPSHOT_FILE, SNAPSHOT_TMP_FILE, WAL_FILE, WAL_REPAIR_TMP_FILE};
use crate::{Revision, StoreError};

/// What a repair dropped; its `Display` is the message an operator reads.
#[derive(Clone, Debug)]
pub struct RepairReport {
    /// The damaged log, kept as it was.
    pub damaged_copy: PathBuf,
    pub damage_offset: usize,
    pub reason: String,
    /// Records kept (everything before the damage).
    pub kept_records: usize,
    pub dropped_bytes: usize,
    /// Intact records found after the damage and dropped with it.
    pub dropped_records: usize,
    pub dropped_revisions: Option<(Revision, Revision)>,
}

impl std::fmt::Display for RepairReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "store log repaired: kept {} records before byte {}; dropped {} bytes ({}) holding {} intact records",
            self.kept_records, self.damage_offset, self.dropped_bytes, self.reason, self.dropped_records
        )?;
        if let Some((lo, hi)) = self.dropped_revisions {
            write!(f, " (revisions {lo} to {hi})")?;
        }
        write!(
            f,
            "; the damaged log is kept at {}",
            self.damaged_copy.display()
        )
    }
}

/// What is on disk, ready to serve: the state, the log to append to and its valid length.
pub(super) struct Recovered {
    pub(super) state: State,
    pub(super) wal: File,
    pub(super) wal_len: u64,
    pub(super) repair_report: Option<RepairReport>,
}

/// Reads the snapshot and the log of `dir` (whose lock the caller holds) into a state,
/// cutting a torn final write, and salvaging a log damaged elsewhere when `repair` is set.
pub(super) fn recover(dir: &Path, repair: bool) -> Result<Recovered, StoreError> {
    // Leftovers of a snapshot or repair interrupted before its rename.
    for leftover in [SNAPSHOT_TMP_FILE, WAL_REPAIR_TMP_FILE] {
        let tmp = dir.join(leftover);
        if tmp.exists() {
            std::fs::remove_file(&tmp)?;
        }
    }
    let snapshot_path = dir.join(SNAPSHOT_FILE);
    let mut state = if snapshot_path.exists() {
        let buf = std::fs::read(&snapshot_path)?;
        let parsed = wal::parse(&buf);
        // The snapshot was fsync'd before it was renamed into place: no torn tail allowed.
        if let Some(damage) = parsed.damage {
            return Err(StoreError::Corrupt(format!(
                "store snapshot {} is damaged at byte {} ({}); restore the data directory from a backup",
                snapshot_path.display(),
                damage.offset,
                damage.reason
            )));
        }
        State::load_snapshot(parsed.records).map_err(|e| in_file(&snapshot_path, e))?
    } else {
        State::new()
    };
    let snapshot_revision = state.revision;

    let wal_path = dir.join(WAL_FILE);
    let wal_existed = wal_path.exists();
    let buf = if wal_existed {
        std::fs::read(&wal_path)?
    } else {
        Vec::new()
    };
    let parsed = wal::parse(&buf);
    let mut repair_report = None;
    let mut cut_tail = false;
    if let Some(damage) = &parsed.damage {
        if damage.is_torn_tail() {
            tracing::warn!(
                path = %wal_path.display(),
                valid_bytes = parsed.valid_len,
                cut_bytes = buf.len() - parsed.valid_len,
                zero_filled = damage.all_zero,
                reason = %damage.reason,
                "cutting off a torn final write in the store log"
            );
            cut_tail = true;
        } else if repair {
            let report = salvage_log(dir, &wal_path, &buf, &parsed, damage)?;
            tracing::warn!("{report}");
            repair_report = Some(report);
        } else {
            return Err(StoreError::Corrupt(damaged_log_message(
                &wal_path, &parsed, damage,
            )));
        }
    }
    let valid_len = parsed.valid_len;
    drop(buf);
    for record in parsed.records {
        let already_in_snapshot = match &record {
            Record::Put { revision, .. } | Record::Delete { revision, .. } => {
                *revision <= snapshot_revision
            }
            Record::Compact { revision } => *revision <= state.compacted,
            _ => false,
        };
        if !already_in_snapshot {
            state.apply(record).map_err(|e| in_file(&wal_path, e))?;
        }
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&wal_path)?;
    if cut_tail {
        file.set_len(valid_len as u64)?;
        file.sync_all()?;
    }
    if !wal_existed {
        sync_dir(dir)?;
    }
    Ok(Recovered {
        state,
        wal: file,
        wal_len: valid_len as u64,
        repair_report,
    })
}

fn in_file(path: &Path, error: StoreError) -> StoreError {
    match error {
        StoreError::Corrupt(message) => {
            StoreError::Corrupt(format!("{}: {message}", path.display()))
        }
        other => other,
    }
}

fn damaged_log_message(path: &Path, parsed: &wal::Parsed, damage: &wal::Damage) -> String {
    let revisions = damage
        .revisions_after
        .map(|(lo, hi)| format!(" (revisions {lo} to {hi})"))
        .unwrap_or_default();
    format!(
        "store log {} is damaged at byte {} ({}), and {} intact records{revisions} follow the damage; \
         refusing to open, since cutting the log there would drop acknowledged writes. Restore the \
         data directory from a backup, or start once with --embedded-repair to keep the {} records \
         before byte {} and set the damaged log aside",
        path.display(),
        damage.offset,
        damage.reason,
        damage.intact_after,
        parsed.records.len(),
        damage.offset,
    )
}

/// Replaces the log by its intact prefix, keeping the damaged original next to it. At every
/// instant `wal` is either the original or the complete prefix: a crash mid-repair loses
/// nothing.
fn salvage_log(
    dir: &Path,
    wal_path: &Path,
    buf: &[u8],
    parsed: &wal::Parsed,
    damage: &wal::Damage,
) -> Result<RepairReport, StoreError> {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut damaged_copy = dir.join(format!("{WAL_FILE}.damaged-{seconds}"));
    let mut n = 1;
    while damaged_copy.exists() {
        damaged_copy = dir.join(format!("{WAL_FILE}.damaged-{seconds}.{n}"));
        n += 1;
    }
    let tmp = dir.join(WAL_REPAIR_TMP_FILE);
    {
        let mut file = File::create(&tmp)?;
        file.write_all(&buf[..parsed.valid_len])?;
        file.sync_all()?;
    }
    std::fs::hard_link(wal_path, &damaged_copy)?;
    std::fs::rename(&tmp, wal_path)?;
    sync_dir(dir)?;
    Ok(RepairReport {
        damaged_copy,
        damage_offset: damage.offset,
        reason: damage.reason.clone(),
        kept_records: parsed.records.len(),
        dropped_bytes: buf.len() - parsed.valid_len,
        dropped_records: damage.intact_after,
        dropped_revisions: damage.revisions_after,
    })
}
