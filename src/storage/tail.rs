//! A consumer's view of the log: one model's training examples, in log order, as the writer
//! commits them. The learner reads its model's examples through a [`Tail`] instead of being
//! handed them, so a slow learner never holds up the writer (or any other model): it only
//! falls behind in the log, and its floor keeps retention from deleting what it still needs.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use super::{
    record::Kind,
    segment::{self, ReadError, Reader},
    writer::{Shared, Signal, Watermark},
};
use crate::{domain::Example, error::Error, metrics};

/// Reads one model's examples from the log, from a starting LSN on.
#[derive(Debug)]
pub struct Tail {
    shared: Arc<Shared>,
    model: String,
    /// The next LSN to read.
    next: u64,
    /// The open segment (its first LSN) and the position in it.
    reader: Option<(u64, Reader)>,
    /// The lowest LSN this consumer may still ask for after a restart (retention keeps it).
    floor: Arc<AtomicU64>,
    /// Woken by commits that hold this model's examples.
    signal: Arc<Signal>,
}

impl Tail {
    pub(super) fn new(shared: Arc<Shared>, model: &str, from: u64) -> Self {
        let floor = Arc::new(AtomicU64::new(from));
        shared.register_floor(&floor);
        let signal = shared.register_signal(model);
        Self {
            shared,
            model: model.to_owned(),
            next: from,
            reader: None,
            floor,
            signal,
        }
    }

    /// Times the log writer woke this tail.
    #[cfg(test)]
    pub(super) fn wakes(&self) -> u64 {
        self.signal.wakes()
    }

    /// The next LSN this tail will read.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// One past the last committed LSN now.
    pub fn committed(&self) -> u64 {
        self.shared.watermark().lsn_end
    }

    /// Tells retention that records below `lsn` are no longer needed by this consumer (its
    /// newest checkpoint and replay window start there).
    pub fn release_below(&self, lsn: u64) {
        self.floor.store(lsn, Ordering::Release);
    }

    /// Up to `max` of the model's examples committed since the last call. When everything
    /// committed has been read, it first waits up to `timeout` for a commit that holds one of
    /// the model's examples; records that are none (decisions, other models' events) do not
    /// end the wait, and are read (and skipped) with the next example or after the timeout.
    /// `Ok(None)` once the writer has stopped and everything it committed has been read.
    ///
    /// # Errors
    /// A segment cannot be read (an I/O error). Corrupt frames are skipped with the rest of
    /// their segment, logged and counted.
    pub fn poll(&mut self, max: usize, timeout: Duration) -> Result<Option<Vec<Example>>, Error> {
        let mut out = Vec::new();
        let mut watermark = self.shared.watermark();
        if self.next >= watermark.lsn_end {
            if watermark.closed {
                return Ok(None);
            }
            watermark = self.shared.wait_past(self.next, timeout, &self.signal);
        }
        if self.signal.examples_end() <= self.next && self.next < watermark.lsn_end {
            // Nothing from here to the watermark is this model's example (decisions, other
            // models' events): skip it unread.
            self.skip_to(&watermark)?;
        }
        while out.len() < max && self.next < watermark.lsn_end {
            if !self.read_some(&watermark, max, &mut out)? {
                break;
            }
        }
        Ok(Some(out))
    }

    /// Reads frames from the segment holding `self.next` up to the watermark; returns false
    /// when nothing more can be read now.
    fn read_some(
        &mut self,
        watermark: &Watermark,
        max: usize,
        out: &mut Vec<Example>,
    ) -> Result<bool, Error> {
        let more = match self.read_segment(watermark, max, out) {
            Ok(more) => more,
            Err(e) => {
                // The reader's buffer and file position may no longer match where it
                // stands: reopened at `next` on the next call.
                self.reader = None;
                return Err(e);
            }
        };
        // Past the committed end of the segment being written lie zeros the writer will
        // overwrite (it preallocates): whatever the reader buffered of them is dropped.
        if let Some((base, reader)) = self.reader.as_mut()
            && *base >= watermark.segment
        {
            reader.rewind_to_offset()?;
        }
        Ok(more)
    }

    /// [`Tail::read_some`] but for dropping what was read ahead.
    fn read_segment(
        &mut self,
        watermark: &Watermark,
        max: usize,
        out: &mut Vec<Example>,
    ) -> Result<bool, Error> {
        if self.reader.is_none() && !self.open_reader()? {
            return Ok(false);
        }
        let Some((base, reader)) = self.reader.as_mut() else {
            return Ok(false);
        };
        // Only the segment being written has an end short of its file's; sealed ones are
        // read to their end.
        let current = *base >= watermark.segment;
        let limit = if current { watermark.offset } else { u64::MAX };
        loop {
            if out.len() >= max || reader.next_lsn() >= watermark.lsn_end {
                return Ok(true);
            }
            match reader.next(limit) {
                Ok(Some(frame)) => {
                    let lsn = frame.lsn;
                    self.next = lsn + 1;
                    if frame.kind == Kind::Decision {
                        continue;
                    }
                    match frame.decode() {
                        Ok(record) => out.extend(record.example_for(&self.model, lsn)),
                        Err(e) => {
                            skip_rest(reader.path(), &format!("{e:?}"));
                            return self.next_segment();
                        }
                    }
                }
                Ok(None) if current => return Ok(false),
                // The end of a sealed segment: go on in the next one.
                Ok(None) => return self.next_segment(),
                Err(ReadError::Frame(e)) => {
                    // Below the watermark this means the file was damaged: whatever the
                    // segment holds after this point is lost.
                    skip_rest(reader.path(), &format!("{e:?}"));
                    if current {
                        return Ok(false);
                    }
                    return self.next_segment();
                }
                Err(ReadError::Io(e)) => return Err(e),
            }
        }
    }

    /// Moves to the watermark's end without reading the records before it.
    fn skip_to(&mut self, watermark: &Watermark) -> Result<(), Error> {
        let reader = match self.reader.take() {
            Some((base, reader)) if base == watermark.segment => reader,
            _ => {
                let path = segment::path(&self.shared.dir, watermark.segment);
                match Reader::open(&path, watermark.segment) {
                    Ok(reader) => reader,
                    Err(ReadError::Io(e)) => return Err(e),
                    Err(ReadError::Frame(e)) => {
                        // The writer made this segment whole before the watermark named it.
                        return Err(Error::Internal(format!(
                            "{}: {e:?} below the watermark",
                            path.display()
                        )));
                    }
                }
            }
        };
        let mut reader = reader;
        reader.jump(watermark.offset, watermark.lsn_end)?;
        self.next = watermark.lsn_end;
        self.reader = Some((watermark.segment, reader));
        Ok(())
    }

    /// Moves on to the segment after the current one; false if there is none yet.
    fn next_segment(&mut self) -> Result<bool, Error> {
        let Some((base, _)) = self.reader.take() else {
            return Ok(false);
        };
        let next = segment::list(&self.shared.dir)?
            .into_iter()
            .map(|(b, _)| b)
            .find(|b| *b > base);
        match next {
            Some(next) => {
                // Restarts leave gaps in the LSNs between segments.
                self.next = self.next.max(next);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Opens the segment that holds `self.next` and skips to it. False if there is none yet.
    fn open_reader(&mut self) -> Result<bool, Error> {
        let segments = segment::list(&self.shared.dir)?;
        let Some((base, path)) = segments
            .iter()
            .rev()
            .find(|(base, _)| *base <= self.next)
            .or_else(|| segments.first())
        else {
            return Ok(false);
        };
        let mut reader = match Reader::open(path, *base) {
            Ok(r) => r,
            Err(ReadError::Io(e)) => return Err(e),
            Err(ReadError::Frame(e)) => {
                skip_rest(path, &format!("{e:?}"));
                return Ok(false);
            }
        };
        self.next = self.next.max(*base);
        // Skip to `self.next` (frames are not indexed; segments are bounded in size).
        while reader.next_lsn() < self.next {
            match reader.next(u64::MAX) {
                Ok(Some(_)) => {}
                Ok(None) | Err(ReadError::Frame(_)) => break,
                Err(ReadError::Io(e)) => return Err(e),
            }
        }
        // A segment that ends before `next` (its torn tail was cut at recovery): the log
        // continues in the next segment.
        self.next = reader.next_lsn();
        reader.rewind_to_offset()?;
        self.reader = Some((*base, reader));
        Ok(true)
    }
}

fn skip_rest(path: &std::path::Path, why: &str) {
    tracing::error!(path = %path.display(), why, "unreadable log frame: skipping the rest of the segment");
    metrics::recovery_skipped("log_frame", 1);
}
