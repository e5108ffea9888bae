//! Samples, rejects and per-shard statistics.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Uid;
use crate::image_info::ImageInfo;

/// The image formats a sample's image member may have, named by its extension.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// `.jpg` / `.jpeg`
    Jpeg,
    /// `.png`
    Png,
    /// `.webp`
    Webp,
}

impl ImageFormat {
    /// The format a (lower-case) member extension names, if it names an image.
    pub fn from_ext(ext: &str) -> Option<Self> {
        match ext {
            "jpg" | "jpeg" => Some(ImageFormat::Jpeg),
            "png" => Some(ImageFormat::Png),
            "webp" => Some(ImageFormat::Webp),
            _ => None,
        }
    }
}

/// Where a sample's uid came from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UidSource {
    /// The `"uid"` field of the sample's `.json` member.
    Json,
    /// Derived from (shard name, key) by [`Uid::derive`].
    Derived,
}

/// One member of a sample: the extension after the key (lower-cased, e.g. `jpg`, `txt`, `seg.png`) and the bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The extension: the file name after the first dot, lower-cased.
    pub ext: String,
    /// The member's bytes, as stored.
    pub data: Vec<u8>,
}

/// An accepted image-text sample. It keeps every member as read (so it can be written back losslessly) plus the
/// parsed views: uid, caption, metadata and label.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    /// The DataComp uid.
    pub uid: Uid,
    /// Whether the uid came from the `.json` or was derived.
    pub uid_source: UidSource,
    /// The WebDataset key (path up to the first dot of the file name, directories included).
    pub key: String,
    /// The shard's name (see [`crate::shard_name`]).
    pub shard: Arc<str>,
    /// All members, in tar order.
    pub members: Vec<Member>,
    /// Where each member's data starts in the shard file, aligned with `members`, when the shard is an
    /// uncompressed tar read from a file ([`crate::ShardReader::open`]); empty otherwise (a compressed shard, a
    /// stream, a built sample). With it a member can be read again in place ([`Sample::image_at`]).
    #[serde(default)]
    pub member_at: Vec<u64>,
    /// Index into `members` of the image, if any.
    pub image_member: Option<usize>,
    /// The image's format, if there is an image.
    pub image_format: Option<ImageFormat>,
    /// What the image's header says (dimensions, colour components, progressive), when it could be read
    /// without decoding.
    pub image_info: Option<ImageInfo>,
    /// The caption (`.txt`, UTF-8).
    pub caption: Option<String>,
    /// The parsed `.json` member.
    pub json: Option<serde_json::Map<String, serde_json::Value>>,
    /// The class label (`.cls`, an integer).
    pub label: Option<i64>,
}

impl Sample {
    /// The image bytes, if the sample has an image.
    pub fn image(&self) -> Option<&[u8]> {
        self.image_member.and_then(|i| self.members.get(i)).map(|m| m.data.as_slice())
    }

    /// Where the image's bytes lie in the shard file: (offset, length), when known (see [`Sample::member_at`]).
    pub fn image_at(&self) -> Option<(u64, usize)> {
        self.member_span(self.image_member?)
    }

    /// Where the caption's bytes (the first `.txt` member) lie in the shard file, when known.
    pub fn caption_at(&self) -> Option<(u64, usize)> {
        self.member_span(self.members.iter().position(|m| m.ext == "txt")?)
    }

    fn member_span(&self, i: usize) -> Option<(u64, usize)> {
        Some((*self.member_at.get(i)?, self.members.get(i)?.data.len()))
    }

    /// The image member's extension (`jpg`, `jpeg`, `png`, `webp`).
    pub fn image_ext(&self) -> Option<&str> {
        self.image_member.and_then(|i| self.members.get(i)).map(|m| m.ext.as_str())
    }

    /// The image's size before any resize: img2dataset's `original_width`/`original_height` from the `.json`
    /// when present, else the size in the image header.
    pub fn original_size(&self) -> Option<(u64, u64)> {
        let from_json = self.json.as_ref().and_then(|j| {
            let w = j.get("original_width")?.as_u64()?;
            let h = j.get("original_height")?.as_u64()?;
            Some((w, h))
        });
        from_json.or_else(|| self.image_info.as_ref().map(|i| (i.width as u64, i.height as u64)))
    }

    /// Total bytes over all members.
    pub fn bytes(&self) -> u64 {
        self.members.iter().map(|m| m.data.len() as u64).sum()
    }
}

/// Why a sample (or a stretch of a shard) was rejected. [`RejectReason::name`] is the stable snake_case name used
/// in stats files and `--json` output.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectReason {
    /// The tar (or its gzip stream) ends in the middle of a header or a member: the sample being read is lost.
    TruncatedTar,
    /// A tar header is corrupt (bad checksum or numeric field), so the rest of the shard cannot be read.
    CorruptTar,
    /// The key reappears after other keys with members the first group did not have: the sample's members are
    /// not adjacent (WebDataset requires adjacency).
    NonAdjacentMembers,
    /// The key reappears after other keys with the same members again: a duplicated sample.
    DuplicateKey,
    /// The same member name appears twice in a row within one sample.
    DuplicateMember,
    /// The sample's uid was already accepted (from this shard or an earlier one).
    DuplicateUid,
    /// No image member (`jpg`, `jpeg`, `png`, `webp`).
    MissingImage,
    /// No caption member (`txt`).
    MissingCaption,
    /// No label member (`cls`) where labels are required.
    MissingLabel,
    /// The first or last sample of a shard misses its image or caption: most likely a sample split across
    /// two shards (see the reader's docs).
    IncompleteAtShardBoundary,
    /// A member has zero bytes.
    EmptyMember,
    /// A member is larger than the configured cap.
    OversizedMember,
    /// The `.json` member is not a JSON object.
    BadJson,
    /// The `.json` member's `"uid"` is not 32 hex characters.
    BadUid,
    /// The caption is not valid UTF-8, or only whitespace.
    BadCaption,
    /// The `.cls` member is not an integer.
    BadLabel,
    /// A tar entry that cannot belong to a sample: no extension, a `__meta__` file, a link or a device.
    NotASampleMember,
    /// The image cannot be decoded (produced by the decode stage, not by the tar reader).
    UnreadableImage,
}

impl RejectReason {
    /// Every reason, in declaration order.
    pub const ALL: [RejectReason; 18] = [
        RejectReason::TruncatedTar,
        RejectReason::CorruptTar,
        RejectReason::NonAdjacentMembers,
        RejectReason::DuplicateKey,
        RejectReason::DuplicateMember,
        RejectReason::DuplicateUid,
        RejectReason::MissingImage,
        RejectReason::MissingCaption,
        RejectReason::MissingLabel,
        RejectReason::IncompleteAtShardBoundary,
        RejectReason::EmptyMember,
        RejectReason::OversizedMember,
        RejectReason::BadJson,
        RejectReason::BadUid,
        RejectReason::BadCaption,
        RejectReason::BadLabel,
        RejectReason::NotASampleMember,
        RejectReason::UnreadableImage,
    ];

    /// The stable snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            RejectReason::TruncatedTar => "truncated_tar",
            RejectReason::CorruptTar => "corrupt_tar",
            RejectReason::NonAdjacentMembers => "non_adjacent_members",
            RejectReason::DuplicateKey => "duplicate_key",
            RejectReason::DuplicateMember => "duplicate_member",
            RejectReason::DuplicateUid => "duplicate_uid",
            RejectReason::MissingImage => "missing_image",
            RejectReason::MissingCaption => "missing_caption",
            RejectReason::MissingLabel => "missing_label",
            RejectReason::IncompleteAtShardBoundary => "incomplete_at_shard_boundary",
            RejectReason::EmptyMember => "empty_member",
            RejectReason::OversizedMember => "oversized_member",
            RejectReason::BadJson => "bad_json",
            RejectReason::BadUid => "bad_uid",
            RejectReason::BadCaption => "bad_caption",
            RejectReason::BadLabel => "bad_label",
            RejectReason::NotASampleMember => "not_a_sample_member",
            RejectReason::UnreadableImage => "unreadable_image",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A sample (or a broken stretch of a shard) that was not accepted, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// The shard's name.
    pub shard: Arc<str>,
    /// The sample's key (the member name for [`RejectReason::NotASampleMember`]; empty when a shard breaks
    /// before any sample starts).
    pub key: String,
    /// Why.
    pub reason: RejectReason,
    /// Details for a person: which member, which field, what the bytes looked like.
    pub detail: String,
    /// How many tar members this reject accounts for.
    pub members: u64,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: key {:?}: {}", self.shard, self.key, self.reason)?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

/// Counts for one shard (or a total over shards). Every tar member is in exactly one accepted or rejected
/// sample: `members == accepted_members + rejected_members` and `samples == accepted + rejected`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStats {
    /// Tar file entries (regular files, directories, links, devices, other types; not tar-internal headers).
    pub members: u64,
    /// Samples (groups of members) seen: `accepted + rejected`.
    pub samples: u64,
    /// Accepted samples.
    pub accepted: u64,
    /// Rejected samples.
    pub rejected: u64,
    /// Members in accepted samples.
    pub accepted_members: u64,
    /// Members in rejected samples.
    pub rejected_members: u64,
    /// Rejects by [`RejectReason::name`].
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Bytes of member data read.
    pub bytes: u64,
}

impl ShardStats {
    /// Counts an accepted sample.
    pub fn count_accepted(&mut self, sample: &Sample) {
        self.samples += 1;
        self.accepted += 1;
        self.accepted_members += sample.members.len() as u64;
    }

    /// Counts a rejected sample.
    pub fn count_rejected(&mut self, rejected: &Rejected) {
        self.samples += 1;
        self.rejected += 1;
        self.rejected_members += rejected.members;
        *self.rejected_by_reason.entry(rejected.reason.name().to_string()).or_default() += 1;
    }

    /// Moves a sample counted as accepted to rejected (used when a later stage, such as uid deduplication,
    /// rejects it).
    /// `members` is the sample's member count.
    pub fn reclassify(&mut self, members: u64, reason: RejectReason) {
        self.accepted -= 1;
        self.accepted_members -= members;
        self.rejected += 1;
        self.rejected_members += members;
        *self.rejected_by_reason.entry(reason.name().to_string()).or_default() += 1;
    }

    /// Adds another shard's counts to these.
    pub fn add(&mut self, other: &ShardStats) {
        self.members += other.members;
        self.samples += other.samples;
        self.accepted += other.accepted;
        self.rejected += other.rejected;
        self.accepted_members += other.accepted_members;
        self.rejected_members += other.rejected_members;
        self.bytes += other.bytes;
        for (k, v) in &other.rejected_by_reason {
            *self.rejected_by_reason.entry(k.clone()).or_default() += v;
        }
    }

    /// Whether the counts reconcile: every member in exactly one sample, every sample accepted or rejected, and
    /// the per-reason counts summing to the rejects.
    pub fn reconciles(&self) -> bool {
        self.members == self.accepted_members + self.rejected_members
            && self.samples == self.accepted + self.rejected
            && self.rejected == self.rejected_by_reason.values().sum::<u64>()
    }
}
