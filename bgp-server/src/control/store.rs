//! The last accepted desired state on disk, so that a restarted speaker announces it at once,
//! before any client connects. Written atomically (temporary file, fsync, rename, fsync of the
//! directory); a file that is missing is no state, and one that is corrupt or unreadable is an
//! error the caller reports and ignores, never a reason not to start.
//!
//! Format: `BERTHDS1`, the body's length (u64, big-endian), its FNV-1a 64 checksum, then the
//! `berth.bgp.v1.DesiredState` protobuf. Protobuf alone decodes many random byte strings, so
//! the checksum is what tells a torn or damaged file.
//!
//! Single-route changes (UpdateRoutes) are appended to a journal beside it instead of
//! rewriting 100,000 routes each time: records of length (u32), checksum (u64) and an
//! `UpdateRoutesRequest`, each fsynced. A full save empties the journal (durably: the
//! directory is fsynced after the removal); loading replays the records after the state, stops
//! at the first torn one (an interrupted last append) and cuts the file there, so the changes
//! appended after a restart are not stranded behind it. An append that fails part-way is cut
//! off the same way at once.
//!
//! Both files are created mode 0600: they hold the peers' MD5 passwords.

use std::fs::Permissions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use berth_proto::v1;
use prost::Message;

const MAGIC: &[u8; 8] = b"BERTHDS1";
const FILE: &str = "desired-state.pb";
const JOURNAL: &str = "desired-state.journal";

/// Why a state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a whole state written by this speaker.
    #[error("{path}: {why}; it is ignored and will be replaced by the next accepted state")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The state directory (`--state-dir`).
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Store {
    /// A store in `dir` (created on first save).
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    /// The state file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The journal of changes made after the state file.
    pub fn journal_path(&self) -> PathBuf {
        self.dir.join(JOURNAL)
    }

    /// Appends one accepted change to the journal and makes it durable.
    pub fn append(&self, change: &v1::UpdateRoutesRequest) -> Result<(), StoreError> {
        let path = self.journal_path();
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let body = change.encode_to_vec();
        let len = u32::try_from(body.len()).map_err(|_| {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "change larger than 4 GiB",
            ))
        })?;
        let mut rec = Vec::with_capacity(body.len() + 12);
        rec.extend_from_slice(&len.to_be_bytes());
        rec.extend_from_slice(&fnv1a(&body).to_be_bytes());
        rec.extend_from_slice(&body);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        // A journal written by an older version may have the default mode.
        f.set_permissions(Permissions::from_mode(0o600))
            .map_err(io)?;
        let before = f.metadata().map_err(io)?.len();
        let written = f.write_all(&rec).and_then(|()| f.sync_data());
        if let Err(e) = written {
            // Cut off what part of the record reached the file: a torn record in the middle
            // would hide every later change from the replay.
            let _ = f.set_len(before).and_then(|()| f.sync_data());
            return Err(io(e));
        }
        Ok(())
    }

    /// The journal's changes in order; a torn or damaged tail ends the list (it was never
    /// acknowledged), is reported in the second value and is cut off the file, so the next
    /// append follows the last good record.
    pub fn changes(&self) -> (Vec<v1::UpdateRoutesRequest>, Option<StoreError>) {
        let (changes, good, err) = self.read_journal();
        if err.is_some() {
            let path = self.journal_path();
            let cut = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(good).and_then(|()| f.sync_all()));
            if let Err(source) = cut {
                // The replay is still right; the next append would be lost behind the tail,
                // but the next full save removes the journal.
                return (changes, Some(StoreError::Io { path, source }));
            }
        }
        (changes, err)
    }

    /// The journal's good records, the length they span, and what ended the read early.
    fn read_journal(&self) -> (Vec<v1::UpdateRoutesRequest>, u64, Option<StoreError>) {
        let path = self.journal_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Vec::new(), 0, None),
            Err(source) => return (Vec::new(), 0, Some(StoreError::Io { path, source })),
        };
        let mut out = Vec::new();
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            let record = (|| {
                let (len, r) = rest.split_at_checked(4)?;
                let (sum, r) = r.split_at_checked(8)?;
                let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
                let (body, r) = r.split_at_checked(len)?;
                (fnv1a(body) == u64::from_be_bytes(sum.try_into().ok()?)).then_some((body, r))
            })();
            let good = (bytes.len() - rest.len()) as u64;
            let Some((body, r)) = record else {
                let why = format!("torn or damaged record after {} good ones", out.len());
                return (out, good, Some(StoreError::Corrupt { path, why }));
            };
            match v1::UpdateRoutesRequest::decode(body) {
                Ok(c) => out.push(c),
                Err(e) => {
                    let why = format!("record {}: {e}", out.len());
                    return (out, good, Some(StoreError::Corrupt { path, why }));
                }
            }
            rest = r;
        }
        (out, bytes.len() as u64, None)
    }

    /// Replaces the saved state, atomically, and empties the journal.
    pub fn save(&self, state: &v1::DesiredState) -> Result<(), StoreError> {
        self.save_encoded(&state.encode_to_vec())
    }

    /// Writes an already encoded `berth.bgp.v1.DesiredState` (an Apply's own bytes) as the
    /// state, atomically, as [`Store::save`] does: the table is not encoded a second time.
    pub fn save_encoded(&self, body: &[u8]) -> Result<(), StoreError> {
        let path = self.path();
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let mut header = Vec::with_capacity(24);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&(body.len() as u64).to_be_bytes());
        header.extend_from_slice(&fnv1a(body).to_be_bytes());
        let tmp = self.dir.join(format!(".{FILE}.tmp"));
        {
            // A leftover of a crash keeps its mode through `create`: start afresh.
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?;
            f.write_all(&header).map_err(io)?;
            f.write_all(body).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        // The rename itself must survive a crash.
        let sync_dir = || std::fs::File::open(&self.dir).and_then(|d| d.sync_all());
        sync_dir().map_err(io)?;
        // Everything journaled is in the state now.
        match std::fs::remove_file(self.journal_path()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e)),
            // Durable too: a journal that came back after a crash would replay old changes
            // over the new state (those of a generation at least the state's).
            Ok(()) => sync_dir().map_err(io),
        }
    }

    /// The saved state still encoded (checked whole and undamaged, not decoded): a restart
    /// converts it route by route as an Apply does. `None` when there is none.
    pub fn load_encoded(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path();
        let mut bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let header = match checked(&bytes) {
            Ok(body) => bytes.len() - body.len(),
            Err(why) => return Err(StoreError::Corrupt { path, why }),
        };
        // In place: the table is not copied.
        bytes.drain(..header);
        Ok(Some(bytes))
    }

    /// The saved state: `None` when there is none.
    pub fn load(&self) -> Result<Option<v1::DesiredState>, StoreError> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        decode(&bytes)
            .map(Some)
            .map_err(|why| StoreError::Corrupt { path, why })
    }
}

fn decode(bytes: &[u8]) -> Result<v1::DesiredState, String> {
    let body = checked(bytes)?;
    v1::DesiredState::decode(body).map_err(|e| format!("not a desired state: {e}"))
}

/// The body of a whole, undamaged state file (the encoded `DesiredState`).
fn checked(bytes: &[u8]) -> Result<&[u8], String> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or("not a Berth state file (bad magic)")?;
    let (len, rest) = rest.split_at_checked(8).ok_or("truncated header")?;
    let (sum, body) = rest.split_at_checked(8).ok_or("truncated header")?;
    let len = u64::from_be_bytes(len.try_into().map_err(|_| "truncated header")?);
    if body.len() as u64 != len {
        return Err(format!(
            "truncated: {} of {len} bytes (a write was interrupted)",
            body.len()
        ));
    }
    let sum = u64::from_be_bytes(sum.try_into().map_err(|_| "truncated header")?);
    if fnv1a(body) != sum {
        return Err("checksum mismatch (the file was damaged)".to_owned());
    }
    Ok(body)
}

/// Whether `dir` exists or can be created: checked at start so a bad `--state-dir` is a clear
/// error at once rather than at the first Apply.
pub fn usable(dir: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("berth-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn state(generation: u64) -> v1::DesiredState {
        v1::DesiredState {
            generation,
            global: Some(v1::Global {
                asn: 64512,
                router_id: "10.0.0.11".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn saves_and_loads_and_replaces() {
        let s = Store::new(dir("rt"));
        assert!(s.load().unwrap().is_none());
        s.save(&state(3)).unwrap();
        assert_eq!(s.load().unwrap(), Some(state(3)));
        assert_eq!(s.load_encoded().unwrap(), Some(state(3).encode_to_vec()));
        s.save(&state(4)).unwrap();
        assert_eq!(s.load().unwrap(), Some(state(4)));
        let _ = std::fs::remove_dir_all(&s.dir);
    }

    #[test]
    fn the_journal_replays_in_order_and_stops_at_a_torn_tail() {
        let s = Store::new(dir("journal"));
        s.save(&state(1)).unwrap();
        let change = |g| v1::UpdateRoutesRequest {
            next_hop_groups: Vec::new(),
            generation: g,
            upsert: vec![],
            remove: vec![format!("198.51.100.{g}/32")],
        };
        s.append(&change(2)).unwrap();
        s.append(&change(3)).unwrap();
        let (got, err) = s.changes();
        assert!(err.is_none());
        assert_eq!(got, vec![change(2), change(3)]);
        // An interrupted third append: the first two survive, the tail is reported.
        let mut bytes = std::fs::read(s.journal_path()).unwrap();
        bytes.extend_from_slice(&[0, 0, 0, 9, 1, 2]);
        std::fs::write(s.journal_path(), bytes).unwrap();
        let (got, err) = s.changes();
        assert_eq!(got.len(), 2);
        assert!(
            err.unwrap()
                .to_string()
                .contains("torn or damaged record after 2")
        );
        // A full save empties the journal.
        s.save(&state(4)).unwrap();
        assert!(s.changes().0.is_empty());
        let _ = std::fs::remove_dir_all(&s.dir);
    }

    #[test]
    fn a_torn_tail_is_cut_so_later_changes_survive() {
        let s = Store::new(dir("torn"));
        s.save(&state(1)).unwrap();
        let change = |g| v1::UpdateRoutesRequest {
            next_hop_groups: Vec::new(),
            generation: g,
            upsert: vec![],
            remove: vec![format!("198.51.100.{g}/32")],
        };
        s.append(&change(2)).unwrap();
        // A crash in the middle of the next append leaves half a record.
        let mut bytes = std::fs::read(s.journal_path()).unwrap();
        let good = bytes.len() as u64;
        bytes.extend_from_slice(&[0, 0, 0, 40, 9, 9, 9]);
        std::fs::write(s.journal_path(), bytes).unwrap();
        // The restart reads the journal (and cuts the tail), then more changes are accepted.
        let (got, err) = s.changes();
        assert_eq!(got, vec![change(2)]);
        assert!(err.is_some());
        assert_eq!(std::fs::metadata(s.journal_path()).unwrap().len(), good);
        s.append(&change(3)).unwrap();
        s.append(&change(4)).unwrap();
        // The next restart sees every acknowledged change.
        let (got, err) = s.changes();
        assert!(err.is_none(), "{err:?}");
        assert_eq!(got, vec![change(2), change(3), change(4)]);
        let _ = std::fs::remove_dir_all(&s.dir);
    }

    #[test]
    fn files_are_readable_by_the_owner_only() {
        let s = Store::new(dir("mode"));
        s.save(&state(1)).unwrap();
        // A journal left by an older version with the default mode is tightened too.
        std::fs::write(s.journal_path(), b"").unwrap();
        std::fs::set_permissions(s.journal_path(), Permissions::from_mode(0o644)).unwrap();
        s.append(&v1::UpdateRoutesRequest {
            next_hop_groups: Vec::new(),
            generation: 2,
            upsert: vec![],
            remove: vec!["198.51.100.2/32".into()],
        })
        .unwrap();
        for p in [s.path(), s.journal_path()] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        let _ = std::fs::remove_dir_all(&s.dir);
    }

    #[test]
    fn damaged_files_are_errors_not_states() {
        let s = Store::new(dir("bad"));
        s.save(&state(3)).unwrap();
        let good = std::fs::read(s.path()).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"garbage".to_vec(), "bad magic"),
            (good[..good.len() - 1].to_vec(), "truncated"),
            (
                {
                    let mut b = good.clone();
                    let last = b.len() - 1;
                    b[last] ^= 0xff;
                    b
                },
                "checksum mismatch",
            ),
            (Vec::new(), "bad magic"),
        ];
        for (bytes, want) in cases {
            std::fs::write(s.path(), &bytes).unwrap();
            let e = s.load().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
            assert!(e.contains("ignored"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&s.dir);
    }
}
