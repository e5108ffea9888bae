//! Writing WebDataset shards: `{:08d}.tar` files of N samples each, each published by an atomic rename, plus a
//! `meta.json`.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::tar::TarWriter;
use crate::sample::{Member, Sample, UidSource};
use crate::{Error, Result, Uid};

/// One written shard.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WrittenShard {
    /// File name (`00000000.tar`).
    pub name: String,
    /// Samples in it.
    pub samples: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

/// What a [`ShardWriter`] wrote; also the content of `meta.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WriterSummary {
    /// Number of shards (DataComp's resharder field, read by DataComp and FLYT trainers).
    pub output_shard_count: u64,
    /// The shard name pattern (`{:08d}.tar`).
    pub output_shard_format: String,
    /// Samples written over all shards.
    pub samples: u64,
    /// Samples per shard (the last may have fewer).
    pub shard_size: u64,
    /// The shards, in order.
    pub shards: Vec<WrittenShard>,
}

/// Writes samples into numbered shards of `shard_size` samples. Each shard is written as `.NNNNNNNN.tar.tmp`
/// and renamed to `NNNNNNNN.tar` once complete, so a watcher never sees a partial shard; [`ShardWriter::finish`]
/// writes `meta.json` the same way.
pub struct ShardWriter {
    dir: PathBuf,
    shard_size: u64,
    current: Option<(TarWriter<BufWriter<File>>, PathBuf, PathBuf, u64)>,
    shards: Vec<WrittenShard>,
    next_index: u64,
    stats_files: bool,
}

impl ShardWriter {
    /// A writer into `dir` (created if missing).
    pub fn new(dir: impl AsRef<Path>, shard_size: u64) -> Result<Self> {
        if shard_size == 0 {
            return Err(Error::Config("shard size must be at least 1".into()));
        }
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(ShardWriter { dir, shard_size, current: None, shards: Vec::new(), next_index: 0, stats_files: false })
    }

    /// Also writes, after each shard is renamed into place, its `{:08d}_stats.json` = `{"successes": N}` as
    /// DataComp's resharder does (the completion marker `--arrival marker` and DataComp's tools read).
    pub fn with_stats_files(mut self) -> Self {
        self.stats_files = true;
        self
    }

    /// Writes a sample under its own key.
    pub fn write(&mut self, sample: &Sample) -> Result<()> {
        self.write_members(&sample.key, &sample.members)
    }

    /// Writes members under `key` (`<key>.<ext>` each) as one sample.
    pub fn write_members(&mut self, key: &str, members: &[Member]) -> Result<()> {
        self.append(key, members.iter().map(|m| (m.ext.as_str(), m.data.as_slice())), true)
    }

    /// Writes `(ext, bytes)` members under `key` as one sample.
    pub fn write_parts<'a>(&mut self, key: &str, parts: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Result<()> {
        self.append(key, parts, true)
    }

    /// Appends members to the current shard without counting a sample (fault injection in generators).
    pub(crate) fn write_uncounted(&mut self, key: &str, members: &[Member]) -> Result<()> {
        self.append(key, members.iter().map(|m| (m.ext.as_str(), m.data.as_slice())), false)
    }

    fn append<'a>(
        &mut self,
        key: &str,
        parts: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        counted: bool,
    ) -> Result<()> {
        if self.current.is_none() {
            let name = format!("{:08}.tar", self.next_index);
            let tmp = temp_path(&self.dir.join(&name));
            let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
            self.current = Some((TarWriter::new(BufWriter::with_capacity(1 << 20, file)), tmp, self.dir.join(name), 0));
            self.next_index += 1;
        }
        let (w, tmp, _, count) = self.current.as_mut().expect("opened above");
        for (ext, data) in parts {
            w.append(&format!("{key}.{ext}"), data).map_err(|e| Error::io(tmp.clone(), e))?;
        }
        if counted {
            *count += 1;
        }
        if *count >= self.shard_size {
            self.close_current()?;
        }
        Ok(())
    }

    fn close_current(&mut self) -> Result<()> {
        let Some((w, tmp, dest, count)) = self.current.take() else { return Ok(()) };
        let bytes = w.bytes_written();
        let buf = w.finish().map_err(|e| Error::io(&tmp, e))?;
        let file = buf.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if self.stats_files {
            let stem = name.strip_suffix(".tar").unwrap_or(&name);
            write_atomic(
                &self.dir.join(format!("{stem}_stats.json")),
                format!("{{\"successes\": {count}}}").as_bytes(),
            )?;
        }
        self.shards.push(WrittenShard { name, samples: count, bytes });
        Ok(())
    }

    /// Closes the last shard and writes `meta.json`.
    pub fn finish(mut self) -> Result<WriterSummary> {
        self.close_current()?;
        let summary = WriterSummary {
            output_shard_count: self.shards.len() as u64,
            output_shard_format: "{:08d}.tar".to_string(),
            samples: self.shards.iter().map(|s| s.samples).sum(),
            shard_size: self.shard_size,
            shards: std::mem::take(&mut self.shards),
        };
        let json = serde_json::to_vec_pretty(&summary).map_err(|e| Error::Config(e.to_string()))?;
        write_atomic(&self.dir.join("meta.json"), &json)?;
        Ok(summary)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let written = (|| {
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// A temporary name beside `path` that no other process or thread uses: `.<name>.<pid>.<n>.tmp` (hidden, and
/// ending in `.tmp`, so directory watchers skip it). Two runs writing the same file never share a temporary.
///
/// ```
/// let p = std::path::Path::new("/out/subset.npy");
/// let (a, b) = (flyt::temp_path(p), flyt::temp_path(p));
/// assert_ne!(a, b);
/// assert!(a.file_name().unwrap().to_string_lossy().starts_with(".subset.npy."));
/// ```
pub fn temp_path(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// Builds a [`Sample`] by hand (tests, generators, examples). Members are kept in the order added; the uid is
/// taken from `.json`'s `"uid"` when set with [`SampleBuilder::uid`], else derived from (shard, key).
///
/// ```
/// let s = flyt::SampleBuilder::new("000000000001").shard("00000000").image("png", vec![1, 2]).caption("x").build();
/// assert_eq!(s.image(), Some(&[1u8, 2][..]));
/// assert_eq!(s.uid, flyt::Uid::derive("00000000", "000000000001"));
/// ```
#[derive(Clone, Debug)]
pub struct SampleBuilder {
    key: String,
    shard: String,
    members: Vec<Member>,
    uid: Option<Uid>,
    json: Option<serde_json::Map<String, serde_json::Value>>,
    caption: Option<String>,
    label: Option<i64>,
    image: Option<usize>,
}

impl SampleBuilder {
    /// A sample with this key.
    pub fn new(key: impl Into<String>) -> Self {
        SampleBuilder {
            key: key.into(),
            shard: String::new(),
            members: Vec::new(),
            uid: None,
            json: None,
            caption: None,
            label: None,
            image: None,
        }
    }
    /// The shard name used for a derived uid.
    pub fn shard(mut self, shard: impl Into<String>) -> Self {
        self.shard = shard.into();
        self
    }
    /// Adds the image member.
    pub fn image(mut self, ext: &str, data: Vec<u8>) -> Self {
        self.image = Some(self.members.len());
        self.members.push(Member { ext: ext.to_ascii_lowercase(), data });
        self
    }
    /// Adds the caption (`txt`).
    pub fn caption(mut self, text: impl Into<String>) -> Self {
        let text = text.into();
        self.members.push(Member { ext: "txt".into(), data: text.clone().into_bytes() });
        self.caption = Some(text);
        self
    }
    /// Sets the uid; it is written into the `.json` member.
    pub fn uid(mut self, uid: Uid) -> Self {
        self.uid = Some(uid);
        self
    }
    /// Sets `.json` fields (the uid, when set, is added as `"uid"`). The member is added at `build`.
    pub fn json(mut self, map: serde_json::Map<String, serde_json::Value>) -> Self {
        self.json = Some(map);
        self
    }
    /// Adds the label (`cls`).
    pub fn label(mut self, label: i64) -> Self {
        self.members.push(Member { ext: "cls".into(), data: label.to_string().into_bytes() });
        self.label = Some(label);
        self
    }
    /// Adds any other member.
    pub fn member(mut self, ext: &str, data: Vec<u8>) -> Self {
        self.members.push(Member { ext: ext.to_ascii_lowercase(), data });
        self
    }
    /// The sample.
    pub fn build(mut self) -> Sample {
        if self.json.is_some() || self.uid.is_some() {
            let mut map = self.json.take().unwrap_or_default();
            if let Some(uid) = self.uid {
                map.insert("uid".into(), serde_json::Value::String(uid.to_string()));
            }
            let data = serde_json::to_vec(&map).unwrap_or_default();
            self.members.push(Member { ext: "json".into(), data });
            self.json = Some(map);
        }
        let (uid, uid_source) = match self.uid {
            Some(u) => (u, UidSource::Json),
            None => (Uid::derive(&self.shard, &self.key), UidSource::Derived),
        };
        let image_format = self.image.and_then(|i| crate::ImageFormat::from_ext(&self.members[i].ext));
        let image_info = self.image.and_then(|i| crate::sniff_image(&self.members[i].data));
        Sample {
            uid,
            uid_source,
            key: self.key,
            shard: self.shard.into(),
            members: self.members,
            member_at: Vec::new(),
            image_member: self.image,
            image_format,
            image_info,
            caption: self.caption,
            json: self.json,
            label: self.label,
        }
    }
}
