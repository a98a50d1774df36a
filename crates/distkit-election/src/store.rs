//! Durable term and vote: a node must never vote twice in one term, even across restarts.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use distkit_core::{Error, NodeId, Term};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::HardState;

/// Where a node keeps its [`HardState`]. `save` must be durable when it returns: the runtime
/// answers no vote before it does.
pub trait VoteStore: Send + Sync + std::fmt::Debug {
    /// The stored state; the default state when nothing was stored yet.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] when the store exists but cannot be read or is corrupt. Never
    /// silently reset: a node that forgets its vote may vote twice in a term.
    fn load(&self) -> Result<HardState, Error>;

    /// Stores `state` durably.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] when it could not be made durable.
    fn save(&self, state: &HardState) -> Result<(), Error>;
}

impl<T: VoteStore + ?Sized> VoteStore for Arc<T> {
    fn load(&self) -> Result<HardState, Error> {
        (**self).load()
    }
    fn save(&self, state: &HardState) -> Result<(), Error> {
        (**self).save(state)
    }
}

/// A vote store in memory (tests, simulations). Clones share the state, so a "restarted"
/// node can be given the same store.
#[derive(Clone, Debug, Default)]
pub struct MemoryVoteStore(Arc<Mutex<HardState>>);

impl MemoryVoteStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl VoteStore for MemoryVoteStore {
    fn load(&self) -> Result<HardState, Error> {
        Ok(self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone())
    }
    fn save(&self, state: &HardState) -> Result<(), Error> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = state.clone();
        Ok(())
    }
}

/// A vote store in one small JSON file with a checksum. Saving writes a temporary file,
/// fsyncs it, renames it over the old one and fsyncs the directory, so a crash leaves either
/// the old state or the new one.
#[derive(Debug)]
pub struct FileVoteStore {
    path: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    term: u64,
    voted_for: Option<String>,
    check: String,
}

fn checksum(term: u64, voted_for: Option<&str>) -> String {
    format!(
        "{:016x}",
        xxh3_64(format!("{term}:{}", voted_for.unwrap_or("")).as_bytes())
    )
}

impl FileVoteStore {
    /// A store at `path` (its directory must exist).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, reason: impl Into<String>, source: Option<std::io::Error>) -> Error {
        Error::Storage {
            path: self.path.display().to_string(),
            reason: reason.into(),
            source: source.map(|e| Arc::new(e) as _),
        }
    }
}

impl VoteStore for FileVoteStore {
    fn load(&self) -> Result<HardState, Error> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HardState::default()),
            Err(e) => return Err(self.err("cannot read the vote file", Some(e))),
        };
        let disk: OnDisk = serde_json::from_slice(&bytes).map_err(|e| {
            self.err(format!("the vote file is corrupt ({e}); restore it or, only if this node's votes are known to be safe to forget, delete it"), None)
        })?;
        if disk.version != 1 {
            return Err(self.err(format!("unknown vote file version {}", disk.version), None));
        }
        if checksum(disk.term, disk.voted_for.as_deref()) != disk.check {
            return Err(self.err("the vote file's checksum does not match its contents", None));
        }
        let voted_for = disk
            .voted_for
            .map(NodeId::new)
            .transpose()
            .map_err(|e| self.err(format!("the vote file names an invalid node: {e}"), None))?;
        let term = Term::new(disk.term);
        if !term.is_valid() {
            return Err(self.err(
                format!("the vote file holds term {term}, above the largest valid term"),
                None,
            ));
        }
        Ok(HardState { term, voted_for })
    }

    fn save(&self, state: &HardState) -> Result<(), Error> {
        let voted_for = state.voted_for.as_ref().map(|v| v.as_str().to_owned());
        let disk = OnDisk {
            version: 1,
            term: state.term.get(),
            check: checksum(state.term.get(), voted_for.as_deref()),
            voted_for,
        };
        let body = serde_json::to_vec(&disk).map_err(|e| self.err(e.to_string(), None))?;
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = self.path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            File::open(dir)?.sync_all()
        };
        write().map_err(|e| self.err("cannot write the vote file durably", Some(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_store_round_trips_and_detects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileVoteStore::new(dir.path().join("vote.json"));
        assert_eq!(
            store.load().unwrap(),
            HardState::default(),
            "missing file: fresh node"
        );
        let hs = HardState {
            term: Term::new(7),
            voted_for: Some(NodeId::new("n2").unwrap()),
        };
        store.save(&hs).unwrap();
        assert_eq!(FileVoteStore::new(store.path()).load().unwrap(), hs);

        // A flipped digit is caught by the checksum.
        let text = fs::read_to_string(store.path())
            .unwrap()
            .replace("\"term\":7", "\"term\":8");
        fs::write(store.path(), text).unwrap();
        let e = store.load().unwrap_err();
        assert!(matches!(e, Error::Storage { .. }), "{e}");
        // Garbage is a clear error, not a reset.
        fs::write(store.path(), b"\x00\x01garbage").unwrap();
        assert!(store.load().unwrap_err().to_string().contains("corrupt"));
    }

    #[test]
    fn unreadable_path_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be.
        let store = FileVoteStore::new(dir.path());
        assert!(matches!(store.load(), Err(Error::Storage { .. })));
        let missing_dir = FileVoteStore::new(dir.path().join("no/such/dir/vote.json"));
        assert!(missing_dir.save(&HardState::default()).is_err());
    }
}
