//! DataComp embedding files: `.npz` archives of `.npy` arrays (`b32_img`, `b32_txt`, `l14_img`, `l14_txt`, …),
//! float16 or float32, row order = the companion parquet's row order.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use super::npy::{NpyArray, npy_bytes, parse_npy};
use crate::{Error, Result};

/// Reads every array of an `.npz` (stored or deflate-compressed, as `np.savez` / `np.savez_compressed` write
/// them), keyed by name without `.npy`.
pub fn read_npz(path: impl AsRef<Path>) -> Result<BTreeMap<String, NpyArray>> {
    let path = path.as_ref();
    let file = crate::open_regular(path)?;
    let mut zip =
        zip::ZipArchive::new(file).map_err(|e| Error::format(path, "npz", format!("not a zip archive: {e}")))?;
    let mut out = BTreeMap::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| Error::format(path, format!("entry {i}"), e.to_string()))?;
        let name = entry.name().to_string();
        let Some(key) = name.strip_suffix(".npy") else { continue };
        let mut bytes = Vec::with_capacity(entry.size().min(1 << 32) as usize);
        entry.read_to_end(&mut bytes).map_err(|e| Error::format(path, &name, format!("cannot decompress: {e}")))?;
        out.insert(key.to_string(), parse_npy(&bytes, path, key)?);
    }
    Ok(out)
}

/// Reads one 2-D float array of an `.npz` as row-major `f32` with its shape (rows, cols).
pub fn read_npz_matrix(path: impl AsRef<Path>, key: &str) -> Result<(Vec<f32>, usize, usize)> {
    let path = path.as_ref();
    let mut all = read_npz(path)?;
    let names: Vec<String> = all.keys().cloned().collect();
    let arr = all
        .remove(key)
        .ok_or_else(|| Error::format(path, key, format!("no such array; the file has {}", names.join(", "))))?;
    let [rows, cols] = arr.shape[..] else {
        return Err(Error::format(path, key, format!("expected a 2-D array, shape is {:?}", arr.shape)));
    };
    let data = arr.to_f32().ok_or_else(|| Error::format(path, key, "not a float array"))?;
    Ok((data, rows, cols))
}

/// Writes arrays as an `.npz` (deflate-compressed when `compressed`, like `np.savez_compressed`), through a
/// temporary file and a rename.
pub fn write_npz(path: impl AsRef<Path>, arrays: &BTreeMap<String, NpyArray>, compressed: bool) -> Result<()> {
    let path = path.as_ref();
    let tmp = crate::temp_path(path);
    let written = (|| {
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut zip = zip::ZipWriter::new(file);
        let method = if compressed { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
        let options = zip::write::SimpleFileOptions::default().compression_method(method).large_file(true);
        for (key, arr) in arrays {
            zip.start_file(format!("{key}.npy"), options).map_err(|e| Error::format(&tmp, key, e.to_string()))?;
            zip.write_all(&npy_bytes(arr)).map_err(|e| Error::io(&tmp, e))?;
        }
        let file = zip.finish().map_err(|e| Error::format(&tmp, "npz", e.to_string()))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
