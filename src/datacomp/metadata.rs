//! DataComp metadata parquet: one row per sample (`uid`, `url`, `text`, `original_width`, `original_height`,
//! `clip_b32_similarity_score`, `clip_l14_similarity_score`, `face_bboxes`, `sha256`); every column but `uid` is
//! optional. Row order matches the companion `.npz`.

use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{Float32Builder, Float64Builder, Int64Builder, ListBuilder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};

use super::write_parquet_atomic;
use crate::{Error, Result, Uid};

/// One metadata row.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetadataRow {
    /// Row index in the file (= row in the companion `.npz`).
    pub row: usize,
    /// The sample uid.
    pub uid: Uid,
    /// Image URL.
    pub url: Option<String>,
    /// Caption.
    pub text: Option<String>,
    /// Width before img2dataset's resize.
    pub original_width: Option<i64>,
    /// Height before img2dataset's resize.
    pub original_height: Option<i64>,
    /// OpenAI ViT-B/32 CLIP cosine similarity.
    pub clip_b32_similarity_score: Option<f32>,
    /// OpenAI ViT-L/14 CLIP cosine similarity.
    pub clip_l14_similarity_score: Option<f32>,
    /// Face boxes `[x0, y0, x1, y1]` (relative coordinates).
    pub face_bboxes: Option<Vec<[f64; 4]>>,
    /// SHA-256 of the image bytes, hex.
    pub sha256: Option<String>,
    /// SHA-256 of the decoded image, hex (flyt's own column, in the embeddings it stores; read when present,
    /// never written by [`write_metadata`]).
    #[serde(default)]
    pub pixels_sha256: Option<String>,
}

/// A metadata file's rows: the readable ones and, for the others, the row index and why.
#[derive(Clone, Debug, Default)]
pub struct MetadataTable {
    /// Rows that were read.
    pub rows: Vec<MetadataRow>,
    /// Rows that were not (bad uid, malformed box), with the reason.
    pub rejected: Vec<(usize, String)>,
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a ArrayRef> {
    batch.schema().index_of(name).ok().map(|i| batch.column(i))
}

fn string_at(path: &Path, name: &str, a: &ArrayRef, row: usize) -> Result<Option<String>> {
    if a.is_null(row) {
        return Ok(None);
    }
    Ok(Some(match a.data_type() {
        DataType::Utf8 => a.as_string::<i32>().value(row).to_string(),
        DataType::LargeUtf8 => a.as_string::<i64>().value(row).to_string(),
        DataType::Utf8View => a.as_string_view().value(row).to_string(),
        t => return Err(Error::format(path, name, format!("column type {t} is not a string type"))),
    }))
}

fn int_at(path: &Path, name: &str, a: &ArrayRef, row: usize) -> Result<Option<i64>> {
    if a.is_null(row) {
        return Ok(None);
    }
    Ok(Some(match a.data_type() {
        DataType::Int64 => a.as_primitive::<Int64Type>().value(row),
        DataType::Int32 => a.as_primitive::<Int32Type>().value(row) as i64,
        t => return Err(Error::format(path, name, format!("column type {t} is not an integer type"))),
    }))
}

fn float_at(path: &Path, name: &str, a: &ArrayRef, row: usize) -> Result<Option<f64>> {
    if a.is_null(row) {
        return Ok(None);
    }
    Ok(Some(match a.data_type() {
        DataType::Float16 => a.as_primitive::<Float16Type>().value(row).to_f64(),
        DataType::Float32 => a.as_primitive::<Float32Type>().value(row) as f64,
        DataType::Float64 => a.as_primitive::<Float64Type>().value(row),
        t => return Err(Error::format(path, name, format!("column type {t} is not a float type"))),
    }))
}

fn list_at(a: &ArrayRef, row: usize) -> Option<ArrayRef> {
    if a.is_null(row) {
        return None;
    }
    match a.data_type() {
        DataType::List(_) => Some(a.as_list::<i32>().value(row)),
        DataType::LargeList(_) => Some(a.as_list::<i64>().value(row)),
        _ => None,
    }
}

fn boxes_at(path: &Path, a: &ArrayRef, row: usize) -> Result<Option<Vec<[f64; 4]>>, String> {
    let Some(outer) = list_at(a, row) else {
        return if a.is_null(row) { Ok(None) } else { Err(format!("face_bboxes has type {}", a.data_type())) };
    };
    let mut boxes = Vec::with_capacity(outer.len());
    for j in 0..outer.len() {
        let inner = list_at(&outer, j).ok_or_else(|| format!("face_bboxes[{j}] is not a list"))?;
        if inner.len() != 4 {
            return Err(format!("face_bboxes[{j}] has {} numbers, not 4", inner.len()));
        }
        let mut b = [0.0; 4];
        for (k, v) in b.iter_mut().enumerate() {
            *v = float_at(path, "face_bboxes", &inner, k).map_err(|e| e.to_string())?.unwrap_or(f64::NAN);
        }
        boxes.push(b);
    }
    Ok(Some(boxes))
}

/// Reads a DataComp metadata parquet. A missing `uid` column is an error; a row whose uid is not 32 hex
/// characters (or whose `face_bboxes` are malformed) is listed in [`MetadataTable::rejected`] with its index.
pub fn read_metadata(path: impl AsRef<Path>) -> Result<MetadataTable> {
    let path = path.as_ref();
    let file = crate::open_regular(path)?;
    let pq = |source| Error::Parquet { path: path.to_path_buf(), source };
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq)?.with_batch_size(65536).build().map_err(pq)?;
    let mut table = MetadataTable::default();
    let mut base = 0usize;
    for batch in reader {
        let batch = batch?;
        let uid = column(&batch, "uid").ok_or_else(|| Error::format(path, "uid", "the file has no uid column"))?;
        let url = column(&batch, "url");
        let text = column(&batch, "text");
        let ow = column(&batch, "original_width");
        let oh = column(&batch, "original_height");
        let b32 = column(&batch, "clip_b32_similarity_score");
        let l14 = column(&batch, "clip_l14_similarity_score");
        let faces = column(&batch, "face_bboxes");
        let sha = column(&batch, "sha256");
        let px = column(&batch, "pixels_sha256");
        for r in 0..batch.num_rows() {
            let row = base + r;
            let uid = match string_at(path, "uid", uid, r)? {
                None => {
                    table.rejected.push((row, "uid is null".into()));
                    continue;
                }
                Some(s) => match Uid::parse_hex(&s) {
                    Ok(u) => u,
                    Err(e) => {
                        table.rejected.push((row, format!("uid {s:?}: {e}")));
                        continue;
                    }
                },
            };
            let face_bboxes = match faces.map(|a| boxes_at(path, a, r)) {
                None => None,
                Some(Ok(b)) => b,
                Some(Err(reason)) => {
                    table.rejected.push((row, reason));
                    continue;
                }
            };
            let opt_s = |a: Option<&ArrayRef>, n| a.map(|a| string_at(path, n, a, r)).transpose().map(Option::flatten);
            let opt_i = |a: Option<&ArrayRef>, n| a.map(|a| int_at(path, n, a, r)).transpose().map(Option::flatten);
            let opt_f = |a: Option<&ArrayRef>, n| {
                a.map(|a| float_at(path, n, a, r)).transpose().map(|v| v.flatten().map(|x| x as f32))
            };
            table.rows.push(MetadataRow {
                row,
                uid,
                url: opt_s(url, "url")?,
                text: opt_s(text, "text")?,
                original_width: opt_i(ow, "original_width")?,
                original_height: opt_i(oh, "original_height")?,
                clip_b32_similarity_score: opt_f(b32, "clip_b32_similarity_score")?,
                clip_l14_similarity_score: opt_f(l14, "clip_l14_similarity_score")?,
                face_bboxes,
                sha256: opt_s(sha, "sha256")?,
                pixels_sha256: opt_s(px, "pixels_sha256")?,
            });
        }
        base += batch.num_rows();
    }
    Ok(table)
}

/// Writes rows as a DataComp metadata parquet (all nine columns, nulls where a row has no value).
pub fn write_metadata(path: impl AsRef<Path>, rows: &[MetadataRow]) -> Result<()> {
    let path = path.as_ref();
    let mut uid = StringBuilder::new();
    let mut url = StringBuilder::new();
    let mut text = StringBuilder::new();
    let mut ow = Int64Builder::new();
    let mut oh = Int64Builder::new();
    let mut b32 = Float32Builder::new();
    let mut l14 = Float32Builder::new();
    let mut faces = ListBuilder::new(ListBuilder::new(Float64Builder::new()));
    let mut sha = StringBuilder::new();
    for r in rows {
        uid.append_value(r.uid.to_string());
        url.append_option(r.url.as_deref());
        text.append_option(r.text.as_deref());
        ow.append_option(r.original_width);
        oh.append_option(r.original_height);
        b32.append_option(r.clip_b32_similarity_score);
        l14.append_option(r.clip_l14_similarity_score);
        match &r.face_bboxes {
            None => faces.append(false),
            Some(boxes) => {
                for b in boxes {
                    faces.values().values().append_slice(b);
                    faces.values().append(true);
                }
                faces.append(true);
            }
        }
        sha.append_option(r.sha256.as_deref());
    }
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("uid", Arc::new(uid.finish())),
        ("url", Arc::new(url.finish())),
        ("text", Arc::new(text.finish())),
        ("original_width", Arc::new(ow.finish())),
        ("original_height", Arc::new(oh.finish())),
        ("clip_b32_similarity_score", Arc::new(b32.finish())),
        ("clip_l14_similarity_score", Arc::new(l14.finish())),
        ("face_bboxes", Arc::new(faces.finish())),
        ("sha256", Arc::new(sha.finish())),
    ];
    let batch = RecordBatch::try_from_iter(columns)?;
    write_parquet_atomic(path, &batch)
}
