//! The streaming WebDataset shard reader.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::read::MultiGzDecoder;

use super::tar::{EntryKind, TarError, TarReader};
use crate::image_info::sniff_image;
use crate::sample::{ImageFormat, Member, RejectReason, Rejected, Sample, ShardStats, UidSource};
use crate::{Error, Result, Uid};

/// What the reader requires of a sample and how large a member may be.
///
/// ```
/// let config = flyt::ReaderConfig::default().require_caption(false).require_label(true);
/// assert_eq!(config.max_member_bytes(), 64 << 20);
/// ```
#[derive(Clone, Debug)]
pub struct ReaderConfig {
    max_member_bytes: u64,
    require_image: bool,
    require_caption: bool,
    require_label: bool,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig { max_member_bytes: 64 << 20, require_image: true, require_caption: true, require_label: false }
    }
}

impl ReaderConfig {
    /// Members larger than this are rejected without being read into memory (default 64 MiB).
    pub fn max_member_bytes(&self) -> u64 {
        self.max_member_bytes
    }
    /// Sets the member size cap.
    pub fn with_max_member_bytes(mut self, bytes: u64) -> Self {
        self.max_member_bytes = bytes;
        self
    }
    /// Whether a sample without an image is rejected (default true).
    pub fn require_image(mut self, yes: bool) -> Self {
        self.require_image = yes;
        self
    }
    /// Whether a sample without a caption is rejected (default true; false for labelled sets).
    pub fn require_caption(mut self, yes: bool) -> Self {
        self.require_caption = yes;
        self
    }
    /// Whether a sample without a `.cls` label is rejected (default false).
    pub fn require_label(mut self, yes: bool) -> Self {
        self.require_label = yes;
        self
    }
}

/// One record of a shard: an accepted sample or a reject.
#[derive(Clone, Debug)]
pub enum Record {
    /// An accepted sample.
    Sample(Box<Sample>),
    /// A rejected sample.
    Rejected(Rejected),
}

/// A shard's name: its file name without directory and without `.tar`, `.tar.gz`, `.tgz` (`.../00000012.tar`
/// → `00000012`). It names the shard in rejects and stats and seeds derived uids ([`Uid::derive`]).
pub fn shard_name(path: &Path) -> String {
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    for ext in [".tar.gz", ".tgz", ".tar"] {
        if let Some(stem) = file.strip_suffix(ext) {
            return stem.to_string();
        }
    }
    file
}

struct Group {
    key: String,
    members: Vec<Member>,
    /// Where each kept member's data starts in the shard file (only when the file is read uncompressed).
    at: Vec<u64>,
    /// Members counted for this group whose data was not kept (oversized, or the one cut by truncation).
    dropped_members: u64,
    problem: Option<(RejectReason, String)>,
    reappeared_exts: Option<String>,
}

impl Group {
    fn new(key: String) -> Self {
        Group { key, members: Vec::new(), at: Vec::new(), dropped_members: 0, problem: None, reappeared_exts: None }
    }
    fn member_count(&self) -> u64 {
        self.members.len() as u64 + self.dropped_members
    }
    fn flag(&mut self, reason: RejectReason, detail: String) {
        if self.problem.is_none() {
            self.problem = Some((reason, detail));
        }
    }
    fn ext_signature(&self) -> String {
        let mut exts: Vec<&str> = self.members.iter().map(|m| m.ext.as_str()).collect();
        exts.sort_unstable();
        exts.join(",")
    }
}

/// Splits a member name into (key, extension) by the WebDataset rule: the key is the path up to the first dot
/// of the file name, the extension (lower-cased) is the rest. `None` when the file name has no dot or nothing
/// before it, and for top-level `__name__` metadata files, which WebDataset skips.
pub fn split_member_name(name: &str) -> Option<(&str, String)> {
    let base_start = name.rfind('/').map(|i| i + 1).unwrap_or(0);
    let base = &name[base_start..];
    if base_start == 0 && base.starts_with("__") && base.split('.').next().is_some_and(|s| s.ends_with("__")) {
        return None;
    }
    let dot = base.find('.')?;
    if dot == 0 || dot + 1 == base.len() {
        return None;
    }
    Some((&name[..base_start + dot], base[dot + 1..].to_ascii_lowercase()))
}

/// Why a member name cannot name a sample's member safely: an absolute path, a `..` component or a NUL byte
/// (a key made of it would point outside any directory a consumer writes samples into).
fn unsafe_member_name(name: &str) -> Option<&'static str> {
    if name.contains('\0') {
        Some("contains a NUL byte")
    } else if name.starts_with('/') {
        Some("is an absolute path")
    } else if name.split('/').any(|c| c == "..") {
        Some("has a '..' component")
    } else {
        None
    }
}

/// A streaming reader over one WebDataset shard (`.tar`, or gzip-compressed `.tar.gz` / `.tgz`, detected by its
/// magic bytes). It yields one [`Record`] per sample, holding at most one sample in memory.
///
/// Grouping follows WebDataset: members whose names share a key and are adjacent form a sample. Damage is
/// reported as data:
/// - a truncated or corrupt tar keeps every sample before the break and yields one reject for the sample being
///   read when it broke (key empty if none had started);
/// - a key that comes back after other keys is rejected ([`RejectReason::NonAdjacentMembers`], or
///   [`RejectReason::DuplicateKey`] when it repeats the same members); the earlier group was judged on its
///   own when it ended, so the reader stays streaming;
/// - empty members, members over the size cap, bad JSON or uids, non-UTF-8 captions and entries that cannot
///   belong to a sample are rejected with their reason, and a uid seen earlier in the shard is a
///   [`RejectReason::DuplicateUid`].
///
/// **Samples split across shards.** Some pools (LAION-400M) have a sample whose first members end one shard
/// and whose last members start the next. flyt reads shards independently (any order, any worker), so it
/// never stitches across shards: each fragment is judged on its own. A fragment that lacks its image or
/// caption and is the first or last group of its shard is rejected as
/// [`RejectReason::IncompleteAtShardBoundary`]; a fragment that is complete by itself (say jpg + txt, with the
/// json in the next shard) is accepted with a derived uid, and the orphan json is rejected. No reader error is
/// raised and nothing is dropped uncounted.
///
/// ```
/// # fn main() -> flyt::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let mut writer = flyt::ShardWriter::new(dir.path(), 100)?;
/// writer.write(&flyt::SampleBuilder::new("k0").image("jpg", vec![0xFF, 0xD8]).caption("a cat").build())?;
/// writer.finish()?;
/// let mut reader = flyt::ShardReader::open(dir.path().join("00000000.tar"), flyt::ReaderConfig::default())?;
/// let records: Vec<flyt::Record> = reader.by_ref().collect::<flyt::Result<_>>()?;
/// assert_eq!(records.len(), 1);
/// assert!(reader.stats().reconciles());
/// # Ok(()) }
/// ```
pub struct ShardReader {
    path: PathBuf,
    shard: Arc<str>,
    config: ReaderConfig,
    tar: TarReader<Box<dyn Read + Send>>,
    current: Option<Group>,
    /// Key of each finished group and its sorted member extensions.
    seen_keys: HashMap<String, String>,
    seen_uids: HashSet<Uid>,
    groups_finished: u64,
    /// The member extensions of the last accepted sample (what a whole sample of this shard has).
    last_accepted: Option<String>,
    stats: ShardStats,
    out: std::collections::VecDeque<Record>,
    finished: bool,
    /// Whether positions in the stream are positions in the shard file (an uncompressed tar opened by path),
    /// so samples carry where their members lie ([`Sample::member_at`]).
    in_file: bool,
}

impl ShardReader {
    /// Opens a shard file.
    pub fn open(path: impl AsRef<Path>, config: ReaderConfig) -> Result<Self> {
        let path = path.as_ref();
        let file = crate::open_regular(path)?;
        let mut buf = BufReader::with_capacity(1 << 20, file);
        let gz = {
            use std::io::BufRead;
            let head = buf.fill_buf().map_err(|e| Error::io(path, e))?;
            head.starts_with(&[0x1f, 0x8b])
        };
        let inner: Box<dyn Read + Send> =
            if gz { Box::new(BufReader::with_capacity(1 << 20, MultiGzDecoder::new(buf))) } else { Box::new(buf) };
        let mut reader = Self::from_reader(inner, path, &shard_name(path), config);
        reader.in_file = !gz;
        Ok(reader)
    }

    /// Reads a shard from any byte stream (uncompressed tar), naming it `shard`.
    pub fn from_reader(r: Box<dyn Read + Send>, path: &Path, shard: &str, config: ReaderConfig) -> Self {
        ShardReader {
            path: path.to_path_buf(),
            shard: Arc::from(shard),
            config,
            tar: TarReader::new(r),
            current: None,
            seen_keys: HashMap::new(),
            seen_uids: HashSet::new(),
            groups_finished: 0,
            last_accepted: None,
            stats: ShardStats::default(),
            out: Default::default(),
            finished: false,
            in_file: false,
        }
    }

    /// The shard's name.
    pub fn shard(&self) -> &Arc<str> {
        &self.shard
    }

    /// The shard's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counts so far; final once the iterator has returned `None`.
    pub fn stats(&self) -> &ShardStats {
        &self.stats
    }

    fn reject(&mut self, key: String, reason: RejectReason, detail: String, members: u64) {
        let r = Rejected { shard: self.shard.clone(), key, reason, detail, members };
        self.stats.count_rejected(&r);
        self.out.push_back(Record::Rejected(r));
    }

    /// Reads entries until at least one record is ready or the shard ends.
    fn pump(&mut self) -> Result<()> {
        while self.out.is_empty() && !self.finished {
            if crate::stop_requested() {
                return Err(crate::interrupted(&self.path));
            }
            match self.tar.next_entry() {
                Ok(Some(entry)) => self.on_entry(entry)?,
                Ok(None) => {
                    self.finish_group(true);
                    self.finished = true;
                }
                Err(e) => self.on_damage(e, false)?,
            }
        }
        Ok(())
    }

    /// Ends the shard at damage `e`; `inside_member` says whether a member header was read whose data was cut.
    fn on_damage(&mut self, e: TarError, inside_member: bool) -> Result<()> {
        let (reason, detail) = match e {
            TarError::Truncated(d) => (RejectReason::TruncatedTar, d),
            TarError::Corrupt(d) => (RejectReason::CorruptTar, d),
            TarError::Io(e) => return Err(Error::io(&self.path, e)),
        };
        self.finished = true;
        let extra = u64::from(inside_member);
        let whole = self.current.as_ref().is_some_and(|g| Some(g.ext_signature()) == self.last_accepted);
        if !inside_member && reason == RejectReason::TruncatedTar && whole {
            // The stream ends between two samples: the sample being read has every member the shard's samples
            // have, each arrived whole, so it is kept (judged as the shard's last sample) and the cut is
            // recorded on its own. A sample with fewer members may have lost the rest to the cut: rejected.
            self.finish_group(true);
            self.reject(String::new(), reason, detail, 0);
            return Ok(());
        }
        match self.current.take() {
            Some(g) => {
                let members = g.member_count() + extra;
                self.reject(g.key, reason, detail, members);
            }
            None => self.reject(String::new(), reason, detail, extra),
        }
        Ok(())
    }

    fn on_entry(&mut self, entry: super::tar::Entry) -> Result<()> {
        self.stats.members += 1;
        if entry.kind == EntryKind::Directory {
            // A directory is a member (as `tarfile` lists it) that belongs to no sample.
            let name = String::from_utf8_lossy(&entry.name).into_owned();
            self.reject(name, RejectReason::NotASampleMember, "a directory entry".into(), 1);
            return Ok(());
        }
        let name = match String::from_utf8(entry.name) {
            Ok(n) => n,
            Err(e) => {
                let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
                if let Err(e) = self.tar.skip_data(entry.size) {
                    return self.on_damage(e, true);
                }
                self.reject(lossy, RejectReason::NotASampleMember, "member name is not UTF-8".into(), 1);
                return Ok(());
            }
        };
        let unsafe_name = unsafe_member_name(&name);
        let split = split_member_name(&name).map(|(k, e)| (k.to_string(), e));
        let (key, ext) = match (entry.kind, split, unsafe_name) {
            (EntryKind::File, Some(ke), None) => ke,
            (kind, _, why) => {
                let detail = match (kind, why) {
                    (_, Some(why)) => format!("member name {why}"),
                    (EntryKind::Special(t), _) => format!("tar entry type {:?} (link, device or FIFO)", t as char),
                    (EntryKind::Skipped(t), _) => format!(
                        "tar entry type {:?} ({}): its {} data bytes were skipped",
                        t as char,
                        match t {
                            b'S' => "GNU sparse file",
                            b'M' => "multi-volume continuation",
                            b'V' => "volume label",
                            b'D' => "GNU dump directory",
                            _ => "unknown type",
                        },
                        entry.size
                    ),
                    _ => "no extension after the key, or a __meta__ file".to_string(),
                };
                if let Err(e) = self.tar.skip_data(entry.size) {
                    return self.on_damage(e, true);
                }
                self.reject(name, RejectReason::NotASampleMember, detail, 1);
                return Ok(());
            }
        };
        if self.current.as_ref().is_none_or(|g| g.key != key) {
            self.finish_group(false);
            let mut g = Group::new(key.clone());
            if let Some(exts) = self.seen_keys.get(&key) {
                g.reappeared_exts = Some(exts.clone());
            }
            self.current = Some(g);
        }
        let too_big = entry.size > self.config.max_member_bytes;
        let at = self.tar.position();
        let result = if too_big {
            self.tar.skip_data(entry.size).map(|_| None)
        } else {
            self.tar.read_data(entry.size).map(Some)
        };
        let data = match result {
            Ok(d) => d,
            Err(e) => return self.on_damage(e, true),
        };
        self.stats.bytes += entry.size;
        let max = self.config.max_member_bytes;
        let g = self.current.as_mut().expect("a group was started above");
        if g.members.iter().any(|m| m.ext == ext) {
            g.flag(RejectReason::DuplicateMember, format!("member {name:?} appears twice"));
        }
        match data {
            None => {
                g.dropped_members += 1;
                g.flag(RejectReason::OversizedMember, format!("member {name:?} has {} bytes, cap {max}", entry.size));
            }
            Some(data) => {
                if data.is_empty() {
                    g.flag(RejectReason::EmptyMember, format!("member {name:?} is empty"));
                }
                g.members.push(Member { ext, data });
                g.at.push(at);
            }
        }
        Ok(())
    }

    /// Judges the group being read and emits its record.
    fn finish_group(&mut self, at_end: bool) {
        let Some(g) = self.current.take() else { return };
        let first = self.groups_finished == 0;
        self.groups_finished += 1;
        let sig = g.ext_signature();
        if g.reappeared_exts.is_none() {
            self.seen_keys.insert(g.key.clone(), sig.clone());
        }
        let members = g.member_count();
        match self.judge(g, first || at_end, &sig) {
            Ok(sample) => {
                self.last_accepted = Some(sig);
                self.stats.count_accepted(&sample);
                self.out.push_back(Record::Sample(Box::new(sample)));
            }
            Err((key, reason, detail)) => self.reject(key, reason, detail, members),
        }
    }

    fn judge(&mut self, g: Group, at_boundary: bool, sig: &str) -> Result<Sample, (String, RejectReason, String)> {
        let key = g.key;
        let fail = |reason: RejectReason, detail: String| Err((key.clone(), reason, detail));
        if let Some(before) = &g.reappeared_exts {
            return if before == sig {
                fail(RejectReason::DuplicateKey, format!("key seen earlier in the shard with the same members ({sig})"))
            } else {
                fail(
                    RejectReason::NonAdjacentMembers,
                    format!("key seen earlier in the shard with members ({before}); now ({sig}) after other keys"),
                )
            };
        }
        if let Some((reason, detail)) = g.problem {
            return fail(reason, detail);
        }
        let mut image_member = None;
        let mut caption_member = None;
        let mut json_member = None;
        let mut label_member = None;
        for (i, m) in g.members.iter().enumerate() {
            match m.ext.as_str() {
                e if ImageFormat::from_ext(e).is_some() && image_member.is_none() => image_member = Some(i),
                "txt" if caption_member.is_none() => caption_member = Some(i),
                "json" if json_member.is_none() => json_member = Some(i),
                "cls" | "label" if label_member.is_none() => label_member = Some(i),
                _ => {}
            }
        }
        let mut json = None;
        let mut uid = None;
        if let Some(i) = json_member {
            match serde_json::from_slice::<serde_json::Value>(&g.members[i].data) {
                Ok(serde_json::Value::Object(map)) => {
                    match map.get("uid") {
                        None | Some(serde_json::Value::Null) => {}
                        Some(serde_json::Value::String(s)) => match Uid::parse_hex(s) {
                            Ok(u) => uid = Some(u),
                            Err(e) => return fail(RejectReason::BadUid, format!("json \"uid\" {s:?}: {e}")),
                        },
                        Some(other) => {
                            return fail(RejectReason::BadUid, format!("json \"uid\" is not a string: {other}"));
                        }
                    }
                    json = Some(map);
                }
                Ok(other) => {
                    let kind = match other {
                        serde_json::Value::Array(_) => "an array",
                        serde_json::Value::String(_) => "a string",
                        serde_json::Value::Number(_) => "a number",
                        _ => "not an object",
                    };
                    return fail(RejectReason::BadJson, format!("json member is {kind}, not an object"));
                }
                Err(e) => return fail(RejectReason::BadJson, format!("json member: {e}")),
            }
        }
        let caption = match caption_member {
            Some(i) => match std::str::from_utf8(&g.members[i].data) {
                Ok(s) if s.trim().is_empty() => {
                    return fail(RejectReason::BadCaption, "caption is only whitespace".into());
                }
                Ok(s) => Some(s.to_string()),
                Err(e) => return fail(RejectReason::BadCaption, format!("caption is not UTF-8: {e}")),
            },
            None => None,
        };
        let label = match label_member {
            Some(i) => match std::str::from_utf8(&g.members[i].data).ok().and_then(|s| s.trim().parse::<i64>().ok()) {
                Some(l) => Some(l),
                None => {
                    let shown =
                        String::from_utf8_lossy(&g.members[i].data[..g.members[i].data.len().min(40)]).into_owned();
                    return fail(RejectReason::BadLabel, format!("label {shown:?} is not an integer"));
                }
            },
            None => None,
        };
        let missing = if self.config.require_image && image_member.is_none() {
            Some((RejectReason::MissingImage, "no jpg/jpeg/png/webp member"))
        } else if self.config.require_caption && caption.is_none() {
            Some((RejectReason::MissingCaption, "no txt member"))
        } else if self.config.require_label && label.is_none() {
            Some((RejectReason::MissingLabel, "no cls member"))
        } else {
            None
        };
        if let Some((reason, what)) = missing {
            if at_boundary && reason != RejectReason::MissingLabel {
                return fail(
                    RejectReason::IncompleteAtShardBoundary,
                    format!(
                        "{what}, and the sample is at the shard's start or end ({sig}): likely split across shards"
                    ),
                );
            }
            return fail(reason, format!("{what} (members: {sig})"));
        }
        let (uid, uid_source) = match uid {
            Some(u) => (u, UidSource::Json),
            None => (Uid::derive(&self.shard, &key), UidSource::Derived),
        };
        if !self.seen_uids.insert(uid) {
            return fail(RejectReason::DuplicateUid, format!("uid {uid} already seen in this shard"));
        }
        let image_format = image_member.and_then(|i| ImageFormat::from_ext(&g.members[i].ext));
        let image_info = image_member.and_then(|i| sniff_image(&g.members[i].data));
        Ok(Sample {
            uid,
            uid_source,
            key,
            shard: self.shard.clone(),
            members: g.members,
            member_at: if self.in_file { g.at } else { Vec::new() },
            image_member,
            image_format,
            image_info,
            caption,
            json,
            label,
        })
    }
}

impl Iterator for ShardReader {
    type Item = Result<Record>;
    fn next(&mut self) -> Option<Result<Record>> {
        if let Err(e) = self.pump() {
            self.finished = true;
            self.out.clear();
            return Some(Err(e));
        }
        self.out.pop_front().map(Ok)
    }
}
