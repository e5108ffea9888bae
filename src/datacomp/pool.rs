//! A DataComp-style pool directory: `<stem>.parquet` metadata files, each with an optional `<stem>.npz` of
//! embeddings whose rows follow the parquet's rows (DataComp's layout, and what `flyt embed` writes).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::metadata::{MetadataRow, read_metadata};
use super::npz::read_npz;
use crate::{Error, Result, Uid};

/// A pool read into memory: metadata rows and, when asked for, their image and text embeddings.
#[derive(Clone, Debug, Default)]
pub struct Pool {
    /// The parquet files read, in name order.
    pub files: Vec<PathBuf>,
    /// Readable rows with a uid not seen before, in file then row order.
    pub rows: Vec<MetadataRow>,
    /// How many of `rows` came from each file (aligned with `files`).
    pub file_rows: Vec<usize>,
    /// Rows left out: (file, row, reason) — a bad uid, a uid already seen, a missing embedding row.
    pub rejected: Vec<(PathBuf, usize, String)>,
    /// Embedding dimension (0 without embeddings).
    pub dim: usize,
    /// `rows × dim` image embeddings, aligned with `rows` (empty without embeddings).
    pub image: Vec<f32>,
    /// `rows × dim` text embeddings, aligned with `rows` (empty without embeddings).
    pub text: Vec<f32>,
    /// The embedding prefix used (`l14`, `b32`, `emb`, ...).
    pub prefix: Option<String>,
}

/// Which embeddings [`read_pool`] loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolEmbeddings {
    /// None: metadata only.
    None,
    /// `<prefix>_img` / `<prefix>_txt` from each `.npz`; a file without them is an error.
    Prefix(String),
    /// The first of `l14`, `b32`, or else the only `*_img`/`*_txt` pair, found in the first `.npz`.
    Auto,
}

/// The embedding prefix of an `.npz`'s array names: `l14`, else `b32`, else the only `<p>_img`/`<p>_txt` pair.
pub fn pick_prefix(keys: &[String]) -> Option<String> {
    for p in ["l14", "b32"] {
        if keys.iter().any(|k| k == &format!("{p}_img")) && keys.iter().any(|k| k == &format!("{p}_txt")) {
            return Some(p.to_string());
        }
    }
    let pairs: Vec<&str> = keys
        .iter()
        .filter_map(|k| k.strip_suffix("_img"))
        .filter(|p| keys.iter().any(|k| *k == format!("{p}_txt")))
        .collect();
    (pairs.len() == 1).then(|| pairs[0].to_string())
}

/// Reads every `*.parquet` in `dir` (name order) and, as `embeddings` asks, the companion `.npz` arrays.
/// A uid seen in an earlier row is left out (listed in [`Pool::rejected`]), so each uid is scored once.
pub fn read_pool(dir: impl AsRef<Path>, embeddings: &PoolEmbeddings) -> Result<Pool> {
    let files = pool_files(dir.as_ref())?;
    let mut pool = Pool { files: files.clone(), ..Default::default() };
    let mut seen = HashSet::new();
    for file in &files {
        let table = read_metadata(file)?;
        for (r, why) in table.rejected {
            pool.rejected.push((file.clone(), r, why));
        }
        let emb = match embeddings {
            PoolEmbeddings::None => None,
            want => {
                let npz = file.with_extension("npz");
                let arrays = read_npz(&npz)?;
                let keys: Vec<String> = arrays.keys().cloned().collect();
                let prefix = match (want, &pool.prefix) {
                    (_, Some(p)) => p.clone(),
                    (PoolEmbeddings::Prefix(p), None) => p.clone(),
                    _ => pick_prefix(&keys).ok_or_else(|| {
                        Error::format(
                            &npz,
                            "*_img/*_txt",
                            format!("no single embedding pair; arrays: {}", keys.join(", ")),
                        )
                    })?,
                };
                let get = |key: String| -> Result<(Vec<f32>, usize, usize)> {
                    let a = arrays.get(&key).ok_or_else(|| {
                        Error::format(&npz, &key, format!("no such array; the file has {}", keys.join(", ")))
                    })?;
                    let [rows, cols] = a.shape[..] else {
                        return Err(Error::format(&npz, &key, format!("expected 2-D, shape is {:?}", a.shape)));
                    };
                    let data = a.to_f32().ok_or_else(|| Error::format(&npz, &key, "not a float array"))?;
                    Ok((data, rows, cols))
                };
                let (img, ri, di) = get(format!("{prefix}_img"))?;
                let (txt, rt, dt) = get(format!("{prefix}_txt"))?;
                if ri != rt || di != dt {
                    return Err(Error::format(&npz, &prefix, format!("image {ri}×{di} but text {rt}×{dt}")));
                }
                if pool.dim != 0 && pool.dim != di {
                    return Err(Error::format(&npz, &prefix, format!("{di}-d, earlier files are {}-d", pool.dim)));
                }
                pool.dim = di;
                pool.prefix = Some(prefix);
                Some((img, txt, ri, di))
            }
        };
        let before = pool.rows.len();
        for row in table.rows {
            if !seen.insert(row.uid) {
                pool.rejected.push((file.clone(), row.row, format!("uid {} already seen", row.uid)));
                continue;
            }
            if let Some((img, txt, rows, dim)) = &emb {
                if row.row >= *rows {
                    pool.rejected.push((file.clone(), row.row, format!("the .npz has only {rows} rows")));
                    continue;
                }
                pool.image.extend_from_slice(&img[row.row * dim..(row.row + 1) * dim]);
                pool.text.extend_from_slice(&txt[row.row * dim..(row.row + 1) * dim]);
            }
            pool.rows.push(row);
        }
        pool.file_rows.push(pool.rows.len() - before);
    }
    Ok(pool)
}

/// A pool directory's metadata parquet files (not `*_scores.parquet`), in name order; none is an error.
fn pool_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet") && !p.to_string_lossy().ends_with("_scores.parquet"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::format(dir, "*.parquet", "no metadata parquet files in this directory"));
    }
    Ok(files)
}

/// One `.npz` array's rows, read in place: where the array's data starts in its file, its dtype and rows.
/// (No file handle is kept: a pool of 10⁴ files would exhaust the process's descriptors.)
#[derive(Debug)]
struct ArrayAt {
    offset: u64,
    f16: bool,
    rows: usize,
}

impl ArrayAt {
    /// Finds `<key>.npy` in a stored (not deflated) `.npz` and its data offset.
    fn open(npz: &Path, key: &str) -> Result<(Self, usize)> {
        use std::io::{Read, Seek, SeekFrom};
        let file = crate::open_regular(npz)?;
        let mut zip = zip::ZipArchive::new(file.try_clone().map_err(|e| Error::io(npz, e))?)
            .map_err(|e| Error::format(npz, "npz", format!("not a zip archive: {e}")))?;
        let names: Vec<String> = zip.file_names().map(str::to_string).collect();
        let entry = zip
            .by_name(&format!("{key}.npy"))
            .map_err(|_| Error::format(npz, key, format!("no such array; the file has {}", names.join(", "))))?;
        if entry.compression() != zip::CompressionMethod::Stored {
            return Err(Error::format(
                npz,
                key,
                "deflate-compressed (np.savez_compressed): streaming reads rows in place and needs np.savez's \
                 stored arrays; read it in memory (no --stream-pool) or store it uncompressed",
            ));
        }
        let start = entry.data_start();
        drop(entry);
        let mut f = file;
        let mut head = vec![0u8; 4096];
        f.seek(SeekFrom::Start(start)).map_err(|e| Error::io(npz, e))?;
        let n = f.read(&mut head).map_err(|e| Error::io(npz, e))?;
        head.truncate(n);
        let h = super::npy::parse_header(&head, npz, key)?;
        let f16 = match h.descr.as_str() {
            "'<f2'" | "'f2'" | "<f2" => true,
            "'<f4'" | "'f4'" | "<f4" => false,
            d => return Err(Error::format(npz, key, format!("dtype {d}: streaming reads little-endian f16 or f32"))),
        };
        let [rows, dim] = h.shape[..] else {
            return Err(Error::format(npz, key, format!("expected 2-D, shape is {:?}", h.shape)));
        };
        if h.fortran_order {
            return Err(Error::format(npz, key, "Fortran order: streaming reads C-order rows"));
        }
        Ok((ArrayAt { offset: start + h.data_offset as u64, f16, rows }, dim))
    }

    /// Reads row `r` (`out.len()` values) of this array in `file` (at `path`) as f32 into `out`.
    fn read_row(&self, file: &std::fs::File, path: &Path, r: usize, buf: &mut Vec<u8>, out: &mut [f32]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let (dim, width) = (out.len(), if self.f16 { 2 } else { 4 });
        buf.resize(dim * width, 0);
        file.read_exact_at(buf, self.offset + (r * dim * width) as u64).map_err(|e| Error::io(path, e))?;
        if self.f16 {
            for (o, c) in out.iter_mut().zip(buf.chunks_exact(2)) {
                *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        } else {
            for (o, c) in out.iter_mut().zip(buf.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        Ok(())
    }
}

/// A pool whose embeddings stay on disk: the rows [`read_pool`] would keep (same order, same uids), each a
/// (file, row) of a stored `.npz`, read in place by [`PoolOnDisk::gather`]. Memory is 24 bytes per row (its uid
/// and location), whatever the embedding width.
#[derive(Debug)]
pub struct PoolOnDisk {
    /// The parquet files read, in name order.
    pub files: Vec<PathBuf>,
    /// The uids, in row order.
    pub uids: Vec<Uid>,
    /// Embedding dimension.
    pub dim: usize,
    /// The embedding prefix used.
    pub prefix: String,
    /// Rows left out, as [`Pool::rejected`].
    pub rejected: Vec<(PathBuf, usize, String)>,
    at: Vec<(u32, u32)>,
    arrays: Vec<(PathBuf, ArrayAt, ArrayAt)>,
}

impl PoolOnDisk {
    /// Indexes a pool directory as [`read_pool`] reads it (embeddings required), without reading the arrays.
    pub fn open(dir: impl AsRef<Path>, embeddings: &PoolEmbeddings) -> Result<Self> {
        let files = pool_files(dir.as_ref())?;
        let mut pool = PoolOnDisk {
            files: files.clone(),
            uids: Vec::new(),
            dim: 0,
            prefix: String::new(),
            rejected: Vec::new(),
            at: Vec::new(),
            arrays: Vec::new(),
        };
        let mut seen = HashSet::new();
        for file in &files {
            let npz = file.with_extension("npz");
            let prefix = if pool.prefix.is_empty() {
                match embeddings {
                    PoolEmbeddings::Prefix(p) => p.clone(),
                    _ => {
                        let keys: Vec<String> = {
                            let f = crate::open_regular(&npz)?;
                            let z = zip::ZipArchive::new(f)
                                .map_err(|e| Error::format(&npz, "npz", format!("not a zip archive: {e}")))?;
                            z.file_names().filter_map(|n| n.strip_suffix(".npy")).map(str::to_string).collect()
                        };
                        pick_prefix(&keys).ok_or_else(|| {
                            Error::format(
                                &npz,
                                "*_img/*_txt",
                                format!("no single embedding pair; arrays: {}", keys.join(", ")),
                            )
                        })?
                    }
                }
            } else {
                pool.prefix.clone()
            };
            let (img, di) = ArrayAt::open(&npz, &format!("{prefix}_img"))?;
            let (txt, dt) = ArrayAt::open(&npz, &format!("{prefix}_txt"))?;
            if img.rows != txt.rows || di != dt {
                return Err(Error::format(
                    &npz,
                    &prefix,
                    format!("image {}×{di} but text {}×{dt}", img.rows, txt.rows),
                ));
            }
            if pool.dim != 0 && pool.dim != di {
                return Err(Error::format(&npz, &prefix, format!("{di}-d, earlier files are {}-d", pool.dim)));
            }
            pool.dim = di;
            pool.prefix = prefix;
            let fi = pool.arrays.len() as u32;
            let rows = img.rows;
            pool.arrays.push((npz.clone(), img, txt));
            let table = read_metadata(file)?;
            for (r, why) in table.rejected {
                pool.rejected.push((file.clone(), r, why));
            }
            for row in table.rows {
                if !seen.insert(row.uid) {
                    pool.rejected.push((file.clone(), row.row, format!("uid {} already seen", row.uid)));
                    continue;
                }
                if row.row >= rows {
                    pool.rejected.push((file.clone(), row.row, format!("the .npz has only {rows} rows")));
                    continue;
                }
                pool.uids.push(row.uid);
                pool.at.push((fi, row.row as u32));
            }
        }
        Ok(pool)
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.uids.len()
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.uids.is_empty()
    }

    /// The image and text embeddings of `rows` (indices into the pool), each `rows.len() × dim` as f32. The
    /// rows are read file by file, each file opened once per call.
    pub fn gather(&self, rows: &[i64]) -> Result<(Vec<f32>, Vec<f32>)> {
        let d = self.dim;
        let mut at = Vec::with_capacity(rows.len());
        for (i, &r) in rows.iter().enumerate() {
            let &(f, row) = usize::try_from(r)
                .ok()
                .and_then(|r| self.at.get(r))
                .ok_or_else(|| Error::Config(format!("row {r} is outside the pool's {} rows", self.at.len())))?;
            at.push((f, row, i));
        }
        at.sort_unstable();
        let (mut img, mut txt) = (vec![0f32; rows.len() * d], vec![0f32; rows.len() * d]);
        let mut buf = Vec::new();
        let mut open: Option<(u32, std::fs::File)> = None;
        for (f, row, i) in at {
            let (path, a, b) = &self.arrays[f as usize];
            if open.as_ref().is_none_or(|(g, _)| *g != f) {
                open = Some((f, crate::open_regular(path)?));
            }
            let file = &open.as_ref().expect("opened above").1;
            a.read_row(file, path, row as usize, &mut buf, &mut img[i * d..(i + 1) * d])?;
            b.read_row(file, path, row as usize, &mut buf, &mut txt[i * d..(i + 1) * d])?;
        }
        Ok((img, txt))
    }
}
