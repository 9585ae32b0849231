//! Reading the whole log in order: recovery at startup and `banditd export` both start here.
//!
//! Damage is told apart from a crash: a frame cut short at the very end of the newest segment
//! (the file ends inside it, or only preallocated zeros follow it) is the write a crash
//! interrupted, and recovery cuts it off (it was never acknowledged); a frame that fails its
//! checksum otherwise, or a short frame anywhere else, is corruption: the rest of that
//! segment is skipped, logged and counted, and the segment is left as it is for inspection.
//! (After a power loss in `periodic` mode, unsynced writes into preallocated space can reach
//! the disk out of order, zeros before records: that unacknowledged tail is reported as
//! corruption too.) Read-only scans (export) stop quietly at the newest segment's first
//! unreadable frame: it may be a running server's live end. I/O errors (permissions, a failing disk) stop the scan with an error naming
//! the file: they are not corruption and nothing is moved or cut.

use std::{fs::OpenOptions, path::Path};

use super::{
    record::{FrameError, Record},
    segment::{self, ReadError, Reader},
};
use crate::{error::Error, metrics};

/// What a scan found besides the records.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanSummary {
    /// One past the highest LSN read (0 for an empty log).
    pub next_lsn: u64,
    /// Records read.
    pub records: u64,
    /// Segments whose remainder was skipped as corrupt.
    pub corrupt_segments: u64,
    /// Bytes of a torn tail cut off the newest segment (with `repair`).
    pub torn_bytes: u64,
    /// Segments read.
    pub segments: u64,
    /// Their total size in bytes.
    pub bytes: u64,
}

/// Reads every record of the log under `data_dir`, oldest first, calling `each(lsn, record)`.
/// With `repair`, a torn tail of the newest segment is cut off (the server does this before
/// it appends); without, the log is only read (export, a running server's log).
///
/// # Errors
/// A segment cannot be read (I/O error or permissions), naming the file.
pub(super) fn scan(
    data_dir: &Path,
    repair: bool,
    mut each: impl FnMut(u64, Record),
) -> Result<ScanSummary, Error> {
    let segments = segment::list(&segment::dir(data_dir))?;
    let mut summary = ScanSummary::default();
    let last = segments.len().saturating_sub(1);
    for (i, (base, path)) in segments.iter().enumerate() {
        summary.segments += 1;
        summary.bytes += std::fs::metadata(path)
            .map_err(|e| segment::io_error("cannot read", path, &e))?
            .len();
        summary.next_lsn = summary.next_lsn.max(*base);
        let mut reader = match Reader::open(path, *base) {
            Ok(r) => r,
            Err(ReadError::Io(e)) => return Err(e),
            // A header cut short: the segment's creation was interrupted (it holds nothing).
            Err(ReadError::Frame(FrameError::Torn)) if i == last => {
                if repair {
                    tracing::warn!(path = %path.display(), "removing a log segment whose creation was interrupted");
                    std::fs::remove_file(path)
                        .map_err(|e| segment::io_error("cannot remove", path, &e))?;
                }
                continue;
            }
            Err(ReadError::Frame(e)) => {
                corrupt(path, &e, &mut summary);
                continue;
            }
        };
        loop {
            match reader.next(u64::MAX) {
                Ok(Some(frame)) => {
                    let lsn = frame.lsn;
                    match frame.decode() {
                        Ok(record) => {
                            summary.records += 1;
                            each(lsn, record);
                        }
                        Err(e) => {
                            corrupt(path, &e, &mut summary);
                            break;
                        }
                    }
                }
                Ok(None) => {
                    if repair && i == last {
                        cut_zeros(path, reader.offset())?;
                    }
                    break;
                }
                Err(ReadError::Frame(FrameError::Torn)) if i == last => {
                    let len = std::fs::metadata(path)
                        .map_err(|e| segment::io_error("cannot read", path, &e))?
                        .len();
                    summary.torn_bytes = len - reader.offset();
                    if repair {
                        tracing::warn!(
                            path = %path.display(),
                            bytes = summary.torn_bytes,
                            "cutting off a log record that a crash left half-written (never acknowledged), and any preallocated space after it"
                        );
                        cut_at(path, reader.offset())?;
                    }
                    break;
                }
                // Read-only, the newest segment may be a running server's: its records end
                // where the writer is (a read-ahead buffer can hold zeros the writer has
                // since overwritten). Recovery, which repairs, still tells damage apart.
                Err(ReadError::Frame(e)) if i == last && !repair => {
                    tracing::debug!(path = %path.display(), error = ?e, "the newest log segment's readable records end here");
                    break;
                }
                Err(ReadError::Frame(e)) => {
                    corrupt(path, &e, &mut summary);
                    break;
                }
                Err(ReadError::Io(e)) => return Err(e),
            }
        }
        summary.next_lsn = summary.next_lsn.max(reader.next_lsn());
    }
    Ok(summary)
}

/// Cuts the zeros the writer preallocated off the end of a segment a crash left them in
/// (its records end at `end`), so that it is a sealed segment like any other.
fn cut_zeros(path: &Path, end: u64) -> Result<(), Error> {
    let len = std::fs::metadata(path)
        .map_err(|e| segment::io_error("cannot read", path, &e))?
        .len();
    if len > end {
        tracing::debug!(path = %path.display(), bytes = len - end, "cutting preallocated zeros off the newest log segment");
        cut_at(path, end)?;
    }
    Ok(())
}

/// Cuts the segment at `path` to `end` bytes, durably.
fn cut_at(path: &Path, end: u64) -> Result<(), Error> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(end).and_then(|()| f.sync_all()))
        .map_err(|e| segment::io_error("cannot truncate", path, &e))
}

fn corrupt(path: &Path, e: &FrameError, summary: &mut ScanSummary) {
    tracing::error!(path = %path.display(), error = ?e, "corrupt log segment: skipping the rest of it (the file is left as it is)");
    metrics::recovery_skipped("log_segment", 1);
    summary.corrupt_segments += 1;
}
