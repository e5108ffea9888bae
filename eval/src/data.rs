//! Building the mini-DataComp from real data: a WebDataset pool of Fashion-MNIST images with class captions and
//! realistic dirt (wrong-class captions, real web alt-text, noise images, exact duplicates, Openclipart images
//! with their own titles, a few broken samples), plus the disjoint sets around it: the reference CLIP's clean
//! slice, FLYT's labelled downstream set and the zero-shot evaluation set.

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
    /// Evaluation shards and classnames.
    pub fn eval(&self) -> PathBuf {
        self.root.join("eval")
    }
    /// `truth.csv`: uid, kind, class of every pool sample.
    pub fn truth(&self) -> PathBuf {
        self.root.join("truth.csv")
    }
    /// Class names of a labelled set: the `classnames.txt` built beside its shards, or the configured file.
    pub fn classnames(&self, which: &TaskSource, dir: &Path) -> PathBuf {
        match which {
            TaskSource::FashionMnist { .. } | TaskSource::Folder { .. } => dir.join("classnames.txt"),
            TaskSource::Webdataset { classnames, .. } => classnames.clone(),
        }
    }
    /// The shards of a labelled set.
    pub fn task_shards(&self, which: &TaskSource, dir: &Path) -> PathBuf {
        match which {
            TaskSource::FashionMnist { .. } | TaskSource::Folder { .. } => dir.to_path_buf(),
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

/// One sample to write.
struct Item {
    image: Vec<u8>,
    caption: Option<String>,
    class: Option<usize>,
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

/// Builds (or reuses, when the digest matches) the data under `dirs.root`.
pub fn build(cfg: &EvalConfig, dirs: &DataDirs, log: &mut dyn FnMut(&str)) -> anyhow::Result<Built> {
    let digest = {
        let shape = json!({"sources": cfg.sources, "pool": cfg.pool, "reference": [cfg.reference.clean, cfg.reference.off_task],
            "tasks": [&cfg.tasks.downstream, &cfg.tasks.eval], "side": cfg.model.image_size, "version": 1});
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
    let train = fmnist(&cfg.sources.fashion_mnist, "train")?;
    let texts = alt_texts(&cfg.sources.alt_text)?;
    let clip_root = &cfg.sources.openclipart;
    let clip_files = clipart_files(clip_root)?;
    let n = p.samples;
    let count = |f: f64| (f * n as f64).round() as usize;
    let (n_wrong, n_alt, n_noise, n_dup, n_off, n_broken) = (
        count(p.wrong_class),
        count(p.alt_text),
        count(p.noise),
        count(p.duplicates),
        count(p.off_task),
        count(p.broken),
    );
    let n_clean = n - n_wrong - n_alt - n_noise - n_dup - n_off - n_broken;
    let n_down: usize = cfg
        .tasks
        .downstream
        .iter()
        .map(|t| match t {
            TaskSource::FashionMnist { split, count } if split == "train" => *count,
            _ => 0,
        })
        .sum();
    let n_eval_train = match &cfg.tasks.eval {
        TaskSource::FashionMnist { split, count } if split == "train" => *count,
        _ => 0,
    };
    let need = n_clean + n_wrong + n_alt + n_broken + cfg.reference.clean + n_down + n_eval_train;
    if need > train.images.count {
        bail!("the configuration needs {need} Fashion-MNIST training images; there are {}", train.images.count);
    }
    let order = shuffled(train.images.count, &mut rng);
    let mut next = order.into_iter();
    let mut take = |k: usize| -> Vec<usize> { next.by_ref().take(k).collect() };

    // Openclipart: decoded in a seeded order until enough have decoded
    let need_clip = n_off + cfg.reference.off_task;
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
    let ref_clip = clip_items.split_off(n_off);

    // the pool
    let mut pool: Vec<Item> = Vec::with_capacity(n);
    for i in take(n_clean) {
        let c = train.labels[i] as usize;
        pool.push(Item {
            image: gray_png(&train, i)?,
            caption: Some(class_caption(c, &mut rng)),
            class: Some(c),
            kind: "clean",
        });
    }
    for i in take(n_wrong) {
        let c = train.labels[i] as usize;
        let other = (c + 1 + rng.below(9) as usize) % 10;
        pool.push(Item {
            image: gray_png(&train, i)?,
            caption: Some(class_caption(other, &mut rng)),
            class: Some(c),
            kind: "wrong_class",
        });
    }
    for i in take(n_alt) {
        let t = texts[rng.below(texts.len() as u64) as usize].clone();
        pool.push(Item {
            image: gray_png(&train, i)?,
            caption: Some(t),
            class: Some(train.labels[i] as usize),
            kind: "alt_text",
        });
    }
    for _ in 0..n_noise {
        let c = rng.below(10) as usize;
        pool.push(Item {
            image: noise_png(side, &mut rng)?,
            caption: Some(class_caption(c, &mut rng)),
            class: None,
            kind: "noise",
        });
    }
    for (png, title) in clip_items {
        pool.push(Item { image: png, caption: Some(title), class: None, kind: "off_task" });
    }
    for (j, i) in take(n_broken).into_iter().enumerate() {
        let c = train.labels[i] as usize;
        let (image, caption) = if j % 2 == 0 {
            let png = gray_png(&train, i)?;
            (png[..png.len() / 3].to_vec(), Some(class_caption(c, &mut rng))) // cut in transit
        } else {
            (gray_png(&train, i)?, None) // no caption
        };
        pool.push(Item { image, caption, class: Some(c), kind: "broken" });
    }
    let originals = pool.len();
    for _ in 0..n_dup {
        let src = rng.below(originals as u64) as usize;
        let s = &pool[src];
        if s.kind == "broken" {
            continue;
        }
        let copy = Item { image: s.image.clone(), caption: s.caption.clone(), class: s.class, kind: "duplicate" };
        pool.push(copy);
    }
    // interleave the kinds as a crawl would
    rng.shuffle(&mut pool);
    log(&format!("data: writing the pool ({} samples) to {}", pool.len(), dirs.pool().display()));
    let uids = write_items(&dirs.pool(), "pool", &pool, p.shard_size)?;
    let mut truth = String::from("uid,kind,class\n");
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for (u, it) in uids.iter().zip(&pool) {
        truth.push_str(&format!("{u},{},{}\n", it.kind, it.class.map(|c| c.to_string()).unwrap_or_default()));
        *kinds.entry(it.kind.to_string()).or_default() += 1;
    }
    std::fs::write(dirs.truth(), truth)?;

    // the reference's clean slice
    let mut reference: Vec<Item> = Vec::new();
    for i in take(cfg.reference.clean) {
        let c = train.labels[i] as usize;
        reference.push(Item {
            image: gray_png(&train, i)?,
            caption: Some(class_caption(c, &mut rng)),
            class: Some(c),
            kind: "clean",
        });
    }
    for (png, title) in ref_clip {
        reference.push(Item { image: png, caption: Some(title), class: None, kind: "off_task" });
    }
    rng.shuffle(&mut reference);
    write_items(&dirs.reference(), "reference", &reference, p.shard_size)?;

    // labelled sets
    let test = if matches!(&cfg.tasks.eval, TaskSource::FashionMnist { split, .. } if split == "test") {
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
    sets.push((&cfg.tasks.eval, dirs.eval(), "eval".to_string()));
    let mut sizes = Vec::new();
    for (src, dir, tag) in sets {
        let size = match src {
            TaskSource::FashionMnist { split, count } => {
                let (set, idx): (&Fmnist, Vec<usize>) = match split.as_str() {
                    "train" => (&train, take(*count)),
                    "test" => {
                        let t = test.as_ref().expect("read above");
                        (t, (0..(*count).min(t.images.count)).collect())
                    }
                    s => bail!("[tasks] split {s:?}: use train or test"),
                };
                let items: Vec<Item> = idx
                    .iter()
                    .map(|&i| {
                        Ok(Item {
                            image: gray_png(set, i)?,
                            caption: None,
                            class: Some(set.labels[i] as usize),
                            kind: "clean",
                        })
                    })
                    .collect::<anyhow::Result<_>>()?;
                write_items(&dir, &tag, &items, 2000)?;
                write_lines(&dir.join("classnames.txt"), &CLASSNAMES)?;
                items.len()
            }
            TaskSource::Folder { path } => {
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
    let built = Built {
        digest,
        kinds,
        reference: cfg.reference.clean + cfg.reference.off_task,
        downstream: sizes[..sizes.len() - 1].iter().sum(),
        eval: sizes[sizes.len() - 1],
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
            items.push(Item { image: png, caption: None, class: Some(c), kind: "clean" });
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

/// Reads `truth.csv`: uid → (kind, class).
pub fn read_truth(path: &Path) -> anyhow::Result<BTreeMap<Uid, (String, Option<usize>)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let mut f = line.split(',');
        let (Some(u), Some(k), c) = (f.next(), f.next(), f.next()) else {
            bail!("{}: line {} is not uid,kind,class", path.display(), i + 1)
        };
        let uid = Uid::parse_hex(u).map_err(|e| anyhow::anyhow!("{}: line {}: {e}", path.display(), i + 1))?;
        out.insert(uid, (k.to_string(), c.and_then(|c| c.parse().ok())));
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
    }
}
