//! Embeddings as DataComp sidecar pairs (`<stem>.parquet` metadata + `<stem>.npz` arrays): reading a shard's
//! own pair, and storing the embeddings the CLIP model made so a later run re-scores without re-embedding.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use crate::clip::Embeddings;
use crate::{Error, NpyArray, NpyData, RejectReason, Rejected, Result, RowMeta, ShardStats};

/// Rounds embeddings to f16 precision, the precision they are stored at (DataComp's), so that scores computed
/// now equal scores computed later from the stored copy.
pub fn round_to_f16(e: &mut Embeddings) {
    for v in e.image.iter_mut().chain(e.text.iter_mut()) {
        *v = half::f16::from_f32(*v).to_f32();
    }
}

/// Writes embeddings as a DataComp-style pair: `.parquet` (uid, key, and each row's caption and original size
/// when known) and `.npz` (`<prefix>_img`, `<prefix>_txt`, f16).
pub fn store_embeddings(parquet: &Path, npz: &Path, prefix: &str, e: &Embeddings) -> Result<()> {
    let rows = e.ids.len();
    let shape = vec![rows, e.dim];
    let f16 = |v: &[f32]| NpyData::F16(v.iter().map(|x| half::f16::from_f32(*x)).collect());
    let mut arrays = BTreeMap::new();
    arrays.insert(format!("{prefix}_img"), NpyArray { shape: shape.clone(), data: f16(&e.image) });
    arrays.insert(format!("{prefix}_txt"), NpyArray { shape, data: f16(&e.text) });
    crate::write_npz(npz, &arrays, false)?;
    let meta: &[RowMeta] = if e.meta.len() == rows { &e.meta } else { &[] };
    crate::write_score_table(parquet, &e.ids, meta, &[])
}

/// A sidecar pair read: its embeddings (rows in file order, uids deduplicated within the file, keys the row
/// index as nine digits), the read's ingest counts, the rows it rejected, and the array prefix used.
#[derive(Clone, Debug, Default)]
pub struct SidecarRead {
    /// Embeddings with each row's caption and original size.
    pub embeddings: Embeddings,
    /// Ingest counts (they reconcile).
    pub stats: ShardStats,
    /// Rows left out, with the reason.
    pub rejects: Vec<Rejected>,
    /// The `.npz` prefix used.
    pub prefix: String,
}

/// Reads only the metadata parquet of shard `name`: rows with their captions and sizes, no embedding values
/// (`dim` 0), for methods that need none.
pub fn read_metadata_only(name: &str, parquet: &Path) -> Result<SidecarRead> {
    rows_of(name, parquet, None)
}

/// Reads the sidecar pair of shard `name`; `prefix` picks the arrays (default: [`crate::pick_prefix`]).
pub fn read_sidecar(name: &str, parquet: &Path, npz: &Path, prefix: Option<&str>) -> Result<SidecarRead> {
    let arrays = crate::read_npz(npz)?;
    let keys: Vec<String> = arrays.keys().cloned().collect();
    let prefix = match prefix {
        Some(p) => p.to_string(),
        None => crate::pick_prefix(&keys).ok_or_else(|| {
            Error::format(npz, "<prefix>_img/<prefix>_txt", format!("no single pair; arrays: {}", keys.join(", ")))
        })?,
    };
    let get = |key: String| -> Result<(Vec<f32>, usize, usize)> {
        let a = arrays
            .get(&key)
            .ok_or_else(|| Error::format(npz, &key, format!("no such array; the file has {}", keys.join(", "))))?;
        let [rows, cols] = a.shape[..] else {
            return Err(Error::format(npz, &key, format!("expected a 2-D array, shape is {:?}", a.shape)));
        };
        let data = a.to_f32().ok_or_else(|| Error::format(npz, &key, "not a float array"))?;
        Ok((data, rows, cols))
    };
    let (img, ri, di) = get(format!("{prefix}_img"))?;
    let (txt, rt, dt) = get(format!("{prefix}_txt"))?;
    if ri != rt || di != dt {
        return Err(Error::format(npz, &prefix, format!("image {ri}×{di} but text {rt}×{dt}")));
    }
    let mut out = rows_of(name, parquet, Some(Arrays { npz, image: &img, text: &txt, rows: ri, dim: di }))?;
    out.prefix = prefix;
    Ok(out)
}

/// A sidecar's embedding arrays, row-major.
struct Arrays<'a> {
    npz: &'a Path,
    image: &'a [f32],
    text: &'a [f32],
    rows: usize,
    dim: usize,
}

/// The metadata's rows (uids deduplicated within the file), with their embedding rows when there are arrays.
fn rows_of(name: &str, parquet: &Path, arrays: Option<Arrays<'_>>) -> Result<SidecarRead> {
    let table = crate::read_metadata(parquet)?;
    let shard: Arc<str> = name.into();
    let mut out = SidecarRead::default();
    let reject = |out: &mut SidecarRead, key: String, reason: RejectReason, detail: String| {
        let r = Rejected { shard: shard.clone(), key, reason, detail, members: 0 };
        out.stats.count_rejected(&r);
        out.rejects.push(r);
    };
    for (row, why) in &table.rejected {
        reject(&mut out, format!("row {row}"), RejectReason::BadUid, why.clone());
    }
    out.embeddings.dim = arrays.as_ref().map_or(0, |a| a.dim);
    let mut seen = HashSet::new();
    for r in &table.rows {
        if let Some(a) = &arrays
            && r.row >= a.rows
        {
            reject(
                &mut out,
                format!("row {}", r.row),
                RejectReason::MissingImage,
                format!("no embedding row ({} rows in {})", a.rows, a.npz.display()),
            );
            continue;
        }
        if !seen.insert(r.uid) {
            reject(
                &mut out,
                format!("row {}", r.row),
                RejectReason::DuplicateUid,
                format!("uid {} already in this file", r.uid),
            );
            continue;
        }
        out.stats.samples += 1;
        out.stats.accepted += 1;
        let e = &mut out.embeddings;
        e.ids.push((r.uid, format!("{:09}", r.row)));
        if let Some(a) = &arrays {
            e.image.extend_from_slice(&a.image[r.row * a.dim..(r.row + 1) * a.dim]);
            e.text.extend_from_slice(&a.text[r.row * a.dim..(r.row + 1) * a.dim]);
        }
        let size = match (r.original_width, r.original_height) {
            (Some(w), Some(h)) if w >= 0 && h >= 0 => Some((w as u64, h as u64)),
            _ => None,
        };
        e.meta.push(RowMeta {
            text: r.text.clone(),
            original_size: size,
            sha256: r.sha256.clone(),
            pixels_sha256: r.pixels_sha256.clone(),
        });
    }
    Ok(out)
}
