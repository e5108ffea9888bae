//! DataComp subset files: sorted uids as a numpy structured array `[('f0','<u8'),('f1','<u8')]`, duplicates
//! meaning copies.

use std::io::{BufWriter, Write};
use std::path::Path;

use super::npy::{parse_header, write_header};
use crate::webdataset::write_atomic;
use crate::{Error, Result, Uid};

/// Reads a subset file: a `.npy` structured array `[('f0','<u8'),('f1','<u8')]` (f0 = high 64 bits), a `.npy`
/// `<u8` array of shape (n, 2), or a raw file of 16-byte records (DataComp's memmap form). Returns the uids in
/// file order.
pub fn read_subset(path: impl AsRef<Path>) -> Result<Vec<Uid>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let what = "subset";
    let (body, n) = if bytes.starts_with(b"\x93NUMPY") {
        let h = parse_header(&bytes, path, what)?;
        let n = match (h.descr.as_str(), h.shape.as_slice()) {
            ("[('f0','<u8'),('f1','<u8')]", [n]) => *n,
            ("'<u8'", [n, 2]) => *n,
            (d, s) => {
                return Err(Error::format(
                    path,
                    what,
                    format!(
                        "dtype {d} shape {s:?}: a subset is [('f0','<u8'),('f1','<u8')] of shape (n,) or <u8 (n, 2)"
                    ),
                ));
            }
        };
        (&bytes[h.data_offset.min(bytes.len())..], n)
    } else {
        if bytes.len() % 16 != 0 {
            return Err(Error::format(
                path,
                what,
                format!("neither .npy nor a raw file of 16-byte records ({} bytes)", bytes.len()),
            ));
        }
        (&bytes[..], bytes.len() / 16)
    };
    if body.len() < n * 16 {
        return Err(Error::format(
            path,
            what,
            format!("data cut short: {n} uids need {} bytes, file has {}", n * 16, body.len()),
        ));
    }
    Ok(body[..n * 16]
        .chunks_exact(16)
        .map(|c| {
            let hi = u64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
            let lo = u64::from_le_bytes(c[8..].try_into().expect("8 bytes"));
            Uid::from_parts(hi, lo)
        })
        .collect())
}

/// Writes a subset file (`.npy`, structured dtype, sorted). `uids` may hold duplicates (copies) in any order;
/// they are written sorted. Published atomically.
pub fn write_subset(path: impl AsRef<Path>, uids: &[Uid]) -> Result<()> {
    let path = path.as_ref();
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    let mut out = BufWriter::new(Vec::with_capacity(128 + 16 * sorted.len()));
    let io = |e| Error::io(path, e);
    write_header(&mut out, "[('f0', '<u8'), ('f1', '<u8')]", &[sorted.len()]).map_err(io)?;
    for u in &sorted {
        out.write_all(&u.high().to_le_bytes()).map_err(io)?;
        out.write_all(&u.low().to_le_bytes()).map_err(io)?;
    }
    let bytes = out.into_inner().map_err(|e| Error::io(path, e.into_error()))?;
    write_atomic(path, &bytes)
}

/// A subset as sorted distinct uids with their counts (how many copies each gets).
///
/// ```
/// use flyt::{SubsetCounts, Uid};
/// let s = SubsetCounts::from_uids(vec![Uid::from_u128(7), Uid::from_u128(3), Uid::from_u128(7)]);
/// assert_eq!(s.count(Uid::from_u128(7)), 2);
/// assert_eq!(s.count(Uid::from_u128(5)), 0);
/// assert_eq!((s.len(), s.total()), (2, 3));
/// assert_eq!(s.to_uids(), vec![Uid::from_u128(3), Uid::from_u128(7), Uid::from_u128(7)]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubsetCounts {
    uids: Vec<Uid>,
    counts: Vec<u32>,
}

impl SubsetCounts {
    /// From uids with repeats, in any order.
    pub fn from_uids(mut uids: Vec<Uid>) -> Self {
        uids.sort_unstable();
        let mut out = SubsetCounts::default();
        for u in uids {
            if out.uids.last() == Some(&u) {
                *out.counts.last_mut().expect("pushed together") += 1;
            } else {
                out.uids.push(u);
                out.counts.push(1);
            }
        }
        out
    }

    /// Reads a subset file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::from_uids(read_subset(path)?))
    }

    /// Distinct uids.
    pub fn len(&self) -> usize {
        self.uids.len()
    }
    /// Whether the subset is empty.
    pub fn is_empty(&self) -> bool {
        self.uids.is_empty()
    }
    /// Copies over all uids.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|&c| c as u64).sum()
    }
    /// Position of `uid` among the distinct uids.
    pub fn index_of(&self, uid: Uid) -> Option<usize> {
        self.uids.binary_search(&uid).ok()
    }
    /// Copies of `uid` (0 when absent).
    pub fn count(&self, uid: Uid) -> u32 {
        self.index_of(uid).map_or(0, |i| self.counts[i])
    }
    /// The `i`-th distinct uid.
    pub fn uid_at(&self, i: usize) -> Uid {
        self.uids[i]
    }
    /// Copies of the `i`-th distinct uid.
    pub fn count_at(&self, i: usize) -> u32 {
        self.counts[i]
    }
    /// (uid, count) pairs in uid order.
    pub fn iter(&self) -> impl Iterator<Item = (Uid, u32)> + '_ {
        self.uids.iter().copied().zip(self.counts.iter().copied())
    }
    /// The expanded, sorted uid list (each uid `count` times), as a subset file holds it.
    pub fn to_uids(&self) -> Vec<Uid> {
        self.iter().flat_map(|(u, c)| std::iter::repeat_n(u, c as usize)).collect()
    }
}
