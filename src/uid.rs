//! DataComp's 128-bit sample uid.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A DataComp sample uid: 128 bits, written as 32 hex characters in a sample's `.json` (`"uid"`) and in the
/// metadata parquet, and stored in subset files as two little-endian `u64`s (high half first).
///
/// Uids order as `(high u64, low u64)`, which is the order of their hex strings and of DataComp subset files.
///
/// ```
/// use flyt::Uid;
/// let uid: Uid = "0123456789abcdef00000000000000ff".parse().unwrap();
/// assert_eq!(uid.high(), 0x0123456789abcdef);
/// assert_eq!(uid.low(), 0xff);
/// assert_eq!(uid.to_string(), "0123456789abcdef00000000000000ff");
/// assert!("not-a-uid".parse::<Uid>().is_err());
/// ```
// Stored as two u64 (high first, so the derived order is (high, low)) rather than a u128, whose 16-byte
// alignment would pad a (Uid, f64) pair to 32 bytes: pools of 10^8 pairs must fit in memory.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Uid {
    hi: u64,
    lo: u64,
}

/// Why a string is not a uid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UidError {
    /// The string does not have 32 characters.
    #[error("a uid has 32 hex characters, this one has {0}")]
    Length(usize),
    /// A character is not a hex digit.
    #[error("a uid has only hex characters, found {0:?} at {1}")]
    NotHex(char, usize),
}

impl Uid {
    /// The uid with the given high and low halves.
    pub const fn from_parts(high: u64, low: u64) -> Self {
        Uid { hi: high, lo: low }
    }

    /// The uid of a 128-bit integer.
    pub const fn from_u128(v: u128) -> Self {
        Uid { hi: (v >> 64) as u64, lo: v as u64 }
    }

    /// The uid as a 128-bit integer.
    pub const fn as_u128(self) -> u128 {
        ((self.hi as u128) << 64) | self.lo as u128
    }

    /// The high 64 bits (DataComp subset field `f0`; the first 16 hex characters).
    pub const fn high(self) -> u64 {
        self.hi
    }

    /// The low 64 bits (DataComp subset field `f1`; the last 16 hex characters).
    pub const fn low(self) -> u64 {
        self.lo
    }

    /// Parses 32 hex characters (either case).
    pub fn parse_hex(s: &str) -> Result<Self, UidError> {
        if s.len() != 32 {
            return Err(UidError::Length(s.chars().count()));
        }
        let mut v: u128 = 0;
        for (i, c) in s.chars().enumerate() {
            let d = c.to_digit(16).ok_or(UidError::NotHex(c, i))?;
            v = (v << 4) | d as u128;
        }
        Ok(Uid::from_u128(v))
    }

    /// The uid given to a sample that has none of its own (no `.json`, or no `"uid"` in it).
    ///
    /// It is the first 16 bytes, read big-endian, of
    /// `SHA-256("flyt-uid-v1" 0x00 shard_name 0x00 key)`, where `shard_name` is the shard's file name without
    /// its directory and without its `.tar`, `.tar.gz` or `.tgz` extension (see [`crate::shard_name`]) and
    /// `key` is the sample's WebDataset key. So the uid does not change when a shard is moved, or recompressed,
    /// and two shards of the same name give their samples the same uids (a re-delivered shard is then a set of
    /// duplicate uids, not new data).
    ///
    /// ```
    /// use flyt::Uid;
    /// let a = Uid::derive("00000001", "000010000005");
    /// assert_eq!(a, Uid::derive("00000001", "000010000005"));
    /// assert_ne!(a, Uid::derive("00000002", "000010000005"));
    /// ```
    pub fn derive(shard_name: &str, key: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"flyt-uid-v1\0");
        h.update(shard_name.as_bytes());
        h.update(b"\0");
        h.update(key.as_bytes());
        let digest = h.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Uid::from_u128(u128::from_be_bytes(bytes))
    }
}

impl FromStr for Uid {
    type Err = UidError;
    fn from_str(s: &str) -> Result<Self, UidError> {
        Uid::parse_hex(s)
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}{:016x}", self.hi, self.lo)
    }
}

impl fmt::Debug for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uid({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_high_then_low() {
        let a = Uid::from_parts(1, u64::MAX);
        let b = Uid::from_parts(2, 0);
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
        assert_eq!(Uid::parse_hex(&a.to_string()).unwrap(), a);
    }

    #[test]
    fn a_scored_pair_takes_24_bytes() {
        assert_eq!(std::mem::size_of::<(Uid, f64)>(), 24);
        assert_eq!(Uid::from_u128(0x1234 << 64 | 5).as_u128(), 0x1234 << 64 | 5);
    }

    #[test]
    fn rejects_bad_strings() {
        assert_eq!(Uid::parse_hex("abc"), Err(UidError::Length(3)));
        assert!(matches!(Uid::parse_hex("g0000000000000000000000000000000"), Err(UidError::NotHex('g', 0))));
        assert!(Uid::parse_hex("ABCDEF0123456789abcdef0123456789").is_ok());
        // 32 bytes but multi-byte characters must not panic.
        assert!(Uid::parse_hex("ééééééééééééééee").is_err());
    }
}
