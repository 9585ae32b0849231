//! Each model's durable version mark: the highest version its learner may have published
//! (`reserved`), and whether the newest checkpoint is exactly what serves (`sealed`).
//!
//! Two promises meet here. Versions never go backwards and a version never names two
//! different weights, even after `kill -9`; and a model's version comes back exactly as it
//! was acknowledged when nothing was learned since. A publish above the reservation first
//! reserves a block of [`RESERVE_BLOCK`] versions durably (one small fsynced write per block,
//! not per publish), so after a crash every version above the mark is unused. A learner
//! seals the mark to version `v` once a checkpoint holds exactly the weights `v` serves and
//! nothing above `v` was published (on start, after each admin change, at a clean stop, and
//! at a periodic checkpoint when no example arrived since the publish): recovery then serves
//! that checkpoint as `v` again if no example after it needs training, and otherwise a new
//! version above the mark.
//!
//! The mark lives in `<data_dir>/versions/<model>.mark` (JSON), written atomically (temp
//! file, fsync, rename, directory fsync). It outlives its model: a model deleted and created
//! again under the same name goes on above the old one's versions. `<data_dir>/version_floor`
//! holds a floor under every mark, set when a data directory of the earlier scheme (a start
//! counter in `<data_dir>/epoch`, versions `epoch × 2^32 + n`) is migrated.

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::checkpoint::{sync_dir, write_atomic};
use crate::error::Error;

/// Versions reserved ahead per durable write. At a publish every 100 ms this is one small
/// fsynced write every ~7 minutes; after a crash the version jumps by at most this much.
pub const RESERVE_BLOCK: u64 = 4096;

/// The floor file's name in the data directory.
const FLOOR_FILE: &str = "version_floor";

/// The earlier scheme's start counter, migrated into the floor.
const EPOCH_FILE: &str = "epoch";

fn io(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{what} {}: {e}", path.display()))
}

/// The mark file's contents.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkFile {
    /// No version above this was published.
    reserved: u64,
    /// The version the newest checkpoint holds exactly and serves, with nothing published
    /// above it (then `reserved` equals it).
    sealed: Option<u64>,
}

/// One model's mark, owned by its learner (one writer per model; the admin calls hand it
/// from the stopped learner to the next by reopening it).
#[derive(Debug)]
pub struct VersionMark {
    path: PathBuf,
    mark: MarkFile,
}

impl VersionMark {
    /// Reads `model`'s mark (none yet: nothing published above the floor), raised to the
    /// data directory's floor.
    ///
    /// # Errors
    /// The mark or the floor cannot be read or does not parse.
    pub fn open(data_dir: &Path, model: &str) -> Result<Self, Error> {
        let path = data_dir.join("versions").join(format!("{model}.mark"));
        let floor = read_floor(data_dir)?;
        let mark = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<MarkFile>(&bytes)
                .map_err(|e| io("parse the version mark", &path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => MarkFile {
                reserved: 0,
                sealed: None,
            },
            Err(e) => return Err(io("read", &path, e)),
        };
        // A floor above the mark (a migration) means versions up to it may have served.
        let mark = if floor > mark.reserved {
            MarkFile {
                reserved: floor,
                sealed: None,
            }
        } else {
            mark
        };
        Ok(Self { path, mark })
    }

    /// No version above this was published.
    pub fn reserved(&self) -> u64 {
        self.mark.reserved
    }

    /// The version the newest checkpoint holds exactly, if sealed.
    pub fn sealed(&self) -> Option<u64> {
        self.mark.sealed
    }

    /// Makes `version` publishable: above the reservation, reserves `version` and the
    /// [`RESERVE_BLOCK`] − 1 after it durably (unsealing); otherwise writes nothing.
    ///
    /// # Errors
    /// The mark cannot be written; `version` must not be published then.
    pub fn reserve(&mut self, version: u64) -> Result<(), Error> {
        if version <= self.mark.reserved {
            return Ok(());
        }
        self.write(MarkFile {
            reserved: version.saturating_add(RESERVE_BLOCK - 1),
            sealed: None,
        })
    }

    /// Records that a checkpoint holds exactly the weights `version` serves and that nothing
    /// above it was published. Call only when both hold.
    ///
    /// # Errors
    /// The mark cannot be written (it stays as it was: recovery then picks a new version).
    pub fn seal(&mut self, version: u64) -> Result<(), Error> {
        if self.mark.sealed == Some(version) {
            return Ok(());
        }
        self.write(MarkFile {
            reserved: version,
            sealed: Some(version),
        })
    }

    fn write(&mut self, mark: MarkFile) -> Result<(), Error> {
        let dir = self
            .path
            .parent()
            .ok_or_else(|| io("no directory for", &self.path, "?"))?;
        fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        let bytes = serde_json::to_vec(&mark).map_err(|e| io("serialise", &self.path, e))?;
        write_atomic(&self.path, &bytes)?;
        sync_dir(dir)?;
        self.mark = mark;
        Ok(())
    }
}

/// The floor under every mark (0 if none).
fn read_floor(data_dir: &Path) -> Result<u64, Error> {
    read_number(&data_dir.join(FLOOR_FILE))
}

fn read_number(path: &Path) -> Result<u64, Error> {
    match fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map_err(|e| io("a number was expected in", path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io("read", path, e)),
    }
}

/// Migrates a data directory of the earlier scheme: its start counter `epoch` (versions
/// `epoch × 2^32 + n`, n < 2^32) becomes the floor `(epoch + 1) × 2^32 − 1`, so the next
/// version is what that scheme would have served next; then the counter is removed. Returns
/// the epoch migrated, if any. Idempotent (a crash between the two steps repeats it).
///
/// # Errors
/// The files cannot be read, written or removed.
pub(super) fn migrate_epoch(data_dir: &Path) -> Result<Option<u64>, Error> {
    let epoch_path = data_dir.join(EPOCH_FILE);
    if !epoch_path.exists() {
        return Ok(None);
    }
    let epoch = read_number(&epoch_path)?;
    let floor = epoch
        .saturating_add(1)
        .saturating_mul(1 << 32)
        .saturating_sub(1)
        .max(read_floor(data_dir)?);
    write_atomic(&data_dir.join(FLOOR_FILE), format!("{floor}\n").as_bytes())?;
    sync_dir(data_dir)?;
    fs::remove_file(&epoch_path).map_err(|e| io("remove", &epoch_path, e))?;
    sync_dir(data_dir)?;
    Ok(Some(epoch))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh mark reserves a block at the first publish and writes nothing for the
    /// publishes inside it; the next block is written only when the publishes pass it. A
    /// reopened mark reads what was written.
    #[test]
    fn reserves_in_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let mut mark = VersionMark::open(dir.path(), "m").unwrap();
        assert_eq!((mark.reserved(), mark.sealed()), (0, None));
        mark.reserve(1).unwrap();
        assert_eq!(mark.reserved(), RESERVE_BLOCK);
        let file = dir.path().join("versions/m.mark");
        fs::remove_file(&file).unwrap();
        // Inside the block: no write (the removed file stays removed).
        for v in 2..=RESERVE_BLOCK {
            mark.reserve(v).unwrap();
        }
        assert!(!file.exists(), "a publish inside the block wrote the mark");
        mark.reserve(RESERVE_BLOCK + 1).unwrap();
        assert!(file.exists(), "passing the block did not write the mark");
        let again = VersionMark::open(dir.path(), "m").unwrap();
        assert_eq!(
            (again.reserved(), again.sealed()),
            (2 * RESERVE_BLOCK, None)
        );
    }

    /// Sealing lowers the reservation to exactly the sealed version; the next publish above
    /// it unseals; marks of different models are independent.
    #[test]
    fn seal_then_publish_unseals() {
        let dir = tempfile::tempdir().unwrap();
        let mut mark = VersionMark::open(dir.path(), "m").unwrap();
        mark.reserve(5).unwrap();
        mark.seal(7).unwrap();
        let again = VersionMark::open(dir.path(), "m").unwrap();
        assert_eq!((again.reserved(), again.sealed()), (7, Some(7)));
        mark.reserve(8).unwrap();
        let again = VersionMark::open(dir.path(), "m").unwrap();
        assert_eq!(
            (again.reserved(), again.sealed()),
            (8 + RESERVE_BLOCK - 1, None)
        );
        let other = VersionMark::open(dir.path(), "m.other").unwrap();
        assert_eq!((other.reserved(), other.sealed()), (0, None));
    }

    /// An old data directory's start counter becomes the floor under every mark (the next
    /// version is the old scheme's next start's first), the counter is removed, and a mark
    /// below the floor loses its seal.
    #[test]
    fn epoch_migrates_to_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let mut sealed = VersionMark::open(dir.path(), "m").unwrap();
        sealed.seal(9).unwrap();
        fs::write(dir.path().join("epoch"), "3\n").unwrap();
        assert_eq!(migrate_epoch(dir.path()).unwrap(), Some(3));
        assert!(!dir.path().join("epoch").exists());
        assert_eq!(migrate_epoch(dir.path()).unwrap(), None);
        let floor = (4u64 << 32) - 1;
        for model in ["m", "new"] {
            let mark = VersionMark::open(dir.path(), model).unwrap();
            assert_eq!((mark.reserved(), mark.sealed()), (floor, None), "{model}");
        }
        // A mark above the floor is kept as it is.
        let mut above = VersionMark::open(dir.path(), "m").unwrap();
        above.seal(floor + 2).unwrap();
        let again = VersionMark::open(dir.path(), "m").unwrap();
        assert_eq!(again.sealed(), Some(floor + 2));
    }

    /// A mark that does not parse is an error naming the file, not a silent reset.
    #[test]
    fn unreadable_mark_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("versions")).unwrap();
        fs::write(dir.path().join("versions/m.mark"), "{\"reserved\":").unwrap();
        let err = VersionMark::open(dir.path(), "m").unwrap_err().to_string();
        assert!(err.contains("versions/m.mark"), "{err}");
        fs::write(dir.path().join("version_floor"), "x").unwrap();
        let err = VersionMark::open(dir.path(), "n").unwrap_err().to_string();
        assert!(err.contains("version_floor"), "{err}");
    }
}
