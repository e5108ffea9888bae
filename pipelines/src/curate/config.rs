//! The curation pipeline's configuration: a TOML file (`--config pipeline.toml`) whose every key has a
//! default, overridden by command-line flags.

use std::path::{Path, PathBuf};

use flyt::DeviceSpec;
pub use flyt_operators::{Arrival, EmbeddingSource};
use serde::{Deserialize, Serialize};

use crate::methods::{Centroids, Method, MethodInputs, NegClipLossParams, columns_of};
use crate::{Error, Result};

/// `[input]`: what to curate.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Input {
    /// A directory of shards (watched with `--follow`) or shard files.
    pub shards: Vec<PathBuf>,
    /// When a shard counts as arrived.
    pub arrival: Arrival,
    /// Where embeddings come from.
    pub embeddings: EmbeddingSource,
    /// The sidecar `.npz` arrays' prefix (`b32`, `l14`, ...); default: found in the file.
    pub prefix: Option<String>,
    /// A directory of per-uid score parquet files (`uid` + float columns), watched like the shards; they join
    /// the M-FLYT mix on uid.
    pub scores: Option<PathBuf>,
    /// How often a watched directory is listed, in milliseconds.
    pub poll_ms: u64,
    /// Records read per decode activation (bounded work per activation).
    pub decode_budget: usize,
}

impl Default for Input {
    fn default() -> Self {
        Input {
            shards: Vec::new(),
            arrival: Arrival::Auto,
            embeddings: EmbeddingSource::Auto,
            prefix: None,
            scores: None,
            poll_ms: 1000,
            decode_budget: 4096,
        }
    }
}

/// `[embed]`: the CLIP model for shards without sidecars.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Embed {
    /// A Hugging Face CLIP folder.
    pub model: Option<PathBuf>,
    /// `auto`, `cpu`, `cuda` or `cuda:N` (also for the scoring methods' matrix work).
    pub device: DeviceSpec,
    /// Largest embedding batch.
    pub batch_size: usize,
    /// Keep each embedded shard's embeddings (`OUT/embeddings/<stem>.npz` + `.parquet`, a DataComp pool, with
    /// each row's caption and size), so a changed scoring method re-scores without re-embedding.
    pub store: bool,
}

impl Default for Embed {
    fn default() -> Self {
        Embed { model: None, device: DeviceSpec::Auto, batch_size: 256, store: true }
    }
}

/// `[score]`: the scoring methods, their inputs, and what feeds SCS.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Score {
    /// The methods each shard is scored with, each adding its columns to the shard's score table (default:
    /// `clip_score`, and `flyt` with a FLYT head). A changed list, or a changed input of a method, re-scores
    /// committed shards from their embeddings.
    pub methods: Option<Vec<Method>>,
    /// A FLYT checkpoint (`flyt train flyt`): the `flyt` method.
    pub flyt: Option<PathBuf>,
    /// An M-FLYT checkpoint (`flyt train mflyt`): the score is its mix of its columns (those the methods
    /// compute, and the others from external score files in `[input] scores`).
    pub mixer: Option<PathBuf>,
    /// Without a mixer, the column SCS samples by (default: `flyt` when computed, else `clip_score`).
    pub column: Option<String>,
    /// NormSim and image-based: the downstream set's image embeddings (`.npy`, `.npz`, `FILE.npz:KEY`).
    pub downstream: Vec<String>,
    /// Text-based: downstream `classnames.txt` files.
    pub classnames: Vec<PathBuf>,
    /// Image-based: fixed k-means centroids (`flyt clusters`), so the result does not depend on arrival order.
    pub centroids: Option<PathBuf>,
    /// negCLIPLoss: batch B, repeats K, temperature τ, seed (batches are formed within each shard).
    pub neg_clip_loss: NegClipLossParams,
}

impl Score {
    /// The methods, in order (the default when none are given).
    pub fn methods(&self) -> Vec<Method> {
        let mut m = self.methods.clone().unwrap_or_else(|| vec![Method::ClipScore]);
        if self.flyt.is_some() && !m.contains(&Method::Flyt) {
            m.push(Method::Flyt);
        }
        m.dedup();
        m
    }

    /// The score columns, in order.
    pub fn columns(&self) -> Vec<String> {
        columns_of(&self.methods())
    }

    /// The methods' inputs.
    pub fn inputs(&self, prefix: Option<String>) -> MethodInputs {
        MethodInputs {
            downstream: self.downstream.clone(),
            classnames: self.classnames.clone(),
            centroids: self.centroids.clone().map(Centroids::File),
            neg_clip_loss: self.neg_clip_loss.clone(),
            flyt: self.flyt.clone(),
            prefix,
        }
    }
}

/// `[sample]`: Soft Cap Sampling.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sample {
    /// The repetition penalty α.
    pub alpha: f64,
    /// A fixed target T (Σ counts).
    pub target: Option<u64>,
    /// T as a fraction of the pool (default 1.0, DataComp's "samples seen = pool size").
    pub target_ratio: Option<f64>,
    /// The seed.
    pub seed: u64,
}

impl Default for Sample {
    fn default() -> Self {
        Sample { alpha: 0.15, target: None, target_ratio: None, seed: 0 }
    }
}

/// `[dedup]`: duplicates taken out of the pool before sampling (each recorded in `OUT/duplicates.parquet`
/// with the uid it duplicates).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dedup {
    /// Exact content duplicates: among samples with the same image bytes (SHA-256; DataComp's `sha256` for
    /// sidecars) or the same decoded pixels, the least uid stays.
    pub exact: bool,
    /// Semantic near-duplicates (SemDeDup) within the clusters of fixed centroids.
    pub semantic: Option<SemanticDedup>,
}

/// `[dedup.semantic]`: SemDeDup (Abbas et al. 2023) over the image embeddings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemanticDedup {
    /// Fixed k-means centroids (`flyt clusters`, a `k × dim` float32 `.npy`): a sample is compared with the
    /// other members of its nearest centroid's cluster.
    pub centroids: PathBuf,
    /// A sample goes when its cosine to a member ranked before it (farther from the centroid; ties by uid) is
    /// ≥ 1 − ε.
    #[serde(default = "default_epsilon")]
    pub epsilon: f32,
}

fn default_epsilon() -> f32 {
    0.05
}

/// `[output]`: where results go.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Output {
    /// The output directory.
    pub dir: PathBuf,
    /// Least time between two publications of `subset.npy` + `manifest.json` while following (the last state
    /// is always published).
    pub publish_ms: u64,
    /// Without `--follow`: also write the selected samples, repeated by count, into WebDataset shards here.
    pub reshard: Option<PathBuf>,
    /// Samples per resharded tar.
    pub shard_size: usize,
}

impl Default for Output {
    fn default() -> Self {
        Output { dir: PathBuf::new(), publish_ms: 1000, reshard: None, shard_size: 10_000 }
    }
}

/// The whole configuration.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CurateConfig {
    /// What to curate.
    pub input: Input,
    /// The CLIP model.
    pub embed: Embed,
    /// The scoring models.
    pub score: Score,
    /// Deduplication.
    pub dedup: Dedup,
    /// SCS.
    pub sample: Sample,
    /// Outputs.
    pub output: Output,
    /// Keep watching the inputs and updating the outputs (until SIGINT/SIGTERM or `idle_exit_s`).
    pub follow: bool,
    /// With `follow`: exit once nothing new has arrived for this many seconds and everything is committed.
    pub idle_exit_s: Option<f64>,
}

impl CurateConfig {
    /// Reads a TOML file; unknown keys are errors naming them.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Checks what can be checked before starting.
    pub fn validate(&self) -> Result<()> {
        let bail = |m: String| Err(Error::Config(m));
        if self.input.shards.is_empty() {
            return bail("no shards: give --shards DIR (or [input] shards in the config)".into());
        }
        for p in &self.input.shards {
            let shown = p.display().to_string();
            if let Some((scheme, _)) = shown.split_once("://") {
                return bail(format!(
                    "--shards {shown}: {scheme}:// paths are not supported (object storage is not implemented yet);                      give a local or mounted directory"
                ));
            }
            if let Err(e) = std::fs::metadata(p) {
                return bail(format!("--shards {shown}: {e}"));
            }
        }
        if self.output.dir.as_os_str().is_empty() {
            return bail("no output directory: give --out DIR (or [output] dir in the config)".into());
        }
        if self.sample.alpha.is_nan() || self.sample.alpha < 0.0 {
            return bail(format!("[sample] alpha must be ≥ 0, got {}", self.sample.alpha));
        }
        if self.sample.target.is_some() && self.sample.target_ratio.is_some() {
            return bail("[sample] give target or target_ratio, not both".into());
        }
        if let Some(r) = self.sample.target_ratio
            && !(r.is_finite() && r >= 0.0)
        {
            return bail(format!("[sample] target_ratio must be a finite number ≥ 0, got {r}"));
        }
        if self.input.embeddings == EmbeddingSource::Model && self.embed.model.is_none() {
            return bail("[input] embeddings = \"model\" needs a CLIP model (--model DIR or [embed] model)".into());
        }
        if self.embed.batch_size == 0 {
            return bail("[embed] batch_size must be ≥ 1".into());
        }
        if self.output.reshard.is_some() && self.follow {
            return bail("[output] reshard runs after a batch run; it cannot be combined with --follow".into());
        }
        if let Some(s) = &self.dedup.semantic {
            if !(0.0..=2.0).contains(&s.epsilon) {
                return bail(format!("[dedup.semantic] epsilon must be in [0, 2], got {}", s.epsilon));
            }
            if !self.embed.store && self.input.embeddings != EmbeddingSource::Sidecar {
                return bail(
                    "[dedup.semantic] reads each shard's embeddings back: keep them ([embed] store = true)".into(),
                );
            }
        }
        let methods = self.score.methods();
        if methods.contains(&Method::Flyt) && self.score.flyt.is_none() {
            return bail("[score] methods has flyt: give the FLYT checkpoint with --flyt CKPT ([score] flyt)".into());
        }
        Ok(())
    }

    /// SCS's target.
    pub fn target(&self) -> flyt::sampling::Target {
        match (self.sample.target, self.sample.target_ratio) {
            (Some(t), _) => flyt::sampling::Target::Fixed(t),
            (None, r) => flyt::sampling::Target::Ratio(r.unwrap_or(1.0)),
        }
    }
}
