//! The curation output directory (`flyt curate --out OUT`), the format the curation dataflow writes and the
//! Flight service reads:
//!
//! ```text
//! OUT/subset.npy                       the DataComp subset (published atomically, then the manifest)
//! OUT/manifest.json                    what that subset reflects: shards, models, counts
//! OUT/shards/<name>.json               a shard's commit record (written last: a shard is committed exactly
//!                                      when its record exists)
//! OUT/shards/<name>.scores.parquet     its score table (uid, key, sha256 and pixels_sha256 when known, one
//!                                      float column per scoring method)
//! OUT/shards/<name>.rejects.jsonl      its rejected samples, one JSON object per line
//! OUT/embeddings/<name>.{parquet,npz}  its embeddings when the CLIP model made them (a DataComp sidecar pair)
//! ```

mod sidecar;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use sidecar::{SidecarRead, read_metadata_only, read_sidecar, round_to_f16, store_embeddings};

use crate::{Error, Rejected, Result, ShardStats, Uid};

/// Identity of an input file: size and modification time (the quick check) and the SHA-256 of its bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    /// The path as given.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: u128,
    /// SHA-256 of the bytes (empty until computed).
    pub sha256: String,
}

impl FileId {
    /// Size and mtime of a file (no digest).
    pub fn stat(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        let mtime_ns = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ok(FileId { path: path.to_path_buf(), size: m.len(), mtime_ns, sha256: String::new() })
    }

    /// Size, mtime and digest.
    pub fn digest(path: &Path) -> Result<Self> {
        let mut id = Self::stat(path).map_err(|e| Error::io(path, e))?;
        id.sha256 = crate::digest::file_sha256_interruptible(path)?;
        Ok(id)
    }

    /// Whether size and mtime still match the file on disk.
    pub fn unchanged(&self) -> bool {
        Self::stat(&self.path).is_ok_and(|now| now.size == self.size && now.mtime_ns == self.mtime_ns)
    }
}

/// A shard's commit record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardRecord {
    /// The shard's name (file name without `.tar`/`.tar.gz`/`.tgz`/`.parquet`).
    pub name: String,
    /// Its input files (the tar, or the sidecar parquet + npz) with digests.
    pub inputs: Vec<FileId>,
    /// How it was embedded: `model` (the CLIP model over the tar), `sidecar` (the shard's `.npz`), `stored`
    /// (embeddings this pipeline stored earlier).
    pub via: String,
    /// What its columns depend on: `clip` (the CLIP model's digest, or `sidecar:<prefix>`) and, per scoring
    /// method that has inputs, their identity (`flyt`: the head's digest; `neg_clip_loss`: B, K, τ and seed;
    /// `norm_sim`, `image_based`, `text_based`: digests of their files).
    pub models: BTreeMap<String, String>,
    /// The score columns in its score table.
    pub columns: Vec<String>,
    /// Rows in the score table.
    pub rows: u64,
    /// Ingest counts (reconciled: every sample accepted or rejected with a reason).
    pub stats: ShardStats,
    /// Stored embeddings (`OUT/embeddings/<name>.parquet` / `.npz`), when kept.
    pub embeddings: Option<(PathBuf, PathBuf)>,
    /// The npz prefix of the embeddings used.
    pub prefix: String,
    /// The embedding dimension (0 when unknown).
    #[serde(default)]
    pub dim: usize,
    /// The flyt version that wrote it.
    pub flyt_version: String,
    /// Its score table carries the content digests its input allows (`sha256`, `pixels_sha256`): records
    /// written before flyt kept them say false, and exact dedup reads such a shard again.
    #[serde(default)]
    pub content_digests: bool,
    /// The score table as the commit wrote it: a replay checks it, and a table that differs is rebuilt from
    /// the shard's inputs. `None` in records written before flyt kept it.
    #[serde(default)]
    pub scores: Option<TableId>,
}

/// A file's identity as written: its SHA-256 and its row count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableId {
    /// SHA-256 of the file's bytes.
    pub sha256: String,
    /// Rows in it.
    pub rows: u64,
}

/// A shard's rows and score columns.
#[derive(Clone, Debug, Default)]
pub struct ShardScores {
    /// The shard's name.
    pub name: String,
    /// (uid, key) per row.
    pub ids: Vec<(Uid, String)>,
    /// Values per column (in the order the columns were asked for), aligned with `ids`.
    pub columns: Vec<Vec<f32>>,
    /// Each row's content digests (128-bit prefixes of the bytes' and the decoded pixels' SHA-256), aligned
    /// with `ids`; empty when unknown.
    pub content: Vec<(Option<u128>, Option<u128>)>,
}

/// An exclusive lock on a curation output directory ([`Layout::lock`]), released when dropped.
#[derive(Debug)]
pub struct OutLock {
    _file: std::fs::File,
    /// The lock file.
    pub path: PathBuf,
}

/// The output directory's layout.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The output directory.
    pub out: PathBuf,
}

impl Layout {
    /// A layout over `out`.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Layout { out: out.into() }
    }
    /// `OUT/shards`.
    pub fn shards(&self) -> PathBuf {
        self.out.join("shards")
    }
    /// `OUT/shards/<name>.json`.
    pub fn record(&self, name: &str) -> PathBuf {
        self.shards().join(format!("{name}.json"))
    }
    /// `OUT/shards/<name>.scores.parquet`.
    pub fn scores(&self, name: &str) -> PathBuf {
        self.shards().join(format!("{name}.scores.parquet"))
    }
    /// `OUT/shards/<name>.rejects.jsonl`.
    pub fn rejects(&self, name: &str) -> PathBuf {
        self.shards().join(format!("{name}.rejects.jsonl"))
    }
    /// `OUT/embeddings/<name>.parquet` and `.npz`.
    pub fn embeddings(&self, name: &str) -> (PathBuf, PathBuf) {
        let d = self.out.join("embeddings");
        (d.join(format!("{name}.parquet")), d.join(format!("{name}.npz")))
    }
    /// `OUT/subset.npy`.
    pub fn subset(&self) -> PathBuf {
        self.out.join("subset.npy")
    }
    /// `OUT/manifest.json`.
    pub fn manifest(&self) -> PathBuf {
        self.out.join("manifest.json")
    }

    /// `OUT/.lock-<process>`: the lock file of a run's process `process` (0 for a single-process run).
    pub fn lock_file(&self, process: usize) -> PathBuf {
        self.out.join(format!(".lock-{process}"))
    }

    /// Takes the exclusive lock of process `process` on this output directory for as long as the returned
    /// guard lives, writing the holder's pid and host into the lock file. A second run on the same directory
    /// (the same process index: a single-process run is index 0) gets an error naming the holder. The lock is
    /// `flock(2)`'s, so it goes away with the process however that ends; a lock file left by a dead process
    /// does not block.
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let layout = flyt::curation::Layout::new(dir.path());
    /// let held = layout.lock(0).unwrap();
    /// let err = layout.lock(0).unwrap_err().to_string();
    /// assert!(err.contains("in use by another flyt run"), "{err}");
    /// assert!(layout.lock(1).is_ok()); // another process of the same cluster run
    /// drop(held);
    /// assert!(layout.lock(0).is_ok());
    /// ```
    pub fn lock(&self, process: usize) -> Result<OutLock> {
        use std::io::{Read, Seek, Write};
        use std::os::fd::AsRawFd;
        std::fs::create_dir_all(&self.out).map_err(|e| Error::io(&self.out, e))?;
        let path = self.lock_file(process);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // SAFETY: flock on the descriptor `file` owns; it has no memory effects.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(Error::io(&path, e));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(Error::io(
                &path,
                std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    format!(
                        "{} is in use by another flyt run ({}); wait for it to end or choose another --out",
                        self.out.display(),
                        if holder.is_empty() { "holder unknown".to_string() } else { holder.to_string() }
                    ),
                ),
            ));
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let who = format!("pid {} on host {}", std::process::id(), host.trim());
        let wrote =
            file.set_len(0).and_then(|_| file.rewind()).and_then(|_| file.write_all(format!("{who}\n").as_bytes()));
        wrote.map_err(|e| Error::io(&path, e))?;
        Ok(OutLock { _file: file, path })
    }

    /// Creates the directories.
    pub fn create(&self) -> Result<()> {
        for d in [self.shards(), self.out.join("embeddings")] {
            std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
        Ok(())
    }

    /// Every readable commit record, by name. An unreadable record is logged and left out (its shard is then
    /// processed again).
    pub fn records(&self) -> BTreeMap<String, ShardRecord> {
        let mut out = BTreeMap::new();
        let Ok(dir) = std::fs::read_dir(self.shards()) else { return out };
        for e in dir.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json")
                || p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            match read_record(&p) {
                Ok(r) => {
                    out.insert(r.name.clone(), r);
                }
                Err(e) => {
                    tracing::warn!(record = %p.display(), error = %e, "unreadable commit record; the shard will be processed again")
                }
            }
        }
        out
    }

    /// One commit record, if readable.
    pub fn record_of(&self, name: &str) -> Option<ShardRecord> {
        read_record(&self.record(name)).ok()
    }

    /// Writes a commit record (atomically: the shard is committed once this returns).
    pub fn write_record(&self, record: &ShardRecord) -> Result<()> {
        let path = self.record(&record.name);
        let json = serde_json::to_vec_pretty(record).map_err(|e| Error::format(&path, "record", e.to_string()))?;
        crate::write_atomic(&path, &json)
    }

    /// Reads a committed shard's rows back from its score table (the `columns` asked for, in that order).
    pub fn replay(&self, record: &ShardRecord, columns: &[String]) -> Result<ShardScores> {
        let names: Vec<&str> = columns.iter().map(|s| s.as_str()).collect();
        let path = self.scores(&record.name);
        let t = crate::read_score_table(&path, &names)?;
        if t.ids.len() as u64 != record.rows {
            return Err(Error::format(
                &path,
                "rows",
                format!("{} rows, the commit record says {}", t.ids.len(), record.rows),
            ));
        }
        Ok(ShardScores { name: record.name.clone(), ids: t.ids, columns: t.columns, content: t.content })
    }

    /// Writes a shard's rejects (`OUT/shards/<name>.rejects.jsonl`).
    pub fn write_rejects(&self, name: &str, rejects: &[Rejected]) -> Result<()> {
        write_rejects(&self.rejects(name), rejects)
    }

    /// The rejects a commit wrote; unreadable lines are logged and skipped.
    pub fn read_rejects(&self, name: &str) -> Vec<Rejected> {
        let path = self.rejects(name);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| match serde_json::from_str(l) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "an unreadable reject line");
                    None
                }
            })
            .collect()
    }
}

/// Writes rejects as JSON lines, atomically.
pub fn write_rejects(path: &Path, rejects: &[Rejected]) -> Result<()> {
    let mut lines = String::new();
    for r in rejects {
        let line = serde_json::to_string(r).map_err(|e| Error::format(path, &r.key, e.to_string()))?;
        lines.push_str(&line);
        lines.push('\n');
    }
    crate::write_atomic(path, lines.as_bytes())
}

fn read_record(path: &Path) -> Result<ShardRecord> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::format(path, "record", e.to_string()))
}
