//! A DataComp-style pool directory: `<stem>.parquet` metadata files, each with an optional `<stem>.npz` of
//! embeddings whose rows follow the parquet's rows (DataComp's layout, and what `flyt embed` writes).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::metadata::{MetadataRow, read_metadata};
use super::npz::read_npz;
use crate::{Error, Result};

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
    let dir = dir.as_ref();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet") && !p.to_string_lossy().ends_with("_scores.parquet"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::format(dir, "*.parquet", "no metadata parquet files in this directory"));
    }
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
