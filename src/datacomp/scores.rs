//! Score tables: (uid, score) pairs from parquet or from a subset-style uid `.npy` plus a float `.npy`, and
//! (uid, count) tables written as parquet.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{StringBuilder, UInt32Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::npy::parse_npy;
use super::subset::read_subset;
use super::write_parquet_atomic;
use crate::{Error, Result, Uid};

/// Checks a score table: every score finite and every uid once. Errors name the file and row(s).
pub fn check_scores(path: &Path, pairs: &[(Uid, f64)]) -> Result<()> {
    if let Some((i, (uid, s))) = pairs.iter().enumerate().find(|(_, (_, s))| !s.is_finite()) {
        return Err(Error::format(path, format!("row {i}"), format!("score of uid {uid} is {s}, not a finite number")));
    }
    let mut order: Vec<u32> = (0..pairs.len() as u32).collect();
    order.sort_unstable_by_key(|&i| pairs[i as usize].0);
    if let Some(w) = order.windows(2).find(|w| pairs[w[0] as usize].0 == pairs[w[1] as usize].0) {
        let (a, b) = (w[0].min(w[1]), w[0].max(w[1]));
        return Err(Error::format(
            path,
            format!("rows {a} and {b}"),
            format!("uid {} appears twice", pairs[a as usize].0),
        ));
    }
    Ok(())
}

/// Reads (uid, score) pairs from a parquet file with a `uid` column (32 hex characters) and a numeric score
/// column. A bad or null uid, a null or non-finite score, or a repeated uid is an error naming the row.
pub fn read_scores_parquet(path: impl AsRef<Path>, column: &str) -> Result<Vec<(Uid, f64)>> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let pq = |source| Error::Parquet { path: path.to_path_buf(), source };
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq)?.with_batch_size(1 << 16).build().map_err(pq)?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch?;
        let schema = batch.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let get = |name: &str| -> Result<&ArrayRef> {
            schema
                .index_of(name)
                .map(|i| batch.column(i))
                .map_err(|_| Error::format(path, name, format!("no such column; the file has {}", names.join(", "))))
        };
        let uid = get("uid")?;
        let score = get(column)?;
        for r in 0..batch.num_rows() {
            let row = out.len();
            if uid.is_null(r) {
                return Err(Error::format(path, format!("row {row}"), "uid is null"));
            }
            let text = match uid.data_type() {
                DataType::Utf8 => uid.as_string::<i32>().value(r),
                DataType::LargeUtf8 => uid.as_string::<i64>().value(r),
                DataType::Utf8View => uid.as_string_view().value(r),
                t => return Err(Error::format(path, "uid", format!("column type {t} is not a string type"))),
            };
            let u = Uid::parse_hex(text)
                .map_err(|e| Error::format(path, format!("row {row}"), format!("uid {text:?}: {e}")))?;
            if score.is_null(r) {
                return Err(Error::format(path, format!("row {row}"), format!("{column} is null")));
            }
            let s = match score.data_type() {
                DataType::Float64 => score.as_primitive::<Float64Type>().value(r),
                DataType::Float32 => score.as_primitive::<Float32Type>().value(r) as f64,
                DataType::Float16 => score.as_primitive::<Float16Type>().value(r).to_f64(),
                DataType::Int64 => score.as_primitive::<Int64Type>().value(r) as f64,
                DataType::Int32 => score.as_primitive::<Int32Type>().value(r) as f64,
                t => return Err(Error::format(path, column, format!("column type {t} is not numeric"))),
            };
            out.push((u, s));
        }
    }
    check_scores(path, &out)?;
    Ok(out)
}

/// Reads (uid, score) pairs from a subset-style uid file (`.npy`, see [`read_subset`]) and a 1-D float `.npy`
/// of the same length.
pub fn read_scores_npy(uids: impl AsRef<Path>, values: impl AsRef<Path>) -> Result<Vec<(Uid, f64)>> {
    let (uids_path, values_path) = (uids.as_ref(), values.as_ref());
    let uids = read_subset(uids_path)?;
    let bytes = std::fs::read(values_path).map_err(|e| Error::io(values_path, e))?;
    let arr = parse_npy(&bytes, values_path, "scores")?;
    if arr.shape.len() != 1 {
        return Err(Error::format(values_path, "scores", format!("expected a 1-D array, shape is {:?}", arr.shape)));
    }
    let values: Vec<f64> = match &arr.data {
        super::NpyData::F64(v) => v.clone(),
        _ => arr
            .to_f32()
            .ok_or_else(|| Error::format(values_path, "scores", "not a float array"))?
            .into_iter()
            .map(f64::from)
            .collect(),
    };
    if values.len() != uids.len() {
        return Err(Error::format(
            values_path,
            "scores",
            format!("{} scores for {} uids in {}", values.len(), uids.len(), uids_path.display()),
        ));
    }
    let pairs: Vec<(Uid, f64)> = uids.into_iter().zip(values).collect();
    check_scores(values_path, &pairs)?;
    Ok(pairs)
}

/// Writes (uid, count) rows as parquet (`uid` as 32 hex characters, `count` uint32), published atomically.
pub fn write_counts_parquet(path: impl AsRef<Path>, counts: &[(Uid, u32)]) -> Result<()> {
    let path = path.as_ref();
    let mut uid = StringBuilder::new();
    let mut count = UInt32Builder::new();
    for (u, c) in counts {
        uid.append_value(u.to_string());
        count.append_value(*c);
    }
    let cols: Vec<(&str, ArrayRef)> = vec![("uid", Arc::new(uid.finish())), ("count", Arc::new(count.finish()))];
    let batch = RecordBatch::try_from_iter(cols)?;
    write_parquet_atomic(path, &batch)
}

/// Writes duplicates as parquet, published atomically: `uid` and `duplicate_of` (32 hex), `reason`, and
/// `similarity` (float32, null when the reason has none).
pub fn write_duplicates_table(path: impl AsRef<Path>, rows: &[(Uid, Uid, &str, Option<f32>)]) -> Result<()> {
    use arrow_array::builder::Float32Builder;
    let path = path.as_ref();
    let (mut uid, mut of, mut reason, mut sim) =
        (StringBuilder::new(), StringBuilder::new(), StringBuilder::new(), Float32Builder::new());
    for (u, o, r, s) in rows {
        uid.append_value(u.to_string());
        of.append_value(o.to_string());
        reason.append_value(r);
        sim.append_option(*s);
    }
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("uid", Arc::new(uid.finish())),
        ("duplicate_of", Arc::new(of.finish())),
        ("reason", Arc::new(reason.finish())),
        ("similarity", Arc::new(sim.finish())),
    ];
    let batch = RecordBatch::try_from_iter(cols)?;
    write_parquet_atomic(path, &batch)
}

/// Per-row metadata a score table may carry, with DataComp's column names (`text`, `original_width`,
/// `original_height`), so that the table doubles as a DataComp metadata parquet for the filters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowMeta {
    /// The caption.
    pub text: Option<String>,
    /// Image size before any resize (width, height).
    pub original_size: Option<(u64, u64)>,
    /// SHA-256 of the image's bytes, 64 hex (DataComp's `sha256`).
    pub sha256: Option<String>,
    /// SHA-256 of the decoded image (width, height, then its RGB8 pixels), 64 hex (flyt's `pixels_sha256`).
    pub pixels_sha256: Option<String>,
}

impl RowMeta {
    /// The content digests as the pool compares them: the first 128 bits of the bytes' and the pixels' SHA-256.
    pub fn content(&self) -> (Option<u128>, Option<u128>) {
        (digest_prefix(self.sha256.as_deref()), digest_prefix(self.pixels_sha256.as_deref()))
    }
}

/// The first 128 bits of a hex digest (`None` when absent or not hex).
pub fn digest_prefix(hex: Option<&str>) -> Option<u128> {
    let h = hex?.trim();
    if h.len() < 32 {
        return None;
    }
    u128::from_str_radix(h.get(..32)?, 16).ok()
}

/// SHA-256 as 64 lowercase hex characters.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a per-shard score table: `uid` (32 hex), `key`, with `meta` (one per row, or empty for none) the
/// `text`, `original_width` and `original_height` columns (when any row has them) and `sha256` /
/// `pixels_sha256` (likewise), and one float32 column per `(name, values)`, rows aligned; published atomically.
pub fn write_score_table(
    path: impl AsRef<Path>,
    ids: &[(Uid, String)],
    meta: &[RowMeta],
    columns: &[(&str, &[f32])],
) -> Result<()> {
    use arrow_array::builder::{Float32Builder, Int64Builder};
    let path = path.as_ref();
    let mut uid = StringBuilder::new();
    let mut key = StringBuilder::new();
    for (u, k) in ids {
        uid.append_value(u.to_string());
        key.append_value(k);
    }
    let mut cols: Vec<(&str, ArrayRef)> = vec![("uid", Arc::new(uid.finish())), ("key", Arc::new(key.finish()))];
    if !meta.is_empty() {
        if meta.len() != ids.len() {
            return Err(Error::Config(format!("{} metadata rows for {} rows", meta.len(), ids.len())));
        }
        let mut text = StringBuilder::new();
        let (mut w, mut h) = (Int64Builder::new(), Int64Builder::new());
        let (mut sha, mut px) = (StringBuilder::new(), StringBuilder::new());
        for m in meta {
            text.append_option(m.text.as_deref());
            w.append_option(m.original_size.map(|s| s.0 as i64));
            h.append_option(m.original_size.map(|s| s.1 as i64));
            sha.append_option(m.sha256.as_deref());
            px.append_option(m.pixels_sha256.as_deref());
        }
        if meta.iter().any(|m| m.text.is_some() || m.original_size.is_some()) {
            cols.push(("text", Arc::new(text.finish())));
            cols.push(("original_width", Arc::new(w.finish())));
            cols.push(("original_height", Arc::new(h.finish())));
        }
        if meta.iter().any(|m| m.sha256.is_some()) {
            cols.push(("sha256", Arc::new(sha.finish())));
        }
        if meta.iter().any(|m| m.pixels_sha256.is_some()) {
            cols.push(("pixels_sha256", Arc::new(px.finish())));
        }
    }
    for (name, values) in columns {
        if values.len() != ids.len() {
            return Err(Error::Config(format!("column {name} has {} values for {} rows", values.len(), ids.len())));
        }
        let mut b = Float32Builder::with_capacity(values.len());
        b.append_slice(values);
        cols.push((name, Arc::new(b.finish())));
    }
    let batch = RecordBatch::try_from_iter(cols)?;
    write_parquet_atomic(path, &batch)
}

/// A score table read back: (uid, key) per row and each asked-for column's values (f32, as written by
/// [`write_score_table`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScoreTable {
    /// (uid, key) of each row (key empty when the file has no `key` column).
    pub ids: Vec<(Uid, String)>,
    /// One vector per asked-for column, aligned with `ids`.
    pub columns: Vec<Vec<f32>>,
    /// The content digests of each row ([`RowMeta::content`]), aligned with `ids`; empty when the file has
    /// neither a `sha256` nor a `pixels_sha256` column.
    pub content: Vec<(Option<u128>, Option<u128>)>,
}

/// Reads a score table: `uid`, optional `key`, and the named float columns (a missing column, a bad uid or a
/// null is an error naming the file, column and row).
pub fn read_score_table(path: impl AsRef<Path>, columns: &[&str]) -> Result<ScoreTable> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let pq = |source| Error::Parquet { path: path.to_path_buf(), source };
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq)?.with_batch_size(1 << 16).build().map_err(pq)?;
    let mut out = ScoreTable { ids: Vec::new(), columns: vec![Vec::new(); columns.len()], content: Vec::new() };
    let text_at = |a: &ArrayRef, name: &str, r: usize| -> Result<String> {
        if a.is_null(r) {
            return Err(Error::format(path, name, format!("row {r} is null")));
        }
        Ok(match a.data_type() {
            DataType::Utf8 => a.as_string::<i32>().value(r).to_string(),
            DataType::LargeUtf8 => a.as_string::<i64>().value(r).to_string(),
            DataType::Utf8View => a.as_string_view().value(r).to_string(),
            t => return Err(Error::format(path, name, format!("column type {t} is not a string type"))),
        })
    };
    for batch in reader {
        let batch = batch?;
        let schema = batch.schema();
        let get = |name: &str| schema.index_of(name).ok().map(|i| batch.column(i));
        let uid = get("uid").ok_or_else(|| Error::format(path, "uid", "no such column"))?;
        let key = get("key");
        let (sha, px) = (get("sha256"), get("pixels_sha256"));
        let cols: Vec<&ArrayRef> = columns
            .iter()
            .map(|c| get(c).ok_or_else(|| Error::format(path, *c, "no such column")))
            .collect::<Result<_>>()?;
        for r in 0..batch.num_rows() {
            let row = out.ids.len();
            let text = text_at(uid, "uid", r)?;
            let u = Uid::parse_hex(&text)
                .map_err(|e| Error::format(path, format!("row {row}"), format!("uid {text:?}: {e}")))?;
            let k = match key {
                Some(k) => text_at(k, "key", r)?,
                None => String::new(),
            };
            out.ids.push((u, k));
            if sha.is_some() || px.is_some() {
                let hex = |a: Option<&ArrayRef>, name: &str| -> Result<Option<u128>> {
                    match a {
                        Some(a) if !a.is_null(r) => Ok(digest_prefix(Some(&text_at(a, name, r)?))),
                        _ => Ok(None),
                    }
                };
                out.content.resize(row, (None, None));
                out.content.push((hex(sha, "sha256")?, hex(px, "pixels_sha256")?));
            }
            for (j, (c, name)) in cols.iter().zip(columns).enumerate() {
                if c.is_null(r) {
                    return Err(Error::format(path, *name, format!("row {row} is null")));
                }
                let v = match c.data_type() {
                    DataType::Float32 => c.as_primitive::<Float32Type>().value(r),
                    DataType::Float64 => c.as_primitive::<Float64Type>().value(r) as f32,
                    DataType::Float16 => c.as_primitive::<Float16Type>().value(r).to_f32(),
                    t => return Err(Error::format(path, *name, format!("column type {t} is not a float type"))),
                };
                out.columns[j].push(v);
            }
        }
    }
    if !out.content.is_empty() {
        out.content.resize(out.ids.len(), (None, None));
    }
    Ok(out)
}
