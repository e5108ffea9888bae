//! `flyt downstream`: a labelled WebDataset plus class names and templates → a FLYT downstream task `.npz`
//! (`image` M × d, `labels` M, `prompts` C × T × d, optionally `captions` M × d), all from a frozen CLIP.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use flyt::clip::{Embedder, EmbedderConfig};
use flyt::{DeviceSpec, NpyArray, NpyData, ReaderConfig, Record, ShardReader};

use crate::shards::expand_shards;
use crate::{Context, Error, Result};

/// What to embed.
#[derive(Clone, Debug)]
pub struct DownstreamConfig {
    /// The frozen CLIP (a Hugging Face folder) whose embeddings the pool uses.
    pub model: PathBuf,
    /// Class names, one per line (DataComp's `classnames.txt`); line i is label i. Default: the DataComp task's,
    /// with `task` and `datacomp_eval_dir`.
    pub classnames: Option<PathBuf>,
    /// Prompt templates, one per line with `{c}` for the class name; default: the DataComp task's (with `task`
    /// and `datacomp_eval_dir`), else "a photo of a {c}.".
    pub templates: Option<PathBuf>,
    /// The DataComp task these shards are (`imagenet`, `cifar10`, ...: the official code's names).
    pub task: Option<String>,
    /// DataComp's evaluation directory, holding each task's class names and templates.
    pub datacomp_eval_dir: Option<PathBuf>,
    /// The output `.npz`.
    pub out: PathBuf,
    /// Also store the samples' caption embeddings (`captions`): `flyt train` then uses the downstream CLIP loss
    /// over (image, caption) pairs for this task (notes §2.4 (b)). Samples need a `txt` caption.
    pub captions: bool,
    /// Batch size.
    pub batch_size: usize,
    /// Where the model runs.
    pub device: DeviceSpec,
    /// Labelled shards (images with `cls`), or directories of them.
    pub shards: Vec<PathBuf>,
}

/// What `downstream` wrote.
#[derive(Clone, Debug)]
pub struct DownstreamReport {
    /// Labelled images embedded.
    pub images: usize,
    /// Classes.
    pub classes: usize,
    /// Templates.
    pub templates: usize,
    /// The embedding dimension.
    pub dim: usize,
    /// Samples rejected by ingest or with an undecodable image.
    pub rejected: usize,
    /// Samples whose label is not a class of the class-name file.
    pub bad_label: usize,
    /// One line per sample left out, naming its shard and key.
    pub left_out: Vec<String>,
}

/// The non-empty trimmed lines of a file.
pub(crate) fn lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
}

/// Prompt templates from a file (each line with `{c}`), or the one default prompt.
pub(crate) fn templates(path: Option<&Path>) -> Result<Vec<String>> {
    let t = match path {
        Some(p) => lines(p)?,
        None => vec!["a photo of a {c}.".to_string()],
    };
    if t.is_empty() {
        return Err(Error::Config(format!(
            "{}: no templates",
            path.map(|p| p.display().to_string()).unwrap_or_default()
        )));
    }
    if let Some(t) = t.iter().find(|t| !t.contains("{c}")) {
        return Err(Error::Config(format!("template {t:?} has no {{c}} for the class name")));
    }
    Ok(t)
}

/// Embeds the labelled shards and the class prompts.
pub fn downstream(cfg: &DownstreamConfig) -> Result<DownstreamReport> {
    let device = cfg.device.resolve()?;
    let known = match (&cfg.task, &cfg.datacomp_eval_dir) {
        (Some(t), Some(dir)) => Some(flyt::datacomp_task_files(dir, t).ok_or_else(|| {
            Error::Config(format!(
                "--task {t:?} is not a DataComp task the official code knows (known: {})",
                flyt::DATACOMP_TASKS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ))
        })?),
        (Some(_), None) => return Err(Error::Config("--task needs --datacomp-eval-dir (its files are there)".into())),
        _ => None,
    };
    let classnames = match (&cfg.classnames, &known) {
        (Some(c), _) => c.clone(),
        (None, Some((c, _))) => c.clone(),
        (None, None) => {
            return Err(Error::Config(
                "give the class names: --classnames FILE, or --task with --datacomp-eval-dir".into(),
            ));
        }
    };
    let classes = lines(&classnames)?;
    if classes.is_empty() {
        return Err(Error::Config(format!("{}: no class names", classnames.display())));
    }
    let template_file = cfg.templates.clone().or(known.map(|(_, t)| t));
    let templates = templates(template_file.as_deref())?;
    let embedder =
        Embedder::load(&cfg.model, EmbedderConfig { batch_size: cfg.batch_size, device, ..Default::default() })
            .context_with(|| format!("loading the CLIP model {}", cfg.model.display()))?;
    let dim = embedder.dim();
    let reader = ReaderConfig::default().require_caption(cfg.captions).require_label(true);
    let mut labels_by_key: HashMap<String, i64> = HashMap::new();
    let (mut image, mut captions, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rejected, mut bad_label) = (0usize, 0usize);
    let mut left_out = Vec::new();
    for shard in expand_shards(&cfg.shards)? {
        let mut samples = Vec::new();
        for r in ShardReader::open(&shard, reader.clone())? {
            match r? {
                Record::Sample(s) => match s.label {
                    Some(l) if l >= 0 && (l as usize) < classes.len() => {
                        labels_by_key.insert(format!("{}\0{}", s.shard, s.key), l);
                        samples.push(*s);
                    }
                    _ => {
                        bad_label += 1;
                        left_out.push(format!(
                            "{} {}: label {:?} is not a class of {}",
                            shard.display(),
                            s.key,
                            s.label,
                            classnames.display()
                        ));
                    }
                },
                Record::Rejected(r) => {
                    rejected += 1;
                    left_out.push(format!("{} {}: rejected ({})", shard.display(), r.key, r.reason.name()));
                }
            }
        }
        let shard_name: std::sync::Arc<str> = samples.first().map(|s| s.shard.clone()).unwrap_or_else(|| "".into());
        let (emb, unreadable) = embedder.embed(samples.into_iter());
        rejected += unreadable.len();
        for (i, (_, key)) in emb.ids.iter().enumerate() {
            labels.push(labels_by_key[&format!("{shard_name}\0{key}")]);
            image.extend_from_slice(&emb.image[i * dim..(i + 1) * dim]);
            if cfg.captions {
                captions.extend_from_slice(&emb.text[i * dim..(i + 1) * dim]);
            }
        }
    }
    if labels.is_empty() {
        return Err(Error::Incomplete("no labelled images were read".into()));
    }
    let texts: Vec<String> = classes.iter().flat_map(|c| templates.iter().map(move |t| t.replace("{c}", c))).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let prompts = embedder.embed_texts(&refs);
    let m = labels.len();
    let mut arrays = BTreeMap::new();
    arrays.insert("image".to_string(), NpyArray { shape: vec![m, dim], data: NpyData::F32(image) });
    arrays.insert("labels".to_string(), NpyArray { shape: vec![m], data: NpyData::I64(labels) });
    arrays.insert(
        "prompts".to_string(),
        NpyArray { shape: vec![classes.len(), templates.len(), dim], data: NpyData::F32(prompts) },
    );
    if cfg.captions {
        arrays.insert("captions".to_string(), NpyArray { shape: vec![m, dim], data: NpyData::F32(captions) });
    }
    flyt::write_npz(&cfg.out, &arrays, false)?;
    Ok(DownstreamReport {
        images: m,
        classes: classes.len(),
        templates: templates.len(),
        dim,
        rejected,
        bad_label,
        left_out,
    })
}
