//! The `.npy` format (numpy's `NEP 1`), for the numeric arrays flyt reads and writes: embeddings and subsets.

use std::io::Write;
use std::path::Path;

use half::f16;

use crate::{Error, Result};

/// A numeric n-dimensional array in C order.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// The shape.
    pub shape: Vec<usize>,
    /// The values.
    pub data: NpyData,
}

/// The values of an [`NpyArray`], by dtype.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum NpyData {
    F16(Vec<f16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    U8(Vec<u8>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    U64(Vec<u64>),
}

impl NpyData {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            NpyData::F16(v) => v.len(),
            NpyData::F32(v) => v.len(),
            NpyData::F64(v) => v.len(),
            NpyData::U8(v) => v.len(),
            NpyData::I32(v) => v.len(),
            NpyData::I64(v) => v.len(),
            NpyData::U64(v) => v.len(),
        }
    }
    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn descr(&self) -> &'static str {
        match self {
            NpyData::F16(_) => "<f2",
            NpyData::F32(_) => "<f4",
            NpyData::F64(_) => "<f8",
            NpyData::U8(_) => "|u1",
            NpyData::I32(_) => "<i4",
            NpyData::I64(_) => "<i8",
            NpyData::U64(_) => "<u8",
        }
    }
}

impl NpyArray {
    /// The values as `f32` (float arrays only).
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        match &self.data {
            NpyData::F16(v) => Some(v.iter().map(|x| x.to_f32()).collect()),
            NpyData::F32(v) => Some(v.clone()),
            NpyData::F64(v) => Some(v.iter().map(|&x| x as f32).collect()),
            _ => None,
        }
    }
}

pub(crate) struct Header {
    pub descr: String,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
    pub data_offset: usize,
}

/// Parses the header of a `.npy` file held in `bytes`.
pub(crate) fn parse_header(bytes: &[u8], path: &Path, what: &str) -> Result<Header> {
    let bad = |reason: String| Error::format(path, what, reason);
    if !bytes.starts_with(b"\x93NUMPY") {
        return Err(bad("not a .npy array (no \\x93NUMPY magic)".into()));
    }
    let major = *bytes.get(6).ok_or_else(|| bad("header cut short".into()))?;
    let (len, start) = match major {
        1 => {
            (u16::from_le_bytes([bytes.get(8).copied().unwrap_or(0), bytes.get(9).copied().unwrap_or(0)]) as usize, 10)
        }
        2 | 3 => {
            let b = bytes.get(8..12).ok_or_else(|| bad("header cut short".into()))?;
            (u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize, 12)
        }
        v => return Err(bad(format!("unsupported .npy version {v}"))),
    };
    let text = bytes.get(start..start + len).ok_or_else(|| bad("header cut short".into()))?;
    let text = std::str::from_utf8(text).map_err(|_| bad("header is not text".into()))?;
    let descr = dict_value(text, "descr").ok_or_else(|| bad("header has no 'descr'".into()))?;
    let descr: String = descr.chars().filter(|c| !c.is_whitespace()).collect::<String>().replace('"', "'");
    let fortran_order = match dict_value(text, "fortran_order").map(str::trim) {
        Some("True") => true,
        Some("False") => false,
        _ => return Err(bad("header has no 'fortran_order'".into())),
    };
    let shape_text = dict_value(text, "shape").ok_or_else(|| bad("header has no 'shape'".into()))?;
    let shape = shape_text
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| bad(format!("bad shape {shape_text:?}")))?;
    Ok(Header { descr, fortran_order, shape, data_offset: start + len })
}

/// The text of a python dict literal's value for `key` (a quoted string unquoted, or a bracketed expression).
fn dict_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let pat_a = format!("'{key}'");
    let pat_b = format!("\"{key}\"");
    let at = text.find(&pat_a).map(|i| i + pat_a.len()).or_else(|| text.find(&pat_b).map(|i| i + pat_b.len()))?;
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
    let first = rest.chars().next()?;
    match first {
        '\'' | '"' => {
            let end = rest[1..].find(first)?;
            Some(&rest[1..1 + end])
        }
        '[' | '(' => {
            let (open, close) = if first == '[' { ('[', ']') } else { ('(', ')') };
            let mut depth = 0usize;
            for (i, c) in rest.char_indices() {
                if c == open {
                    depth += 1;
                } else if c == close {
                    depth -= 1;
                    if depth == 0 {
                        return Some(&rest[..=i]);
                    }
                }
            }
            None
        }
        _ => {
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            Some(&rest[..end])
        }
    }
}

/// Parses a whole `.npy` file held in memory. `what` names it in errors (a path, or an npz member).
pub fn parse_npy(bytes: &[u8], path: &Path, what: &str) -> Result<NpyArray> {
    let h = parse_header(bytes, path, what)?;
    let bad = |reason: String| Error::format(path, what, reason);
    let n: usize =
        h.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("shape overflows".into()))?;
    if h.fortran_order && h.shape.len() > 1 {
        return Err(bad("Fortran-order arrays are not supported; save with np.ascontiguousarray".into()));
    }
    let body = &bytes[h.data_offset.min(bytes.len())..];
    let (elem, big) = match h.descr.as_str() {
        d if d.len() == 3 && (d.starts_with('<') || d.starts_with('|') || d.starts_with('=')) => (&d[1..], false),
        d if d.len() == 3 && d.starts_with('>') => (&d[1..], true),
        d => return Err(bad(format!("unsupported dtype {d}"))),
    };
    let size = match elem {
        "f2" => 2,
        "f4" | "i4" => 4,
        "f8" | "i8" | "u8" => 8,
        "u1" | "b1" => 1,
        e => return Err(bad(format!("unsupported dtype {e}"))),
    };
    let need = n.checked_mul(size).ok_or_else(|| bad("shape overflows".into()))?;
    if body.len() < need {
        return Err(bad(format!("data cut short: shape {:?} needs {need} bytes, file has {}", h.shape, body.len())));
    }
    let body = &body[..need];
    macro_rules! conv {
        ($t:ty, $w:expr) => {
            body.chunks_exact($w)
                .map(|c| {
                    let a = c.try_into().expect("chunk width");
                    if big { <$t>::from_be_bytes(a) } else { <$t>::from_le_bytes(a) }
                })
                .collect::<Vec<$t>>()
        };
    }
    let data = match elem {
        "f2" => NpyData::F16(conv!(u16, 2).into_iter().map(f16::from_bits).collect()),
        "f4" => NpyData::F32(conv!(f32, 4)),
        "f8" => NpyData::F64(conv!(f64, 8)),
        "i4" => NpyData::I32(conv!(i32, 4)),
        "i8" => NpyData::I64(conv!(i64, 8)),
        "u8" => NpyData::U64(conv!(u64, 8)),
        _ => NpyData::U8(body.to_vec()),
    };
    Ok(NpyArray { shape: h.shape, data })
}

/// Writes a version-1 `.npy` header for `descr` and `shape`, padded so the data starts at a multiple of 64.
pub(crate) fn write_header(w: &mut impl Write, descr: &str, shape: &[usize]) -> std::io::Result<()> {
    let shape_text = match shape {
        [n] => format!("({n},)"),
        s => format!("({})", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut dict = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': {shape_text}, }}");
    let total = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - total % 64) % 64));
    dict.push('\n');
    w.write_all(b"\x93NUMPY\x01\x00")?;
    w.write_all(&(dict.len() as u16).to_le_bytes())?;
    w.write_all(dict.as_bytes())
}

/// Serialises an array as `.npy` bytes.
pub fn npy_bytes(array: &NpyArray) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + array.data.len() * 4);
    write_header(&mut out, &format!("'{}'", array.data.descr()), &array.shape).expect("writing to a Vec");
    match &array.data {
        NpyData::F16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_bits().to_le_bytes())),
        NpyData::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::F64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::U8(v) => out.extend_from_slice(v),
        NpyData::I32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::I64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::U64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
    out
}
