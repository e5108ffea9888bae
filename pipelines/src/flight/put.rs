//! What DoPut accepts: external method scores (a `uid` column plus float columns) written as an immutable
//! score file into the curation's watched score directory, and new shard paths linked into its shard
//! directory. Everything is checked before anything is written; a bad batch changes nothing.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use flyt::Uid;

/// Why a put was refused.
#[derive(Debug)]
pub enum PutError {
    /// The batch is malformed (wrong schema, bad uid, NaN, duplicate, too large): the client's fault.
    Invalid(String),
    /// The target exists already.
    Exists(String),
    /// The service cannot take this put (no score directory configured, ...).
    Precondition(String),
    /// The put would pass a configured size limit.
    Exhausted(String),
    /// The put names a path the service may not link.
    Denied(String),
    /// Writing failed.
    Io(String),
}

fn text_at(a: &ArrayRef, r: usize) -> Option<&str> {
    if a.is_null(r) {
        return None;
    }
    match a.data_type() {
        DataType::Utf8 => Some(a.as_string::<i32>().value(r)),
        DataType::LargeUtf8 => Some(a.as_string::<i64>().value(r)),
        DataType::Utf8View => Some(a.as_string_view().value(r)),
        _ => None,
    }
}

/// A file or flight name: letters, digits, `_`, `-`, `.`; not starting with `.`; at most 100 characters.
pub fn check_name(name: &str) -> Result<(), PutError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(PutError::Invalid(format!("bad name {name:?}: use letters, digits, _ - . (not a leading .)")))
    }
}

/// The bytes of the files directly in `dir` (symlinks followed; what cannot be read counts 0).
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| std::fs::metadata(e.path()).ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Checks score batches and writes them as `<dir>/<name>.parquet` (temporary name, then rename), unless the
/// score files in `dir` would then hold more than `max_dir_bytes`; returns (rows, columns).
pub fn put_scores(
    batches: &[RecordBatch],
    name: &str,
    dir: &Path,
    max_dir_bytes: u64,
) -> Result<(usize, Vec<String>), PutError> {
    check_name(name)?;
    let Some(first) = batches.first() else { return Err(PutError::Invalid("no record batches".into())) };
    let schema = first.schema();
    let uid_i = schema.index_of("uid").map_err(|_| {
        PutError::Invalid(format!(
            "no uid column; columns are {:?}",
            schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
        ))
    })?;
    let mut columns = Vec::new();
    for (i, f) in schema.fields().iter().enumerate() {
        if i == uid_i {
            if !matches!(f.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
                return Err(PutError::Invalid(format!(
                    "column uid is {}, not a string (32 hex characters)",
                    f.data_type()
                )));
            }
            continue;
        }
        if !matches!(f.data_type(), DataType::Float32 | DataType::Float64) {
            return Err(PutError::Invalid(format!("column {} is {}, not a float score", f.name(), f.data_type())));
        }
        columns.push(f.name().clone());
    }
    if columns.is_empty() {
        return Err(PutError::Invalid("no score columns besides uid".into()));
    }
    let mut uids: Vec<Uid> = Vec::new();
    let mut values: Vec<Vec<f64>> = vec![Vec::new(); columns.len()];
    let mut seen = HashSet::new();
    for b in batches {
        if b.schema().fields() != schema.fields() {
            return Err(PutError::Invalid("record batches with different schemas".into()));
        }
        let uid = b.column(uid_i);
        for r in 0..b.num_rows() {
            let row = uids.len();
            let text = text_at(uid, r).ok_or_else(|| PutError::Invalid(format!("row {row}: uid is null")))?;
            let u = Uid::parse_hex(text).map_err(|e| PutError::Invalid(format!("row {row}: uid {text:?}: {e}")))?;
            if !seen.insert(u) {
                return Err(PutError::Invalid(format!("row {row}: uid {u} appears twice")));
            }
            uids.push(u);
        }
        let mut j = 0;
        for (i, f) in schema.fields().iter().enumerate() {
            if i == uid_i {
                continue;
            }
            let a = b.column(i);
            for r in 0..b.num_rows() {
                let v = if a.is_null(r) {
                    f64::NAN
                } else if *f.data_type() == DataType::Float32 {
                    a.as_primitive::<Float32Type>().value(r) as f64
                } else {
                    a.as_primitive::<Float64Type>().value(r)
                };
                if !v.is_finite() {
                    let row = values[j].len();
                    return Err(PutError::Invalid(format!("row {row}: {} is {v}, not a finite number", f.name())));
                }
                values[j].push(v);
            }
            j += 1;
        }
    }
    if !dir.is_dir() {
        return Err(PutError::Precondition(format!("the score directory {} does not exist", dir.display())));
    }
    let path = dir.join(format!("{name}.parquet"));
    if path.exists() {
        return Err(PutError::Exists(format!(
            "{} exists; score files are immutable: put under a new name",
            path.display()
        )));
    }
    let mut fields = vec![Field::new("uid", DataType::Utf8, false)];
    fields.extend(columns.iter().map(|c| Field::new(c, DataType::Float64, false)));
    let mut arrays: Vec<ArrayRef> =
        vec![Arc::new(arrow_array::StringArray::from_iter_values(uids.iter().map(|u| u.to_string())))];
    arrays.extend(values.into_iter().map(|v| Arc::new(arrow_array::Float64Array::from(v)) as ArrayRef));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| PutError::Io(e.to_string()))?;
    let full = |stored: u64, adding: Option<u64>| {
        let what = adding.map(|n| format!(" and this put's {n}-byte file would pass it")).unwrap_or_default();
        PutError::Exhausted(format!(
            "the score directory {} holds {stored} bytes of files{what}: over --max-score-bytes ({max_dir_bytes} \
             bytes)",
            dir.display()
        ))
    };
    let stored = dir_bytes(dir);
    if stored >= max_dir_bytes {
        return Err(full(stored, None));
    }
    let tmp = flyt::temp_path(&path);
    let io = |e: &dyn std::fmt::Display| PutError::Io(format!("{}: {e}", tmp.display()));
    let written = (|| {
        let file = std::fs::File::create(&tmp).map_err(|e| io(&e))?;
        let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).map_err(|e| io(&e))?;
        w.write(&batch).map_err(|e| io(&e))?;
        w.close().map_err(|e| io(&e))?;
        let size = std::fs::metadata(&tmp).map_err(|e| io(&e))?.len();
        if stored.saturating_add(size) > max_dir_bytes {
            return Err(full(stored, Some(size)));
        }
        std::fs::rename(&tmp, &path).map_err(|e| io(&e))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((uids.len(), columns))
}

/// Checks a batch of shard paths (a `path` column) and links each into `dir` under its file name; returns the
/// links made. A path is taken only if, with its symlinks resolved, it is a regular file under one of `roots`
/// (resolved too); the link points at the resolved path. No roots: every path is refused.
pub fn put_shards(batches: &[RecordBatch], dir: &Path, roots: &[PathBuf]) -> Result<Vec<PathBuf>, PutError> {
    if roots.is_empty() {
        return Err(PutError::Precondition(
            "this service links no shard paths: start it with --allow-shards-from DIR (the directories whose \
             files a shards put may link)"
                .into(),
        ));
    }
    let roots: Vec<PathBuf> = roots.iter().filter_map(|r| std::fs::canonicalize(r).ok()).collect();
    let mut paths = Vec::new();
    for b in batches {
        let i = b.schema().index_of("path").map_err(|_| PutError::Invalid("no path column".into()))?;
        let a = b.column(i);
        for r in 0..b.num_rows() {
            let p = text_at(a, r)
                .ok_or_else(|| PutError::Invalid(format!("row {}: path is null or not a string", paths.len())))?;
            paths.push(PathBuf::from(p));
        }
    }
    if paths.is_empty() {
        return Err(PutError::Invalid("no paths".into()));
    }
    if !dir.is_dir() {
        return Err(PutError::Precondition(format!("the shard directory {} does not exist", dir.display())));
    }
    let mut names = HashSet::new();
    let mut plan = Vec::new();
    for (row, p) in paths.iter().enumerate() {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !p.is_absolute() {
            return Err(PutError::Invalid(format!("row {row}: {} is not an absolute path", p.display())));
        }
        if !(crate::shards::is_shard_name(&name) || name.ends_with(".parquet") || name.ends_with(".npz")) {
            return Err(PutError::Invalid(format!(
                "row {row}: {} is not a shard (.tar, .tar.gz, .tgz) or sidecar",
                p.display()
            )));
        }
        check_name(&name).map_err(|_| PutError::Invalid(format!("row {row}: bad file name {name:?}")))?;
        let target = std::fs::canonicalize(p)
            .map_err(|e| PutError::Invalid(format!("row {row}: {} is not a readable file: {e}", p.display())))?;
        if !roots.iter().any(|r| target.starts_with(r)) {
            return Err(PutError::Denied(format!(
                "row {row}: {} (resolved: {}) is outside the directories --allow-shards-from names",
                p.display(),
                target.display()
            )));
        }
        let kind = std::fs::metadata(&target)
            .map_err(|e| PutError::Invalid(format!("row {row}: {}: {e}", target.display())))?
            .file_type();
        if !kind.is_file() {
            return Err(PutError::Invalid(format!(
                "row {row}: {} (resolved: {}) is not a regular file",
                p.display(),
                target.display()
            )));
        }
        let link = dir.join(&name);
        if link.symlink_metadata().is_ok() || !names.insert(name.clone()) {
            return Err(PutError::Exists(format!("row {row}: {} exists already", link.display())));
        }
        plan.push((target, link));
    }
    let mut made = Vec::new();
    for (target, link) in plan {
        let tmp = flyt::temp_path(&link);
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).map_err(|e| PutError::Io(format!("{}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, &link).map_err(|e| PutError::Io(format!("{}: {e}", link.display())))?;
        made.push(link);
    }
    Ok(made)
}
