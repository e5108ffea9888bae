//! The scoring methods the curation graph runs, their inputs, and the scoring stage that wires one operator per
//! method. The same stage scores in `flyt curate` and in the batch jobs (`flyt scores`, `filter`, `score`), so
//! each method has one implementation.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::str::FromStr;
use std::sync::Arc;

use flyt::clip::Embeddings;
use flyt::methods::{ClassNameMatcher, ImageClusters, KMeans, NegClipLossConfig, ScoreColumn};
use flyt::train::FlytScorer;
use flyt_operators::{
    ScoreBasic, ScoreClip, ScoreFlyt, ScoreImageClusters, ScoreNegClipLoss, ScoreNormSim, ScoreTextMatch,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use timely::dataflow::Stream;
use timely::dataflow::operators::core::Concatenate;

use crate::{Error, Result};

/// A scoring method. Each adds named per-uid columns to a shard's score table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Method {
    /// `clip_score`: the cosine of the image and caption embeddings.
    ClipScore,
    /// `neg_clip_loss`: negCLIPLoss (Wang et al. 2024), within each shard's random batches of B rows.
    NegClipLoss,
    /// `norm_sim_2`: NormSim₂ of the image embedding to the downstream images.
    NormSim2,
    /// `norm_sim_inf`: NormSim∞ (the largest cosine to a downstream image).
    NormSimInf,
    /// `image_based` (1 when the nearest centroid is one of the downstream set's) and `image_based_sim`.
    ImageBased,
    /// `text_based`: how many downstream class names the caption names.
    TextBased,
    /// DataComp's basic-filter features: `caption_words`, `caption_chars`, `english`, `image_min_side`,
    /// `image_aspect`, `basic`.
    Basic,
    /// `flyt`: a trained FLYT head's score.
    Flyt,
}

/// The basic filter's columns.
const BASIC: [&str; 6] = ["caption_words", "caption_chars", "english", "image_min_side", "image_aspect", "basic"];

impl Method {
    /// Every method.
    pub const ALL: [Method; 8] = [
        Method::ClipScore,
        Method::NegClipLoss,
        Method::NormSim2,
        Method::NormSimInf,
        Method::ImageBased,
        Method::TextBased,
        Method::Basic,
        Method::Flyt,
    ];

    /// The method's name in configuration files and flags.
    pub fn name(self) -> &'static str {
        match self {
            Method::ClipScore => "clip_score",
            Method::NegClipLoss => "neg_clip_loss",
            Method::NormSim2 => "norm_sim_2",
            Method::NormSimInf => "norm_sim_inf",
            Method::ImageBased => "image_based",
            Method::TextBased => "text_based",
            Method::Basic => "basic",
            Method::Flyt => "flyt",
        }
    }

    /// The columns it adds.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Method::ClipScore => &["clip_score"],
            Method::NegClipLoss => &["neg_clip_loss"],
            Method::NormSim2 => &["norm_sim_2"],
            Method::NormSimInf => &["norm_sim_inf"],
            Method::ImageBased => &["image_based", "image_based_sim"],
            Method::TextBased => &["text_based"],
            Method::Basic => &BASIC,
            Method::Flyt => &["flyt"],
        }
    }

    /// Whether it reads embeddings (the others read captions and image sizes).
    pub fn needs_embeddings(self) -> bool {
        !matches!(self, Method::TextBased | Method::Basic)
    }

    /// The method that computes a column (`image_based_sim` and the basic columns name their method).
    pub fn of_column(column: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.columns().contains(&column))
    }
}

impl FromStr for Method {
    type Err = Error;

    /// A method's name, or the name of one of its columns.
    fn from_str(s: &str) -> Result<Self> {
        Method::ALL.into_iter().find(|m| m.name() == s).or_else(|| Method::of_column(s)).ok_or_else(|| {
            let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
            Error::Config(format!("unknown scoring method {s:?}; the methods are {}", names.join(", ")))
        })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<String> for Method {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Method> for String {
    fn from(m: Method) -> String {
        m.name().to_string()
    }
}

/// The columns of `methods`, in order, each once.
pub fn columns_of(methods: &[Method]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in methods {
        for c in m.columns() {
            if !out.iter().any(|o| o == c) {
                out.push(c.to_string());
            }
        }
    }
    out
}

/// negCLIPLoss's parameters (`[score.neg_clip_loss]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NegClipLossParams {
    /// The batch size B: each shard's rows are split into random batches of at most B.
    pub batch: usize,
    /// Repeats K: the score averages K random partitions.
    pub repeats: usize,
    /// The teacher CLIP's temperature τ (OpenAI CLIP: 0.01).
    pub temperature: f64,
    /// The partitions' seed.
    pub seed: u64,
}

impl Default for NegClipLossParams {
    fn default() -> Self {
        NegClipLossParams { batch: 32768, repeats: 10, temperature: 0.01, seed: 0 }
    }
}

impl NegClipLossParams {
    fn config(&self) -> NegClipLossConfig {
        NegClipLossConfig {
            batch_size: self.batch,
            repeats: self.repeats,
            temperature: self.temperature,
            seed: self.seed,
        }
    }
}

/// The inputs of the methods that have some.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MethodInputs {
    /// Downstream image embeddings (NormSim, image-based): `.npy` files (rows × dim) or `.npz` files (their
    /// `<prefix>_img`, the only `*_img` array, or `image` as `flyt downstream` writes it; or `FILE.npz:KEY`),
    /// concatenated.
    pub downstream: Vec<String>,
    /// Downstream class names (text-based): `classnames.txt` files, one class per line, synonyms separated by
    /// commas.
    pub classnames: Vec<PathBuf>,
    /// k-means centroids (image-based).
    pub centroids: Option<Centroids>,
    /// negCLIPLoss's parameters.
    pub neg_clip_loss: NegClipLossParams,
    /// A FLYT checkpoint (the `flyt` method).
    pub flyt: Option<PathBuf>,
    /// The embeddings' `.npz` prefix, to pick a downstream `.npz`'s array.
    pub prefix: Option<String>,
}

/// Image-based's fixed centroids.
#[derive(Clone, Debug, PartialEq)]
pub enum Centroids {
    /// A `.npy` of `k × dim` floats (`flyt clusters` writes one).
    File(PathBuf),
    /// Centroids a batch job fitted itself, with how (its identity).
    Fitted(KMeans, String),
}

/// The methods' inputs, loaded once and shared by every worker of a process, with their identities.
pub(crate) struct Loaded {
    methods: Vec<Method>,
    ncl: NegClipLossConfig,
    downstream: Option<(Arc<Vec<f32>>, usize)>,
    clusters: Option<Arc<ImageClusters>>,
    classes: Option<Arc<ClassNameMatcher>>,
    flyt: Option<PathBuf>,
    /// Per method with inputs: their identity (what a committed shard's columns depend on).
    pub(crate) identities: BTreeMap<String, String>,
}

fn sha_of(parts: &[String]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    format!("{:x}", h.finalize())
}

/// A digest over files (their contents) and the keys asked of them.
fn files_identity(files: &[(PathBuf, String)]) -> Result<String> {
    let mut parts = Vec::new();
    for (f, key) in files {
        parts.push(flyt::file_sha256(f)?);
        parts.push(key.clone());
    }
    Ok(sha_of(&parts))
}

/// Splits `FILE.npz:KEY`.
fn split_spec(spec: &str) -> (PathBuf, Option<String>) {
    match spec.rsplit_once(':') {
        Some((f, k)) if f.ends_with(".npz") => (PathBuf::from(f), Some(k.to_string())),
        _ => (PathBuf::from(spec), None),
    }
}

/// Downstream image embeddings from `.npy` / `.npz` / `.npz:KEY` files, concatenated: (data, dim).
pub fn read_downstream(specs: &[String], prefix: Option<&str>) -> Result<(Vec<f32>, usize)> {
    let (mut all, mut dim) = (Vec::new(), 0usize);
    for spec in specs {
        let (file, key) = split_spec(spec);
        let (data, rows, cols) = if file.extension().is_some_and(|e| e == "npz") {
            let key = match key {
                Some(k) => k,
                None => {
                    let keys: Vec<String> = flyt::read_npz(&file)?.into_keys().collect();
                    let want = prefix.map(|p| format!("{p}_img")).filter(|w| keys.contains(w));
                    let imgs: Vec<&String> = keys.iter().filter(|k| k.ends_with("_img")).collect();
                    match (want, &imgs[..]) {
                        (Some(w), _) => w,
                        (None, [one]) => (*one).clone(),
                        (None, []) if keys.iter().any(|k| k == "image") => "image".to_string(),
                        _ => {
                            return Err(Error::Config(format!(
                                "{}: say which array with FILE.npz:KEY (arrays: {})",
                                file.display(),
                                keys.join(", ")
                            )));
                        }
                    }
                }
            };
            flyt::read_npz_matrix(&file, &key)?
        } else {
            let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
            let arr = flyt::parse_npy(&bytes, &file, "array")?;
            let [rows, cols] = arr.shape[..] else {
                return Err(Error::Config(format!(
                    "{}: expected a 2-D array of embeddings, shape is {:?}",
                    file.display(),
                    arr.shape
                )));
            };
            let data = arr.to_f32().ok_or_else(|| Error::Config(format!("{}: not a float array", file.display())))?;
            (data, rows, cols)
        };
        if dim != 0 && cols != dim {
            return Err(Error::Config(format!(
                "{}: {cols}-d embeddings, earlier downstream files are {dim}-d",
                file.display()
            )));
        }
        dim = cols;
        if rows == 0 {
            return Err(Error::Config(format!("{}: no rows", file.display())));
        }
        all.extend(data);
    }
    Ok((all, dim))
}

/// The class names of `classnames.txt` files (one class per line, synonyms after commas).
pub fn read_classnames(files: &[PathBuf]) -> Result<ClassNameMatcher> {
    let mut lines = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
        lines.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from));
    }
    if lines.is_empty() {
        return Err(Error::Config("text-based needs downstream class names: pass --classnames classnames.txt".into()));
    }
    Ok(ClassNameMatcher::new(&lines))
}

/// Centroids from a `.npy` (`k × dim`, float).
pub fn read_centroids(path: &Path) -> Result<KMeans> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let arr = flyt::parse_npy(&bytes, path, "centroids")?;
    let [k, dim] = arr.shape[..] else {
        return Err(Error::Config(format!(
            "{}: centroids must be a k × dim array, shape is {:?}",
            path.display(),
            arr.shape
        )));
    };
    let data = arr.to_f32().ok_or_else(|| Error::Config(format!("{}: centroids are not floats", path.display())))?;
    if k == 0 {
        return Err(Error::Config(format!("{}: no centroids", path.display())));
    }
    Ok(KMeans::from_centroids(&data, dim)?)
}

impl Loaded {
    /// Loads what `methods` need from `inputs` (reading each file once), checks that everything needed is
    /// given, and computes the identities. `threads` is for the image clusters' target assignment.
    pub(crate) fn load(methods: &[Method], inputs: &MethodInputs, threads: usize) -> Result<Self> {
        let has = |m: Method| methods.contains(&m);
        let mut identities = BTreeMap::new();
        let needs_down = has(Method::NormSim2) || has(Method::NormSimInf) || has(Method::ImageBased);
        let mut down_id = String::new();
        let downstream = if needs_down {
            if inputs.downstream.is_empty() {
                return Err(Error::Config(
                    "NormSim and image-based need the downstream set's image embeddings: give --downstream \
                     FILE.npy|FILE.npz (or [score] downstream)"
                        .into(),
                ));
            }
            let (data, dim) = read_downstream(&inputs.downstream, inputs.prefix.as_deref())?;
            let files: Vec<(PathBuf, String)> = inputs
                .downstream
                .iter()
                .map(|s| {
                    let (f, k) = split_spec(s);
                    (f, k.unwrap_or_default())
                })
                .collect();
            down_id = format!("downstream:{}", files_identity(&files)?);
            for m in [Method::NormSim2, Method::NormSimInf] {
                if has(m) {
                    identities.insert(m.name().to_string(), down_id.clone());
                }
            }
            Some((Arc::new(data), dim))
        } else {
            None
        };
        let clusters = match (&downstream, has(Method::ImageBased)) {
            (Some((down, dim)), true) => {
                let (km, what, digest) = match &inputs.centroids {
                    Some(Centroids::File(path)) => {
                        (read_centroids(path)?, path.display().to_string(), flyt::file_sha256(path)?)
                    }
                    Some(Centroids::Fitted(km, how)) => (km.clone(), "the fitted centroids".into(), how.clone()),
                    None => {
                        return Err(Error::Config(
                            "image-based needs fixed k-means centroids: fit them with `flyt clusters` and give \
                             --centroids FILE.npy (or [score] centroids)"
                                .into(),
                        ));
                    }
                };
                if km.dim() != *dim {
                    return Err(Error::Config(format!(
                        "{what}: {}-d centroids, the downstream embeddings are {dim}-d",
                        km.dim()
                    )));
                }
                let id = format!("centroids:{digest};{down_id}");
                identities.insert(Method::ImageBased.name().to_string(), id);
                Some(Arc::new(ImageClusters::new(km, down, threads)?))
            }
            _ => None,
        };
        let classes = if has(Method::TextBased) {
            let m = read_classnames(&inputs.classnames)?;
            let files: Vec<(PathBuf, String)> = inputs.classnames.iter().map(|f| (f.clone(), String::new())).collect();
            identities.insert("text_based".into(), format!("classnames:{}", files_identity(&files)?));
            Some(Arc::new(m))
        } else {
            None
        };
        let p = &inputs.neg_clip_loss;
        if has(Method::NegClipLoss) {
            if p.batch == 0 || p.repeats == 0 || !(p.temperature.is_finite() && p.temperature > 0.0) {
                return Err(Error::Config(format!(
                    "negCLIPLoss needs a batch ≥ 1, repeats ≥ 1 and a temperature > 0; got {p:?}"
                )));
            }
            identities.insert(
                "neg_clip_loss".into(),
                format!("B={} K={} tau={} seed={}", p.batch, p.repeats, p.temperature, p.seed),
            );
        }
        if has(Method::Flyt) {
            let head = inputs.flyt.as_ref().ok_or_else(|| {
                Error::Config("the flyt method needs a FLYT checkpoint: give --flyt CKPT (or [score] flyt)".into())
            })?;
            let scorer = FlytScorer::load(head, tch::Device::Cpu)?;
            identities.insert("flyt".into(), scorer.digest().to_string());
        }
        Ok(Loaded {
            methods: methods.to_vec(),
            ncl: p.config(),
            downstream,
            clusters,
            classes,
            flyt: if has(Method::Flyt) { inputs.flyt.clone() } else { None },
            identities,
        })
    }

    /// The embedding dimension the inputs fix, if any (the downstream set's).
    pub(crate) fn dim(&self) -> Option<usize> {
        self.downstream.as_ref().map(|(_, d)| *d)
    }

    /// This worker's scorers (a FLYT head is loaded per worker, on `device`).
    pub(crate) fn for_worker(self: &Arc<Self>, device: tch::Device, threads: usize) -> Result<Scorers> {
        let flyt = match &self.flyt {
            Some(p) => Some(Rc::new(FlytScorer::load(p, device)?)),
            None => None,
        };
        Ok(Scorers { loaded: self.clone(), flyt, device, threads })
    }
}

/// One worker's scorers.
pub(crate) struct Scorers {
    loaded: Arc<Loaded>,
    flyt: Option<Rc<FlytScorer>>,
    device: tch::Device,
    threads: usize,
}

impl Scorers {
    /// Whether some method reads embeddings.
    pub(crate) fn needs_embeddings(&self) -> bool {
        self.loaded.methods.iter().any(|m| m.needs_embeddings())
    }

    /// The FLYT head's embedding dimension, if one is loaded.
    pub(crate) fn flyt_dim(&self) -> Option<usize> {
        self.flyt.as_ref().map(|h| h.dim())
    }

    /// The scoring stage: whole-shard embedding batches ([`flyt_operators::GatherShards`]) in, every method's
    /// columns out, each method one operator on the worker that holds the rows.
    pub(crate) fn score<'s>(&self, shards: Stream<'s, u64, Vec<Embeddings>>) -> Stream<'s, u64, Vec<ScoreColumn>> {
        let l = &self.loaded;
        let has = |m: Method| l.methods.contains(&m);
        let mut columns = Vec::new();
        if has(Method::ClipScore) {
            columns.push(shards.clone().score_clip());
        }
        if has(Method::NegClipLoss) {
            columns.push(shards.clone().score_neg_clip_loss(l.ncl.clone(), self.device));
        }
        if let Some((target, dim)) = l.downstream.as_ref().filter(|_| has(Method::NormSim2) || has(Method::NormSimInf))
        {
            columns.push(shards.clone().score_norm_sim(target.clone(), *dim, self.device));
        }
        if let Some(c) = &l.clusters {
            columns.push(shards.clone().score_image_clusters(c.clone(), self.threads));
        }
        if let Some(m) = &l.classes {
            columns.push(shards.clone().score_text_match(m.clone()));
        }
        if has(Method::Basic) {
            columns.push(shards.clone().score_basic());
        }
        if let Some(h) = &self.flyt {
            columns.push(shards.clone().score_flyt(h.clone()));
        }
        shards.scope().concatenate(columns)
    }
}
