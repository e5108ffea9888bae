//! Full mode's upstream pool: held in memory (each image decoded once), or streamed (each step's rows read in
//! place from the shard files and decoded ahead of the step, so memory does not grow with the pool). Both give
//! a step the same pixels, tokens and features.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tch::{Kind, Tensor};

use super::trainer::Augment;
use crate::clip::ClipTokenizer;
use crate::clip::preprocess;
use crate::rng::SplitMix64;
use crate::{Error, Result};

/// One step's upstream rows.
#[derive(Debug)]
pub struct FullRowsBatch {
    /// Each row's `crop²·3` bytes (HWC).
    pub images: Vec<Vec<u8>>,
    /// `B × L` caption token ids.
    pub ids: Tensor,
    /// `B × F` scoring features.
    pub features: Tensor,
}

/// What full mode's lookahead loop needs of the upstream pool.
pub trait FullRows {
    /// Rows in the pool.
    fn rows(&self) -> usize;
    /// The rows `idx`: their pixels (`crop × crop`; with `augment`, random resized crops of the images as read,
    /// drawn from `rng` in row order), caption tokens and features.
    fn batch(&self, idx: &[i64], augment: Option<&Augment>, crop: usize, rng: &mut SplitMix64)
    -> Result<FullRowsBatch>;
    /// The rows the next step will ask for, which a pool may start reading now.
    fn ahead(&self, _idx: &[i64], _augment: bool, _crop: usize) {}
}

/// The upstream pool in full mode, in memory: preprocessed images (`crop × crop × 3` bytes each, decoded
/// once), caption token ids (`P × L`), and the scoring model's features (`P × F`, e.g. the frozen CLIP's
/// [u; t]).
#[derive(Debug)]
pub struct FullPool {
    /// Preprocessed images, HWC bytes.
    pub images: Vec<Vec<u8>>,
    /// The images as read (encoded), aligned with `images`: with [`super::FlytConfig::augment`], each step
    /// crops these at random instead of using `images`.
    pub sources: Option<Vec<Vec<u8>>>,
    /// Caption token ids.
    pub ids: Tensor,
    /// Scoring features.
    pub features: Tensor,
}

/// Rows `idx` of `t`.
fn select(t: &Tensor, idx: &[i64]) -> Tensor {
    t.index_select(0, &Tensor::from_slice(idx).to_device(t.device()))
}

/// Each row's pixels: its preprocessed image, or with `augment` a random resized crop of the image as read
/// (the draws from `rng`, in row order).
pub(crate) fn pixels_in_memory(
    images: &[Vec<u8>],
    sources: Option<&Vec<Vec<u8>>>,
    idx: &[i64],
    augment: Option<&Augment>,
    crop: usize,
    rng: &mut SplitMix64,
) -> Vec<Vec<u8>> {
    idx.iter()
        .map(|&i| {
            let i = i as usize;
            match (augment, sources.and_then(|s| s.get(i))) {
                (Some(a), Some(bytes)) => match preprocess::decode_rgb(bytes) {
                    Ok(img) => preprocess::random_resized_crop(&img, crop, a.scale, a.ratio, rng),
                    Err(_) => images[i].clone(),
                },
                _ => images[i].clone(),
            }
        })
        .collect()
}

impl FullRows for FullPool {
    fn rows(&self) -> usize {
        self.images.len()
    }
    fn batch(
        &self,
        idx: &[i64],
        augment: Option<&Augment>,
        crop: usize,
        rng: &mut SplitMix64,
    ) -> Result<FullRowsBatch> {
        Ok(FullRowsBatch {
            images: pixels_in_memory(&self.images, self.sources.as_ref(), idx, augment, crop, rng),
            ids: select(&self.ids, idx),
            features: select(&self.features, idx),
        })
    }
}

/// Where one row of a streamed pool lies: its image's and caption's bytes in a shard file (an uncompressed
/// tar, so members can be read in place).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowAt {
    /// Index into the pool's files.
    pub file: u32,
    /// Length of the image's bytes.
    pub image_len: u32,
    /// Where the image's bytes start.
    pub image_at: u64,
    /// Where the caption's bytes start.
    pub caption_at: u64,
    /// Length of the caption's bytes (0: no caption, the empty text).
    pub caption_len: u32,
}

/// What a shard file was when it was indexed: a file that changed since cannot be read in place.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
}

fn stamp(path: &Path) -> Result<Stamp> {
    let m = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    Ok(Stamp { len: m.len(), modified: m.modified().ok() })
}

/// The scoring features of a streamed pool.
pub enum StreamedFeatures {
    /// Held in memory (`P × F`): M-FLYT's few score columns per row.
    InMemory(Tensor),
    /// `P` rows of `width` f32 in a file (the frozen CLIP's [u; t], written as the pool was indexed), read per
    /// step and cast to `kind`.
    OnDisk {
        /// The file.
        file: File,
        /// Values per row.
        width: usize,
        /// The dtype the rows are cast to.
        kind: Kind,
    },
}

impl std::fmt::Debug for StreamedFeatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamedFeatures::InMemory(t) => write!(f, "InMemory({:?})", t.size()),
            StreamedFeatures::OnDisk { width, kind, .. } => write!(f, "OnDisk {{ width: {width}, kind: {kind:?} }}"),
        }
    }
}

/// A read started ahead: (rows, decoded, crop), and the thread doing it.
type Pending = ((Vec<i64>, bool, usize), JoinHandle<Result<ReadRows>>);

/// What the reading threads share.
#[derive(Debug)]
struct Shards {
    files: Vec<(PathBuf, Stamp)>,
    rows: Vec<RowAt>,
    /// The on-disk features: (file, width).
    features: Option<(File, usize)>,
}

/// One batch as read from disk: each row's image (preprocessed, or as read when it is to be cropped at random),
/// caption and feature values.
struct ReadRows {
    images: Vec<Vec<u8>>,
    captions: Vec<String>,
    features: Vec<f32>,
}

/// A row as read: its image (preprocessed, or as read) and caption.
type Row = (Vec<u8>, String);

impl Shards {
    fn read_at(&self, file: &File, path: &Path, at: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, at).map_err(|e| Error::io(path, e))?;
        Ok(buf)
    }

    /// Reads (and, with `decode`, preprocesses) rows `idx` on up to `threads` threads.
    fn read(&self, idx: &[i64], decode: bool, crop: usize, threads: usize) -> Result<ReadRows> {
        let mut files: Vec<u32> = idx.iter().map(|&i| self.rows[i as usize].file).collect();
        files.sort_unstable();
        files.dedup();
        let mut open = std::collections::HashMap::new();
        for f in files {
            let (path, was) = &self.files[f as usize];
            if stamp(path)? != *was {
                return Err(Error::format(
                    path,
                    "shard",
                    "changed since the pool was indexed (size or modification time); --stream-pool reads its \
                     members in place: start the training again",
                ));
            }
            open.insert(f, File::open(path).map_err(|e| Error::io(path, e))?);
        }
        let one = |i: i64| -> Result<Row> {
            let r = self.rows[i as usize];
            let (path, _) = &self.files[r.file as usize];
            let file = &open[&r.file];
            let bytes = self.read_at(file, path, r.image_at, r.image_len as usize)?;
            let caption = self.read_at(file, path, r.caption_at, r.caption_len as usize)?;
            let caption = String::from_utf8(caption).map_err(|e| {
                Error::format(path, format!("caption at byte {}", r.caption_at), format!("not UTF-8: {e}"))
            })?;
            let image = if decode {
                preprocess::preprocess(&bytes, crop, crop).map_err(|e| {
                    Error::format(path, format!("image at byte {}", r.image_at), format!("cannot be decoded: {e}"))
                })?
            } else {
                bytes
            };
            Ok((image, caption))
        };
        let chunk = idx.len().div_ceil(threads.max(1)).max(1);
        let parts: Vec<Result<Vec<Row>>> = std::thread::scope(|s| {
            let handles: Vec<_> =
                idx.chunks(chunk).map(|c| s.spawn(move || c.iter().map(|&i| one(i)).collect())).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(Error::Config("a reader panicked".into()))))
                .collect()
        });
        let (mut images, mut captions) = (Vec::with_capacity(idx.len()), Vec::with_capacity(idx.len()));
        for p in parts {
            for (img, cap) in p? {
                images.push(img);
                captions.push(cap);
            }
        }
        let mut features = Vec::new();
        if let Some((file, width)) = &self.features {
            features = vec![0f32; idx.len() * width];
            let mut row = vec![0u8; width * 4];
            for (k, &i) in idx.iter().enumerate() {
                file.read_exact_at(&mut row, i as u64 * (width * 4) as u64)
                    .map_err(|e| Error::Config(format!("reading the pool's feature rows: {e}")))?;
                for (v, b) in features[k * width..(k + 1) * width].iter_mut().zip(row.chunks_exact(4)) {
                    *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        }
        Ok(ReadRows { images, captions, features })
    }
}

/// The upstream pool in full mode, left on disk: an index of where each row's image and caption lie in the
/// (uncompressed) shard files, 32 bytes a row; each step reads its rows in place, preprocesses and tokenises
/// them as the in-memory pool was, and the next step's rows are read (and, without augmentation, decoded) on a
/// pool of threads while the step runs.
pub struct StreamedFullPool {
    shards: Arc<Shards>,
    tokenizer: Arc<ClipTokenizer>,
    memory_features: Option<Tensor>,
    kind: Kind,
    threads: usize,
    /// The read started ahead: its rows, decoded or not, and the thread.
    pending: Mutex<Option<Pending>>,
}

impl std::fmt::Debug for StreamedFullPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StreamedFullPool {{ rows: {}, files: {} }}", self.shards.rows.len(), self.shards.files.len())
    }
}

impl StreamedFullPool {
    /// A pool of `rows` lying in `files` (each stamped now: a file that changes later is an error, not other
    /// pixels), tokenised by `tokenizer`, with `features` per row.
    pub fn new(
        files: Vec<PathBuf>,
        rows: Vec<RowAt>,
        tokenizer: Arc<ClipTokenizer>,
        features: StreamedFeatures,
    ) -> Result<Self> {
        let files = files.into_iter().map(|p| stamp(&p).map(|s| (p, s))).collect::<Result<Vec<_>>>()?;
        if let Some(r) = rows.iter().find(|r| r.file as usize >= files.len()) {
            return Err(Error::Config(format!("a pool row names file {} of {}", r.file, files.len())));
        }
        let (memory_features, disk, kind) = match features {
            StreamedFeatures::InMemory(t) => {
                let kind = t.kind();
                (Some(t), None, kind)
            }
            StreamedFeatures::OnDisk { file, width, kind } => (None, Some((file, width)), kind),
        };
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Ok(StreamedFullPool {
            shards: Arc::new(Shards { files, rows, features: disk }),
            tokenizer,
            memory_features,
            kind,
            threads,
            pending: Mutex::new(None),
        })
    }

    /// Bytes of index per row.
    pub const INDEX_BYTES_PER_ROW: usize = std::mem::size_of::<RowAt>();

    fn take_pending(&self) -> Option<Pending> {
        self.pending.lock().ok().and_then(|mut p| p.take())
    }
}

impl Drop for StreamedFullPool {
    fn drop(&mut self) {
        if let Some((_, h)) = self.take_pending() {
            let _ = h.join();
        }
    }
}

impl FullRows for StreamedFullPool {
    fn rows(&self) -> usize {
        self.shards.rows.len()
    }

    fn ahead(&self, idx: &[i64], augment: bool, crop: usize) {
        if let Some((_, h)) = self.take_pending() {
            let _ = h.join();
        }
        let (shards, rows, threads) = (self.shards.clone(), idx.to_vec(), self.threads);
        let h = std::thread::spawn(move || shards.read(&rows, !augment, crop, threads));
        if let Ok(mut p) = self.pending.lock() {
            *p = Some(((idx.to_vec(), !augment, crop), h));
        }
    }

    fn batch(
        &self,
        idx: &[i64],
        augment: Option<&Augment>,
        crop: usize,
        rng: &mut SplitMix64,
    ) -> Result<FullRowsBatch> {
        let decode = augment.is_none();
        // The read started ahead, when it is this step's (its failure is this step's); another is discarded.
        let ready = match self.take_pending() {
            Some(((rows, decoded, c), h)) if rows == idx && decoded == decode && c == crop => match h.join() {
                Ok(Ok(r)) => Some(r),
                Ok(Err(e)) => return Err(e),
                Err(_) => None,
            },
            Some((_, h)) => {
                let _ = h.join();
                None
            }
            None => None,
        };
        let read = match ready {
            Some(r) => r,
            None => self.shards.read(idx, decode, crop, self.threads)?,
        };
        let images = match augment {
            None => read.images,
            Some(a) => {
                // As the in-memory pool: each image decoded and cropped, the crops drawn in row order. A chunk of
                // rows (one a thread) is decoded in parallel, its crops drawn in order, then cut in parallel.
                let files = &self.shards.files;
                let mut out = Vec::with_capacity(idx.len());
                for (k0, chunk) in read.images.chunks(self.threads.max(1)).enumerate() {
                    let k0 = k0 * self.threads.max(1);
                    let decoded: Vec<Result<preprocess::RgbImage>> = std::thread::scope(|s| {
                        let hs: Vec<_> = chunk
                            .iter()
                            .enumerate()
                            .map(|(j, bytes)| {
                                let r = self.shards.rows[idx[k0 + j] as usize];
                                s.spawn(move || {
                                    preprocess::decode_rgb(bytes).map_err(|e| {
                                        Error::format(
                                            &files[r.file as usize].0,
                                            format!("image at byte {}", r.image_at),
                                            format!("cannot be decoded: {e}"),
                                        )
                                    })
                                })
                            })
                            .collect();
                        hs.into_iter()
                            .map(|h| h.join().unwrap_or_else(|_| Err(Error::Config("a decoder panicked".into()))))
                            .collect()
                    });
                    let decoded = decoded.into_iter().collect::<Result<Vec<_>>>()?;
                    let boxes: Vec<_> = decoded
                        .iter()
                        .map(|img| preprocess::random_crop_box(img.width, img.height, a.scale, a.ratio, rng))
                        .collect();
                    let cut: Vec<Vec<u8>> = std::thread::scope(|s| {
                        let hs: Vec<_> = decoded
                            .iter()
                            .zip(&boxes)
                            .map(|(img, b)| s.spawn(move || preprocess::crop_and_resize(img, *b, crop)))
                            .collect();
                        hs.into_iter().map(|h| h.join().unwrap_or_default()).collect()
                    });
                    if cut.iter().any(|c| c.len() != crop * crop * 3) {
                        return Err(Error::Config("a crop failed".into()));
                    }
                    out.extend(cut);
                }
                out
            }
        };
        let refs: Vec<&str> = read.captions.iter().map(String::as_str).collect();
        let ids = self.tokenizer.encode_batch(&refs);
        let features = match (&self.memory_features, &self.shards.features) {
            (Some(t), _) => select(t, idx),
            (None, Some((_, width))) => {
                Tensor::from_slice(&read.features).view([idx.len() as i64, *width as i64]).to_kind(self.kind)
            }
            (None, None) => return Err(Error::Config("a streamed pool without features".into())),
        };
        Ok(FullRowsBatch { images, ids, features })
    }
}
