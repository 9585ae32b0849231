//! Segment files: `<data_dir>/log/<first LSN, 20 digits>.seg`, each a short header then
//! frames (see [`super::record`]). Only the newest segment is ever appended to; older ones
//! are read-only until retention deletes them whole.
//!
//! The writer zero-fills the newest segment ahead of its frames (`storage.preallocate_bytes`),
//! so a segment may end in zeros: a frame header of zeros (never a real one: kind 0 does not
//! exist) with nothing but zeros after it is where the frames end. A frame that fails its
//! checksum with nothing but zeros after it is a write a crash cut short, like a file that
//! ends inside a frame.

use std::{
    fs::{self, File},
    io::{self, BufReader, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

use super::record::{self, FRAME_HEADER, FrameError, Header, Kind, Record};
use crate::error::Error;

/// The first bytes of every segment: a magic string and the format version.
pub(super) const MAGIC: &[u8; 16] = b"banditd-log-v1\n\0";

/// The segments folder of a data directory.
pub(super) fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("log")
}

/// The path of the segment whose first record is `base`.
pub(super) fn path(log_dir: &Path, base: u64) -> PathBuf {
    log_dir.join(format!("{base:020}.seg"))
}

/// An I/O error as a storage error naming the file.
pub(super) fn io_error(what: &str, path: &Path, e: &io::Error) -> Error {
    Error::Internal(format!("{what} {}: {e}", path.display()))
}

/// The segments in `log_dir`, oldest first, as (first LSN, path). Files that are not
/// segments are ignored.
///
/// # Errors
/// The folder cannot be read.
pub(super) fn list(log_dir: &Path) -> Result<Vec<(u64, PathBuf)>, Error> {
    let entries = match fs::read_dir(log_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("cannot read", log_dir, &e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("cannot read", log_dir, &e))?;
        let name = entry.file_name();
        let Some(base) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((base, entry.path()));
    }
    out.sort_unstable_by_key(|(base, _)| *base);
    Ok(out)
}

/// Reads one segment's frames in order.
#[derive(Debug)]
pub(super) struct Reader {
    file: BufReader<File>,
    path: PathBuf,
    /// Bytes consumed so far (header included): the end of the last whole frame.
    offset: u64,
    /// LSN of the next frame.
    lsn: u64,
    payload: Vec<u8>,
}

/// One frame as read: its LSN, kind, and the offset just past it.
#[derive(Debug)]
pub(super) struct Frame<'a> {
    /// Its log sequence number.
    pub lsn: u64,
    /// What it holds.
    pub kind: Kind,
    /// Its verified payload.
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// Decodes the payload.
    ///
    /// # Errors
    /// The payload is not a valid message of its kind.
    pub(super) fn decode(&self) -> Result<Record, FrameError> {
        record::decode(self.kind, self.payload)
    }
}

impl Reader {
    /// Opens the segment at `path` whose first record is `base` and checks its header.
    ///
    /// # Errors
    /// [`ReadError::Io`] naming the file for an I/O error (permissions included), or
    /// [`ReadError::Frame`] with [`FrameError::Corrupt`] when the header is not a segment
    /// header (a file too short to hold one is a segment whose creation was cut short).
    pub(super) fn open(path: &Path, base: u64) -> Result<Self, ReadError> {
        let file =
            File::open(path).map_err(|e| ReadError::Io(io_error("cannot open", path, &e)))?;
        let mut file = BufReader::with_capacity(64 * 1024, file);
        let mut magic = [0u8; MAGIC.len()];
        match file.read_exact(&mut magic) {
            Ok(()) if &magic == MAGIC => {}
            Ok(()) => {
                return Err(ReadError::Frame(FrameError::Corrupt(format!(
                    "{} is not a banditd log segment (bad header)",
                    path.display()
                ))));
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(ReadError::Frame(FrameError::Torn));
            }
            Err(e) => return Err(ReadError::Io(io_error("cannot read", path, &e))),
        }
        Ok(Self {
            file,
            path: path.to_owned(),
            offset: MAGIC.len() as u64,
            lsn: base,
            payload: Vec::new(),
        })
    }

    /// The end of the last whole frame read (where a torn tail would be cut).
    pub(super) fn offset(&self) -> u64 {
        self.offset
    }

    /// The LSN the next frame will have.
    pub(super) fn next_lsn(&self) -> u64 {
        self.lsn
    }

    /// The segment's path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The next frame, reading no further than byte `limit` of the file. `Ok(None)` at the
    /// limit, at the end of the file exactly at a frame boundary, or where only zeros follow
    /// (space the writer preallocated).
    ///
    /// # Errors
    /// `Err(Torn)` when the bytes before `limit` end inside a frame, or a frame that fails its
    /// checksum is followed by zeros only; `Err(Corrupt)` when a frame fails its checksum
    /// otherwise; `Err(Io)` for an I/O error.
    pub(super) fn next(&mut self, limit: u64) -> Result<Option<Frame<'_>>, ReadError> {
        if self.offset >= limit {
            return Ok(None);
        }
        let mut head = [0u8; FRAME_HEADER];
        if self.offset + FRAME_HEADER as u64 > limit {
            return Err(ReadError::Frame(FrameError::Torn));
        }
        match read_full(&mut self.file, &mut head) {
            Ok(0) => return Ok(None),
            Ok(n) if n < FRAME_HEADER => return Err(ReadError::Frame(FrameError::Torn)),
            Ok(_) => {}
            Err(e) => return Err(ReadError::Io(io_error("cannot read", &self.path, &e))),
        }
        if head == [0; FRAME_HEADER] {
            return if self.rest_is_zero()? {
                Ok(None)
            } else {
                Err(ReadError::Frame(FrameError::Corrupt(
                    "a zero frame header before more frames".into(),
                )))
            };
        }
        let header = match Header::parse(&head) {
            Ok(header) => header,
            Err(e) => return Err(self.torn_if_zeros_follow(e)?),
        };
        let end = self.offset + FRAME_HEADER as u64 + u64::from(header.len);
        if end > limit {
            return Err(ReadError::Frame(FrameError::Torn));
        }
        self.payload.resize(header.len as usize, 0);
        match read_full(&mut self.file, &mut self.payload) {
            Ok(n) if n < self.payload.len() => return Err(ReadError::Frame(FrameError::Torn)),
            Ok(_) => {}
            Err(e) => return Err(ReadError::Io(io_error("cannot read", &self.path, &e))),
        }
        let kind = match header.verify(&self.payload) {
            Ok(kind) => kind,
            Err(e) => return Err(self.torn_if_zeros_follow(e)?),
        };
        self.offset = end;
        let lsn = self.lsn;
        self.lsn += 1;
        Ok(Some(Frame {
            lsn,
            kind,
            payload: &self.payload,
        }))
    }

    /// `Torn` if zeros, and only zeros, follow the bytes read so far (a write cut short
    /// inside preallocated space), else `error`: a bad last frame with nothing after it is
    /// corrupt, as it always was. Reads to the end of the file.
    fn torn_if_zeros_follow(&mut self, error: FrameError) -> Result<ReadError, ReadError> {
        Ok(ReadError::Frame(match self.zeros_to_end()? {
            Some(n) if n > 0 => FrameError::Torn,
            _ => error,
        }))
    }

    /// Whether the file holds only zeros from the read position to its end. Moves the read
    /// position to the end (or past the first nonzero byte).
    fn rest_is_zero(&mut self) -> Result<bool, ReadError> {
        Ok(self.zeros_to_end()?.is_some())
    }

    /// How many bytes, all zero, follow the read position to the end of the file; `None`
    /// if any of them is not zero.
    fn zeros_to_end(&mut self) -> Result<Option<u64>, ReadError> {
        let mut chunk = [0u8; 8192];
        let mut zeros = 0u64;
        loop {
            match read_full(&mut self.file, &mut chunk) {
                Ok(0) => return Ok(Some(zeros)),
                Ok(n) if chunk[..n].iter().any(|&b| b != 0) => return Ok(None),
                Ok(n) => zeros += n as u64,
                Err(e) => return Err(ReadError::Io(io_error("cannot read", &self.path, &e))),
            }
        }
    }

    /// Moves to byte `offset`, the start of the frame with LSN `lsn`, without reading the
    /// frames before it (a tail that knows they hold nothing for it).
    ///
    /// # Errors
    /// An I/O error.
    pub(super) fn jump(&mut self, offset: u64, lsn: u64) -> Result<(), Error> {
        self.offset = offset;
        self.lsn = lsn;
        self.rewind_to_offset()
    }

    /// Re-positions the file after reading past what `next` returned (a torn frame that may
    /// since have been completed by the writer): back to the last whole frame's end.
    ///
    /// # Errors
    /// An I/O error.
    pub(super) fn rewind_to_offset(&mut self) -> Result<(), Error> {
        self.file
            .seek(SeekFrom::Start(self.offset))
            .map(|_| ())
            .map_err(|e| io_error("cannot seek", &self.path, &e))
    }
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(super) enum ReadError {
    /// The frame itself is torn or corrupt.
    Frame(FrameError),
    /// The file could not be read.
    Io(Error),
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
