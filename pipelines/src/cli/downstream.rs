//! `flyt downstream`: a labelled WebDataset plus class names and templates → a FLYT downstream task `.npz`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{Context, bail};
use flyt::clip::{Embedder, EmbedderConfig};
use flyt::{NpyArray, NpyData, ReaderConfig, Record, ShardReader};

use crate::shards::{expand_shards, show};

/// Arguments of `flyt downstream`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The frozen CLIP (a Hugging Face folder) whose embeddings the pool uses.
    #[arg(long)]
    pub model: PathBuf,
    /// Class names, one per line (DataComp's `classnames.txt`); line i is label i.
    #[arg(long)]
    pub classnames: PathBuf,
    /// Prompt templates, one per line with `{c}` for the class name (DataComp's
    /// `zeroshot_classification_templates.txt`); default: "a photo of a {c}.".
    #[arg(long)]
    pub templates: Option<PathBuf>,
    /// Output `.npz`: `image` (M × d), `labels` (M), `prompts` (C × T × d), all from the frozen CLIP.
    #[arg(long)]
    pub out: PathBuf,
    /// Also store the samples' caption embeddings (`captions`, M × d): `flyt train` then uses the downstream CLIP
    /// loss over (image, caption) pairs for this task (notes §2.4 (b)). Samples need a `txt` caption.
    #[arg(long)]
    pub captions: bool,
    /// Batch size.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Labelled shards (images with `cls`), or directories of them.
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
}

fn lines(path: &PathBuf) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
}

/// Runs `flyt downstream`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let device = super::embed::parse_device(&a.device)?;
    let classes = lines(&a.classnames)?;
    if classes.is_empty() {
        bail!("{}: no class names", a.classnames.display());
    }
    let templates = match &a.templates {
        Some(p) => lines(p)?,
        None => vec!["a photo of a {c}.".to_string()],
    };
    if templates.is_empty() {
        bail!("{}: no templates", a.templates.as_ref().map(|p| p.display().to_string()).unwrap_or_default());
    }
    if let Some(t) = templates.iter().find(|t| !t.contains("{c}")) {
        bail!("template {t:?} has no {{c}} for the class name");
    }
    let embedder = Embedder::load(&a.model, EmbedderConfig { batch_size: a.batch_size, device, ..Default::default() })?;
    let dim = embedder.dim();
    let config = ReaderConfig::default().require_caption(a.captions).require_label(true);
    let mut labels_by_key: HashMap<String, i64> = HashMap::new();
    let mut image = Vec::new();
    let mut captions = Vec::new();
    let mut labels = Vec::new();
    let (mut rejected, mut bad_label) = (0usize, 0usize);
    for shard in expand_shards(&a.shards)? {
        let mut reader = ShardReader::open(&shard, config.clone())?;
        let mut samples = Vec::new();
        for r in reader.by_ref() {
            match r? {
                Record::Sample(s) => match s.label {
                    Some(l) if l >= 0 && (l as usize) < classes.len() => {
                        labels_by_key.insert(format!("{}\0{}", s.shard, s.key), l);
                        samples.push(*s);
                    }
                    _ => {
                        bad_label += 1;
                        eprintln!(
                            "flyt: {} {}: label {:?} is not a class of {}",
                            show(&shard),
                            s.key,
                            s.label,
                            show(&a.classnames)
                        );
                    }
                },
                Record::Rejected(r) => {
                    rejected += 1;
                    eprintln!("flyt: {} {}: rejected ({})", show(&shard), r.key, r.reason.name());
                }
            }
        }
        let shard_name: std::sync::Arc<str> = samples.first().map(|s| s.shard.clone()).unwrap_or_else(|| "".into());
        let (emb, unreadable) = embedder.embed(samples.into_iter());
        rejected += unreadable.len();
        for (i, (_, key)) in emb.ids.iter().enumerate() {
            let l = labels_by_key[&format!("{shard_name}\0{key}")];
            labels.push(l);
            image.extend_from_slice(&emb.image[i * dim..(i + 1) * dim]);
            if a.captions {
                captions.extend_from_slice(&emb.text[i * dim..(i + 1) * dim]);
            }
        }
    }
    if labels.is_empty() {
        bail!("no labelled images were read");
    }
    let texts: Vec<String> = classes.iter().flat_map(|c| templates.iter().map(move |t| t.replace("{c}", c))).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let prompts = embedder.embed_texts(&refs);
    let mut arrays = BTreeMap::new();
    arrays.insert("image".to_string(), NpyArray { shape: vec![labels.len(), dim], data: NpyData::F32(image) });
    arrays.insert("labels".to_string(), NpyArray { shape: vec![labels.len()], data: NpyData::I64(labels.clone()) });
    arrays.insert(
        "prompts".to_string(),
        NpyArray { shape: vec![classes.len(), templates.len(), dim], data: NpyData::F32(prompts) },
    );
    if a.captions {
        arrays
            .insert("captions".to_string(), NpyArray { shape: vec![labels.len(), dim], data: NpyData::F32(captions) });
    }
    flyt::write_npz(&a.out, &arrays, false)?;
    println!(
        "{} images of {} classes, {} templates ({dim}-d); {rejected} rejected, {bad_label} with a label outside the classes; wrote {}",
        labels.len(),
        classes.len(),
        templates.len(),
        show(&a.out)
    );
    Ok(())
}
