//! Checking a safetensors file against the tensors a model expects, from the file's header alone, before
//! libtorch reads it: a wrong shape, a non-float dtype, a missing tensor or a cut file is one line naming the
//! file, the tensor, what the model expects and what the file has (never a libtorch message and backtrace).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// One tensor as a safetensors header declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredTensor {
    /// `F32`, `F16`, `BF16`, `I64`, ...
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<i64>,
    /// Byte offsets of its data after the header.
    pub offsets: (u64, u64),
}

/// Largest header read (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

/// The tensors `path`'s header declares, by name; an error names the file and what is wrong with it (too
/// short, a header that is not JSON, data past the end of the file).
pub fn safetensors_header(path: &Path) -> Result<BTreeMap<String, DeclaredTensor>> {
    let bad = |why: String| Error::format(path, "safetensors header", why);
    let mut f = crate::open_regular(path)?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|_| bad(format!("the file has {len} bytes, too few for a header")))?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER || n + 8 > len {
        return Err(bad(format!("header length {n} does not fit the file's {len} bytes")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value = serde_json::from_slice(&header).map_err(|e| bad(format!("not JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| bad("not a JSON object".into()))?;
    let mut out = BTreeMap::new();
    for (name, t) in obj {
        if name == "__metadata__" {
            continue;
        }
        let what = |why: &str| Error::format(path, format!("tensor {name}"), why.to_string());
        let dtype = t.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| what("no dtype"))?.to_string();
        let shape: Vec<i64> = t
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| what("no shape"))?
            .iter()
            .map(|d| d.as_i64().filter(|d| *d >= 0))
            .collect::<Option<_>>()
            .ok_or_else(|| what("a shape entry is not a non-negative integer"))?;
        let off: Vec<u64> = t
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
            .unwrap_or_default();
        let [a, b] = off[..] else { return Err(what("no data_offsets [begin, end]")) };
        let end = n.checked_add(8).and_then(|x| x.checked_add(b));
        if a > b || end.is_none_or(|e| e > len) {
            return Err(Error::format(
                path,
                format!("tensor {name}"),
                format!(
                    "its data ends at byte {} but the file has {len} bytes (cut short?)",
                    end.map(|e| e.to_string()).unwrap_or_else(|| "past 2^64".into())
                ),
            ));
        }
        out.insert(name.clone(), DeclaredTensor { dtype, shape, offsets: (a, b) });
    }
    Ok(out)
}

/// Checks that `path` declares each tensor of `want` (name and shape) with that shape and a floating-point
/// dtype (`F16`, `BF16`, `F32`, `F64`). Tensors the model does not use are allowed.
pub fn check_safetensors(path: &Path, want: &[(String, Vec<i64>)]) -> Result<()> {
    let have = safetensors_header(path)?;
    for (name, shape) in want {
        let Some(t) = have.get(name) else {
            return Err(Error::format(
                path,
                format!("tensor {name}"),
                format!("missing; the model expects shape {shape:?} (the file has {} tensors)", have.len()),
            ));
        };
        if t.shape != *shape {
            return Err(Error::format(
                path,
                format!("tensor {name}"),
                format!("shape {:?} ({}), the model expects {shape:?}", t.shape, t.dtype),
            ));
        }
        if !matches!(t.dtype.as_str(), "F16" | "BF16" | "F32" | "F64") {
            return Err(Error::format(
                path,
                format!("tensor {name}"),
                format!("dtype {}, the model expects floating point (F16, BF16, F32 or F64)", t.dtype),
            ));
        }
    }
    Ok(())
}

/// A libtorch error's first line (its message without the C++ backtrace that follows).
pub fn torch_message(e: &tch::TchError) -> String {
    let s = e.to_string();
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, header: &str, data: usize) -> std::path::PathBuf {
        let p = dir.join("m.safetensors");
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend(std::iter::repeat_n(0u8, data));
        std::fs::write(&p, b).unwrap();
        p
    }

    #[test]
    fn a_wrong_shape_a_wrong_dtype_a_missing_tensor_and_a_cut_file_each_name_the_tensor() {
        let d = tempfile::tempdir().unwrap();
        let ok = r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"__metadata__":{"x":"y"}}"#;
        let p = file(d.path(), ok, 24);
        check_safetensors(&p, &[("w".into(), vec![2, 3])]).unwrap();
        let e = check_safetensors(&p, &[("w".into(), vec![3, 2])]).unwrap_err().to_string();
        assert!(e.contains("tensor w") && e.contains("[2, 3]") && e.contains("[3, 2]"), "{e}");
        let e = check_safetensors(&p, &[("v".into(), vec![1])]).unwrap_err().to_string();
        assert!(e.contains("tensor v") && e.contains("missing"), "{e}");
        let p = file(d.path(), &ok.replace("F32", "I64"), 24);
        let e = check_safetensors(&p, &[("w".into(), vec![2, 3])]).unwrap_err().to_string();
        assert!(e.contains("dtype I64"), "{e}");
        let p = file(d.path(), ok, 10);
        let e = check_safetensors(&p, &[("w".into(), vec![2, 3])]).unwrap_err().to_string();
        assert!(e.contains("cut short"), "{e}");
        std::fs::write(&p, b"abc").unwrap();
        assert!(safetensors_header(&p).unwrap_err().to_string().contains("too few"));
    }
}
