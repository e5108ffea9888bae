//! # flyt-eval
//!
//! `flyt eval`: a mini-DataComp built from real data, run through the real product (the curation graph and
//! the jobs of `flyt-pipelines`, called directly), judged by training.
//!
//! 1. Build the data (`data`): a WebDataset pool (about half of it dirty or off-task), the reference's clean
//!    slice, FLYT's labelled downstream set and the evaluation set.
//! 2. Train the reference CLIP (the stand-in for OpenAI's pretrained CLIP) on the clean slice ([`pretrain_clip`]).
//! 3. Curate the pool with the reference: ingest, embed, CLIP score (embeddings stored).
//! 4. The downstream task (`downstream`), the FLYT head (`train`), the image-based centroids (`clusters`).
//! 5. Curate again with the head and every method M-FLYT mixes (`[mflyt] columns`): the pool is re-scored in the
//!    graph from the stored embeddings; the mixer is trained on those score tables (`train`).
//! 6. Curate once per seed with the mixer: the rows replay, are mixed in the dataflow, and SCS (α from the
//!    config) samples the training multiset.
//! 7. For every method and seed, train a fresh small CLIP on the subset with the same budget (`steps × batch`
//!    samples seen) and measure zero-shot top-1 accuracy on the evaluation set.
//! 8. `results.json`, then the report ([`write_report`]).

mod config;
mod data;
mod datasets;
mod pretrain;
mod report;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use flyt::clip::preprocess::preprocess;
use flyt::clip::{Clip, ClipConfig, ClipTokenizer};
use flyt::rng::SplitMix64;
use flyt::train::{FlytConfig, ModelKind};
use flyt::{DeviceSpec, Ingest, ReaderConfig, Record, Uid};
use flyt_pipelines::{
    ClustersConfig, CurateConfig, DownstreamConfig, Method, MixerInputs, NegClipLossParams, ReferenceMode, TrainConfig,
    clusters, curate, downstream, train,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tch::Tensor;

pub use config::{
    BASELINE, DEFAULT_EVAL, DEMO_EVAL, EvalConfig, FlytFullTraining, FlytTraining, METHODS, Methods, MflytTraining,
    MixerInputsName, ModelSize, PoolMix, Reference, Sources, SubsetTraining, TaskSource, Tasks,
};
use data::DataDirs;
pub use data::{Built, CLASSNAMES, DIGIT_NAMES, DOMAINS, KINDS};
pub use pretrain::{
    EpochOrder, ImageTextStore, PretrainConfig, Pretrained, ZeroShot, class_weights, pretrain_clip, zero_shot,
};
pub use report::write as write_report;

/// A model's zero-shot result on one judge task.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaskScore {
    /// The task (`fashion-mnist`, `digits`, …).
    pub task: String,
    /// Top-1 accuracy.
    pub accuracy: f64,
    /// Accuracy per class.
    pub per_class: Vec<f64>,
}

/// One trained model's result.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    /// Method id ([`METHODS`]).
    pub method: String,
    /// Seed.
    pub seed: u64,
    /// The mean of the judge tasks' zero-shot top-1 accuracies (the headline, as DataComp averages its tasks).
    pub accuracy: f64,
    /// Each judge task's result.
    pub tasks: Vec<TaskScore>,
    /// Distinct uids in the subset.
    pub unique: usize,
    /// Samples in the subset (with repeats).
    pub samples: usize,
    /// Of the samples seen in training, the fraction of each pool kind (ground truth).
    pub kinds: BTreeMap<String, f64>,
    /// Per domain (`fashion`, `digits`): of the samples seen whose image is from it, the fraction of each class
    /// (by the image's true class, whatever the caption says); and under `"_share"`, each domain's share of the
    /// samples seen.
    #[serde(default)]
    pub classes: BTreeMap<String, Vec<f64>>,
    /// Mean training loss over the last 10 % of steps.
    pub final_loss: f64,
    /// Training seconds.
    pub seconds: f64,
}

/// Everything `flyt eval` measured, as `results.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalResults {
    /// The configuration.
    pub config: EvalConfig,
    /// Digest of the configuration (runs are reused only under the same digest).
    pub digest: String,
    /// What the data build made.
    pub data: data::Built,
    /// Every (method, seed) result.
    pub runs: Vec<RunResult>,
    /// Seconds per stage.
    pub stages: Vec<(String, f64)>,
    /// The reference's zero-shot accuracy, the mean over the judge tasks (what a "pretrained" CLIP reaches).
    pub reference_accuracy: f64,
    /// The reference's result on each judge task.
    pub reference_tasks: Vec<TaskScore>,
    /// Ingest counts of the curation (accepted, rejected by reason).
    pub ingest: serde_json::Value,
    /// The mixer's columns and weights.
    pub mixer: serde_json::Value,
    /// What the dedup row's curation took out (`duplicates.parquet`'s counts by reason), when it ran.
    #[serde(default)]
    pub dedup: serde_json::Value,
    /// Paths of the artefacts (relative to the output directory).
    pub files: BTreeMap<String, String>,
}

/// Mean and standard error of the mean (sample std / √n; 0 for a single value).
pub fn mean_se(xs: &[f64]) -> (f64, f64) {
    let (m, s) = mean_std(xs);
    (m, if xs.is_empty() { f64::NAN } else { s / (xs.len() as f64).sqrt() })
}

/// Mean and sample standard deviation (0 for a single value).
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = xs.iter().sum::<f64>() / xs.len() as f64;
    if xs.len() < 2 {
        return (m, 0.0);
    }
    let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64;
    (m, v.sqrt())
}

impl EvalResults {
    /// Mean accuracies of `method` over seeds, in seed order.
    pub fn accuracies(&self, method: &str) -> Vec<f64> {
        self.runs.iter().filter(|r| r.method == method).map(|r| r.accuracy).collect()
    }

    /// Accuracies of `method` on judge task `task` over seeds.
    pub fn task_accuracies(&self, method: &str, task: usize) -> Vec<f64> {
        self.runs.iter().filter(|r| r.method == method).filter_map(|r| r.tasks.get(task).map(|t| t.accuracy)).collect()
    }

    /// The judge tasks' names.
    pub fn task_names(&self) -> Vec<String> {
        self.reference_tasks.iter().map(|t| t.task.clone()).collect()
    }

    /// Per seed both ran: `method`'s mean accuracy minus [`BASELINE`]'s (the same seed trains from the same
    /// initialisation in the same order, so the pairing removes that variance).
    pub fn paired(&self, method: &str) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|r| r.method == method)
            .filter_map(|r| {
                self.runs.iter().find(|b| b.method == BASELINE && b.seed == r.seed).map(|b| r.accuracy - b.accuracy)
            })
            .collect()
    }

    /// The accuracy table as text: method, mean ± standard error over seeds (and per task), the paired difference
    /// against CLIP score top-k with its standard error, unique uids and the clean share of the first seed's
    /// subset.
    pub fn table(&self) -> String {
        let tasks = self.task_names();
        let mut s = format!("{:<28} {:>15}", "method", "mean top-1");
        for t in &tasks {
            s.push_str(&format!(" {:>15}", t));
        }
        s.push_str(&format!(" {:>16} {:>6} {:>8} {:>6}\n", "vs CLIP top-k", "seeds", "unique", "clean"));
        for (m, label) in METHODS {
            let acc = self.accuracies(m);
            if acc.is_empty() {
                continue;
            }
            let pm = |xs: &[f64]| {
                let (mean, se) = mean_se(xs);
                format!("{:.2} ± {:.2}", 100.0 * mean, 100.0 * se)
            };
            s.push_str(&format!("{label:<28} {:>15}", pm(&acc)));
            for i in 0..tasks.len() {
                s.push_str(&format!(" {:>15}", pm(&self.task_accuracies(m, i))));
            }
            let d = self.paired(m);
            let diff = if m == BASELINE || d.is_empty() {
                "—".to_string()
            } else {
                let (mean, se) = mean_se(&d);
                format!("{:+.2} ± {:.2}", 100.0 * mean, 100.0 * se)
            };
            let first = self.runs.iter().find(|r| r.method == m).expect("non-empty");
            let clean = first.kinds.get("clean").copied().unwrap_or(0.0);
            s.push_str(&format!(" {diff:>16} {:>6} {:>8} {:>5.1}%\n", acc.len(), first.unique, 100.0 * clean));
        }
        s.push_str(&format!(
            "(mean ± standard error over seeds; the reference CLIP, trained on a web-like slice: {:.2}",
            100.0 * self.reference_accuracy
        ));
        for t in &self.reference_tasks {
            s.push_str(&format!(", {} {:.2}", t.task, 100.0 * t.accuracy));
        }
        s.push_str(")\n");
        s
    }
}

/// The training job FLYT and M-FLYT share here: the budget, the two learning rates, a warmup of a tenth of the
/// steps, and one checkpoint at the end.
fn lookahead(
    kind: ModelKind,
    steps: usize,
    batch: usize,
    down_batch: usize,
    ref_lr: f64,
    score_lr: f64,
) -> TrainConfig {
    let training =
        FlytConfig { steps, batch, down_batch, ref_lr, score_lr, warmup: (steps / 10).max(1), ..FlytConfig::default() };
    TrainConfig { kind, training, checkpoint_every: steps, ..TrainConfig::default() }
}

fn digest_of(v: &serde_json::Value) -> String {
    Sha256::digest(v.to_string().as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The small CLIP of the configuration.
pub fn clip_config(m: &config::ModelSize) -> anyhow::Result<ClipConfig> {
    let c: ClipConfig = serde_json::from_value(json!({
        "text_config": {"hidden_size": m.width, "intermediate_size": 4 * m.width, "num_hidden_layers": m.layers,
            "num_attention_heads": m.heads, "max_position_embeddings": m.context},
        "vision_config": {"hidden_size": m.width, "intermediate_size": 4 * m.width, "num_hidden_layers": m.layers,
            "num_attention_heads": m.heads, "image_size": m.image_size, "patch_size": m.patch},
        "projection_dim": m.embed_dim,
    }))?;
    c.validate().map_err(|e| anyhow::anyhow!("[model]: {e}"))?;
    Ok(c)
}

/// Examples read from shards: uids, preprocessed images, captions and labels (what a sample lacks is `None`).
#[derive(Debug, Default)]
pub struct Examples {
    /// Uids in read order.
    pub uids: Vec<Uid>,
    /// `crop × crop × 3` images.
    pub images: Vec<Vec<u8>>,
    /// Captions.
    pub captions: Vec<Option<String>>,
    /// Labels.
    pub labels: Vec<Option<i64>>,
    /// Samples left out (rejected by ingest or undecodable), by reason.
    pub rejected: BTreeMap<String, usize>,
}

/// Reads every shard under `dir` into [`Examples`] at `crop` pixels (ingest's checks, a caption required unless
/// `labelled`).
pub fn read_examples(dir: &Path, crop: usize, labelled: bool) -> anyhow::Result<Examples> {
    let shards = flyt_pipelines::expand_shards(&[dir.to_path_buf()])?;
    if shards.is_empty() {
        bail!("no shards in {}", dir.display());
    }
    let reader = if labelled {
        ReaderConfig::default().require_caption(false).require_label(true)
    } else {
        ReaderConfig::default()
    };
    let mut ingest = Ingest::new(reader);
    let mut ex = Examples::default();
    for shard in &shards {
        ingest.read_shard(shard, |r| match r {
            Record::Sample(smp) => match smp.image().map(|b| preprocess(b, crop, crop)) {
                Some(Ok(img)) => {
                    ex.uids.push(smp.uid);
                    ex.images.push(img);
                    ex.captions.push(smp.caption.clone());
                    ex.labels.push(smp.label);
                }
                Some(Err(_)) => *ex.rejected.entry("undecodable image".into()).or_default() += 1,
                None => *ex.rejected.entry("no image".into()).or_default() += 1,
            },
            Record::Rejected(r) => *ex.rejected.entry(r.reason.to_string()).or_default() += 1,
        })?;
    }
    Ok(ex)
}

/// A labelled set: images, labels and `C × T × L` prompt ids.
struct Labelled {
    images: Vec<Vec<u8>>,
    labels: Vec<i64>,
    prompts: Tensor,
}

fn read_lines(p: &Path) -> anyhow::Result<Vec<String>> {
    Ok(std::fs::read_to_string(p)
        .with_context(|| format!("reading {}", p.display()))?
        .lines()
        .map(|l| l.split(',').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

fn labelled(
    shards: &Path,
    classnames: &Path,
    templates: &[String],
    tok: &ClipTokenizer,
    crop: usize,
) -> anyhow::Result<Labelled> {
    let ex = read_examples(shards, crop, true)?;
    let classes = read_lines(classnames)?;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (img, l) in ex.images.into_iter().zip(ex.labels) {
        match l {
            Some(l) if l >= 0 && (l as usize) < classes.len() => {
                images.push(img);
                labels.push(l);
            }
            _ => bail!("{}: a sample without a label in 0..{} (`cls`)", shards.display(), classes.len()),
        }
    }
    let texts: Vec<String> = classes.iter().flat_map(|c| templates.iter().map(move |t| t.replace("{c}", c))).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let prompts = tok.encode_batch(&refs).view([classes.len() as i64, templates.len() as i64, -1]);
    Ok(Labelled { images, labels, prompts })
}

/// Options of a run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Output directory.
    pub out: PathBuf,
    /// Timely workers for the curation.
    pub workers: usize,
    /// Print progress.
    pub verbose: bool,
    /// Device for every model: `cpu`, `auto` (CUDA when available), `cuda` or `cuda:N`.
    pub device: DeviceSpec,
}

struct Stages {
    list: Vec<(String, f64)>,
    verbose: bool,
    started: Instant,
}

impl Stages {
    fn time<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> anyhow::Result<T>) -> anyhow::Result<T> {
        if self.verbose {
            eprintln!("[eval {:>6.1}s] {name}", self.started.elapsed().as_secs_f64());
        }
        let t = Instant::now();
        let r = f(self)?;
        self.list.push((name.to_string(), t.elapsed().as_secs_f64()));
        Ok(r)
    }
    fn say(&self, msg: &str) {
        if self.verbose {
            eprintln!("[eval {:>6.1}s]   {msg}", self.started.elapsed().as_secs_f64());
        }
    }
}

/// The training multiset (indices into the pool's examples) of `method` for `seed`: every accepted sample (no
/// filter), a seeded random fraction, the top fraction by a score column of the final curation's tables, an SCS
/// subset a curation wrote (`scs(method, seed)`), or every clean on-task sample (the ceiling).
#[allow(clippy::too_many_arguments)]
fn multiset(
    method: &str,
    seed: u64,
    cfg: &EvalConfig,
    scores: &BTreeMap<Uid, [f32; 3]>,
    row_of: &HashMap<Uid, usize>,
    n_examples: usize,
    clean_rows: &[usize],
    scs: &dyn Fn(&str, u64) -> anyhow::Result<Vec<Uid>>,
) -> anyhow::Result<Vec<usize>> {
    let k = ((cfg.methods.fraction * scores.len() as f64).round() as usize).max(1);
    let top = |col: usize| -> Vec<usize> {
        let mut v: Vec<(&Uid, f32)> = scores.iter().map(|(u, s)| (u, s[col])).filter(|(_, x)| x.is_finite()).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
        v.iter().take(k).filter_map(|(u, _)| row_of.get(u).copied()).collect()
    };
    Ok(match method {
        "no-filter" => (0..n_examples).collect(),
        "random" => {
            let mut all: Vec<usize> = (0..n_examples).collect();
            SplitMix64::new(seed ^ 0x7a4d_0000).shuffle(&mut all);
            all.truncate(k);
            all
        }
        "clip-top" => top(0),
        "flyt-top" => top(1),
        "mflyt-top" => top(2),
        "clip-scs" | "flyt-scs" | "flyt-full-scs" | "mflyt-scs" | "mflyt-dedup-scs" => {
            let uids = scs(method, seed)?;
            let rows: Vec<usize> = uids.iter().filter_map(|u| row_of.get(u).copied()).collect();
            if rows.len() != uids.len() {
                bail!("the {method} subset names {} uids not in the pool", uids.len() - rows.len());
            }
            rows
        }
        "ceiling" => clean_rows.to_vec(),
        m => bail!("unknown method {m}"),
    })
}

/// A judge task read for zero-shot evaluation.
struct JudgeTask {
    name: String,
    set: Labelled,
}

fn write_templates(path: &Path, templates: &[String]) -> anyhow::Result<()> {
    std::fs::write(path, templates.iter().map(|t| format!("{t}\n")).collect::<String>())
        .with_context(|| format!("writing {}", path.display()))
}

/// Zero-shot top-1 of `model` on every judge task.
fn judge(model: &Clip, tasks: &[JudgeTask], crop: usize, dev: tch::Device) -> anyhow::Result<Vec<TaskScore>> {
    tasks
        .iter()
        .map(|t| {
            let z = zero_shot(model, &t.set.images, crop, &t.set.labels, &t.set.prompts, dev, 512)?;
            Ok(TaskScore { task: t.name.clone(), accuracy: z.accuracy, per_class: z.per_class })
        })
        .collect()
}

fn mean_of(tasks: &[TaskScore]) -> f64 {
    tasks.iter().map(|t| t.accuracy).sum::<f64>() / tasks.len().max(1) as f64
}

/// Builds (or reuses) only the evaluation's data under `root` (`root/pool` the pool's shards, `root/truth.csv`
/// each pool sample's kind); returns the pool's counts per kind.
pub fn build_data(cfg: &EvalConfig, root: &Path) -> anyhow::Result<BTreeMap<String, usize>> {
    let dirs = data::DataDirs { root: root.to_path_buf() };
    Ok(data::build(cfg, &dirs, &mut |_| {})?.kinds)
}

/// Runs the evaluation; results and the report land in `opts.out`.
pub fn run(cfg: EvalConfig, opts: &RunOptions) -> anyhow::Result<EvalResults> {
    cfg.validate()?;
    let out = opts.out.clone();
    let dev = opts.device.resolve()?;
    let dev_name = opts.device.to_string();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let digest = digest_of(&json!({"config": cfg, "device": opts.device}));
    let mut st = Stages { list: Vec::new(), verbose: opts.verbose, started: Instant::now() };
    let dirs = DataDirs { root: out.join("data") };
    let built = st.time("build the mini-DataComp", |st| data::build(&cfg, &dirs, &mut |m| st.say(m)))?;
    st.say(&format!("pool kinds: {:?}", built.kinds));
    let mcfg = clip_config(&cfg.model)?;
    let crop = cfg.model.image_size as usize;
    let tok = ClipTokenizer::from_open_clip_vocab(&cfg.sources.bpe)
        .with_context(|| format!("the CLIP vocabulary {} (./x setup fetches it)", cfg.sources.bpe.display()))?
        .with_context(cfg.model.context as usize);
    let threads = tch::get_num_threads();
    let runs_method = |m: &str| cfg.methods.run.iter().any(|r| r == m);

    // the labelled sets: the downstream tasks (shards, class names, templates) and the judge's tasks
    let default_templates = cfg.tasks.templates.clone();
    let downs: Vec<(PathBuf, PathBuf, Vec<String>)> = cfg
        .tasks
        .downstream
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let dir = dirs.downstream(i);
            (dirs.task_shards(t, &dir), dirs.classnames(t, &dir), t.templates(&default_templates).to_vec())
        })
        .collect();
    let judges: Vec<JudgeTask> = st.time("read the judge's tasks", |_| {
        cfg.tasks
            .eval
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let dir = dirs.eval(i);
                let set = labelled(
                    &dirs.task_shards(t, &dir),
                    &dirs.classnames(t, &dir),
                    t.templates(&default_templates),
                    &tok,
                    crop,
                )?;
                Ok(JudgeTask { name: t.name(), set })
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;

    // 2. the reference CLIP, trained on its web-like slice
    let ref_dir = out.join("reference");
    let ref_stamp = digest_of(
        &json!({"data": built.digest, "model": cfg.model, "reference": cfg.reference, "threads": threads, "device": dev_name}),
    );
    let reference_tasks = st.time("train the reference CLIP", |st| {
        let stamp_path = ref_dir.join("flyt-eval.json");
        if std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(ref_stamp.as_str())
            && ref_dir.join("model.safetensors").exists()
        {
            st.say("reusing the trained reference");
        } else {
            let ex = read_examples(&dirs.reference(), crop, false)?;
            let caps: Vec<&str> = ex.captions.iter().map(|c| c.as_deref().unwrap_or("")).collect();
            let store = ImageTextStore { images: ex.images, ids: tok.encode_batch(&caps), crop };
            let all: Vec<usize> = (0..store.images.len()).collect();
            let pc = PretrainConfig {
                steps: cfg.reference.steps,
                batch: cfg.reference.batch,
                lr: cfg.reference.lr,
                warmup: (cfg.reference.steps / 10).max(1),
                seed: 1234,
                ..PretrainConfig::default()
            };
            let every = (pc.steps / 5).max(1);
            let p = pretrain_clip(&mcfg, &store, &all, &pc, dev, |i, l| {
                if (i + 1) % every == 0 {
                    st.say(&format!("reference step {}/{}: loss {l:.3}", i + 1, pc.steps));
                }
            })?;
            p.model.save(&p.vs, &ref_dir)?;
            ClipTokenizer::write_hf_vocab(&cfg.sources.bpe, &ref_dir)?;
            std::fs::write(&stamp_path, &ref_stamp)?;
        }
        let (_vs, model) = Clip::load(&ref_dir, dev)?;
        judge(&model, &judges, crop, dev)
    })?;
    let reference_accuracy = mean_of(&reference_tasks);
    st.say(&format!("reference zero-shot accuracy {:.2}% (mean of the judge's tasks)", 100.0 * reference_accuracy));

    // 3. curation, pass 1: ingest, embed, CLIP score
    let cur = out.join("curate");
    let timely = || timely::Config::process(opts.workers.max(1));
    let mut base = CurateConfig::default();
    base.input.shards = vec![dirs.pool()];
    base.embed.model = Some(ref_dir.clone());
    base.embed.device = opts.device;
    base.output.dir = cur.clone();
    base.sample.alpha = cfg.methods.alpha;
    let budget = (cfg.train.steps * cfg.train.batch) as u64;
    base.sample.target = Some(budget);
    let first = st.time("curate: ingest, embed, CLIP score", |_| Ok(curate(base.clone(), timely())?))?;
    st.say(&first.line);
    let ingest = first.manifest.get("ingest").cloned().unwrap_or_default();

    // 4. the downstream tasks, the FLYT heads (embedding reference; full reference when its row runs), the
    //    image-based centroids
    let fdir = out.join("flyt");
    std::fs::create_dir_all(&fdir)?;
    let template_files: Vec<PathBuf> = (0..downs.len()).map(|i| fdir.join(format!("templates-{i}.txt"))).collect();
    for ((_, _, templates), f) in downs.iter().zip(&template_files) {
        write_templates(f, templates)?;
    }
    let down_npz: Vec<PathBuf> = (0..downs.len()).map(|i| fdir.join(format!("downstream-{i}.npz"))).collect();
    // what the lookahead learns from ([tasks] learn; default every task)
    let learned = cfg.tasks.learned();
    let learn_npz: Vec<PathBuf> = learned.iter().map(|&i| down_npz[i].clone()).collect();
    let pool_emb = cur.join("embeddings");
    st.time("flyt downstream", |_| {
        for (((shards, names, _), npz), tf) in downs.iter().zip(&down_npz).zip(&template_files) {
            downstream(&DownstreamConfig {
                model: ref_dir.clone(),
                classnames: Some(names.clone()),
                templates: Some(tf.clone()),
                task: None,
                datacomp_eval_dir: None,
                out: npz.clone(),
                captions: false,
                batch_size: 256,
                device: opts.device,
                shards: vec![shards.clone()],
            })?;
        }
        Ok(())
    })?;
    let head = fdir.join("head");
    let f = &cfg.flyt;
    st.time("flyt train flyt", |st| {
        let _ = std::fs::remove_dir_all(&head);
        let summary = train(&TrainConfig {
            pool: Some(pool_emb.clone()),
            downstream: learn_npz.clone(),
            out: head.clone(),
            cos_sim_init: f.cos_sim_init,
            device: opts.device,
            ..lookahead(ModelKind::Flyt, f.steps, f.batch, f.down_batch, f.ref_lr, f.score_lr)
        })?;
        for n in summary.notes.iter().filter(|n| n.starts_with("warning")) {
            st.say(n);
        }
        Ok(())
    })?;
    let head_ckpt = head.join("checkpoint.safetensors");
    let full_head = fdir.join("head-full");
    if let (Some(ff), true) = (&cfg.flyt_full, runs_method("flyt-full-scs")) {
        st.time("flyt train flyt --reference full", |_| {
            let _ = std::fs::remove_dir_all(&full_head);
            train(&TrainConfig {
                reference: ReferenceMode::Full,
                model: Some(ref_dir.clone()),
                shards: vec![dirs.pool()],
                down_shards: learned.iter().map(|&i| downs[i].0.clone()).collect(),
                classnames: learned.iter().map(|&i| downs[i].1.clone()).collect(),
                templates: learned.iter().map(|&i| template_files[i].clone()).collect(),
                out: full_head.clone(),
                cos_sim_init: f.cos_sim_init,
                device: opts.device,
                ..lookahead(ModelKind::Flyt, ff.steps, ff.batch, ff.down_batch, ff.ref_lr, ff.score_lr)
            })?;
            Ok(())
        })?;
    }
    let centroids = fdir.join("centroids.npy");
    st.time("flyt clusters", |_| {
        clusters(&ClustersConfig { pool: pool_emb.clone(), out: centroids.clone(), ..Default::default() })?;
        Ok(())
    })?;
    let subsets = out.join("subsets");
    std::fs::create_dir_all(&subsets)?;
    let scs_path = |method: &str, seed: u64| subsets.join(format!("{method}.seed{seed}.npy"));
    // one curation per seed sampling `column` (or the mixer) with SCS; its subset kept as `method`'s
    let sample_per_seed = |st: &mut Stages, method: &str, c: &CurateConfig| -> anyhow::Result<()> {
        for &seed in &cfg.train.seeds {
            let mut c = c.clone();
            c.sample.seed = seed;
            let summary = st.time(&format!("curate: {method} (seed {seed})"), |_| Ok(curate(c, timely())?))?;
            st.say(&summary.line);
            let (from, to) = (cur.join("subset.npy"), scs_path(method, seed));
            std::fs::copy(&from, &to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        }
        Ok(())
    };
    if runs_method("flyt-full-scs") {
        // the full-reference head scores the pool in the graph; SCS samples its scores
        let mut c = base.clone();
        c.score.flyt = Some(full_head.join("checkpoint.safetensors"));
        c.score.methods = Some(vec![Method::ClipScore, Method::Flyt]);
        c.score.column = Some("flyt".into());
        sample_per_seed(&mut st, "flyt-full-scs", &c)?;
    }

    // 5. curation, pass 2: every column the mixer mixes, computed in the graph (re-scored from the stored
    //    embeddings); the mixer is trained on those score tables
    let m = &cfg.mflyt;
    let mut methods = vec![Method::ClipScore, Method::Flyt];
    for c in &m.columns {
        let method = Method::of_column(c)
            .ok_or_else(|| anyhow::anyhow!("[mflyt] columns: {c:?} is no scoring method's column"))?;
        if !methods.contains(&method) {
            methods.push(method);
        }
    }
    let mut scored = base.clone();
    scored.score.flyt = Some(head_ckpt.clone());
    scored.score.methods = Some(methods);
    scored.score.downstream = down_npz.iter().map(|p| format!("{}:image", p.display())).collect();
    scored.score.classnames = downs.iter().map(|d| d.1.clone()).collect();
    scored.score.centroids = Some(centroids.clone());
    scored.score.neg_clip_loss = NegClipLossParams { batch: m.ncl_batch, ..Default::default() };
    let summary = st.time("curate: every method's column", |_| Ok(curate(scored.clone(), timely())?))?;
    st.say(&summary.line);
    let mdir = out.join("mflyt");
    let mixer = mdir.join("mixer");
    st.time("flyt train mflyt", |_| {
        let _ = std::fs::remove_dir_all(&mdir);
        let layout = cur.join("shards");
        let mut tables: Vec<PathBuf> = std::fs::read_dir(&layout)
            .with_context(|| format!("reading {}", layout.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".scores.parquet"))
            .collect();
        tables.sort();
        train(&TrainConfig {
            kind: ModelKind::Mflyt,
            pool: Some(pool_emb.clone()),
            downstream: learn_npz.clone(),
            scores: tables,
            columns: m.columns.clone(),
            mixer_inputs: match m.mixer_inputs {
                config::MixerInputsName::Raw => MixerInputs::Raw,
                config::MixerInputsName::Zscore => MixerInputs::Zscore,
            },
            out: mixer.clone(),
            device: opts.device,
            ..lookahead(ModelKind::Mflyt, m.steps, m.batch, m.down_batch, m.ref_lr, m.score_lr)
        })?;
        Ok(())
    })?;
    let mix_ckpt = mixer.join("checkpoint.safetensors");
    let mixer_json: serde_json::Value = std::fs::read(mixer.join("checkpoint.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();

    // 6. curation, pass 3 (once per SCS row and seed): the rows replay and SCS samples the row's score — CLIP
    //    score, the FLYT head's, or the mixer's mix of the columns in the dataflow
    for (method, column) in [("clip-scs", "clip_score"), ("flyt-scs", "flyt")] {
        if runs_method(method) {
            let mut c = scored.clone();
            c.score.column = Some(column.into());
            sample_per_seed(&mut st, method, &c)?;
        }
    }
    let mut mixed = scored.clone();
    mixed.score.mixer = Some(mix_ckpt.clone());
    if runs_method("mflyt-scs") {
        sample_per_seed(&mut st, "mflyt-scs", &mixed)?;
    }
    let mut dedup = serde_json::Value::Null;
    if runs_method("mflyt-dedup-scs") {
        // the same mix, after exact content dedup and SemDeDup over the same centroids (last, so the
        // curation's duplicates.parquet is this row's)
        let mut c = mixed.clone();
        c.dedup.exact = true;
        c.dedup.semantic =
            Some(flyt_pipelines::SemanticDedup { centroids: centroids.clone(), epsilon: cfg.methods.dedup_epsilon });
        sample_per_seed(&mut st, "mflyt-dedup-scs", &c)?;
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(cur.join("manifest.json"))?)?;
        dedup = m["dedup"].clone();
        st.say(&format!("dedup: {}", dedup["by_reason"]));
    }

    // the score table of the final curation: clip_score, flyt (the embedding head), the mixed score
    let scores = report::read_scores(&out)?;

    // 7. train a CLIP per (method, seed)
    let pool = st.time("read the pool for training", |_| read_examples(&dirs.pool(), crop, false))?;
    let truth = data::read_truth(&dirs.truth())?;
    let mut row_of: HashMap<Uid, usize> = HashMap::new();
    let mut keep: Vec<usize> = Vec::new();
    for (i, (u, c)) in pool.uids.iter().zip(&pool.captions).enumerate() {
        // the samples ingest accepts (a caption is required), first of each uid
        if c.is_some() && !row_of.contains_key(u) {
            row_of.insert(*u, keep.len());
            keep.push(i);
        }
    }
    let caps: Vec<&str> = keep.iter().map(|&i| pool.captions[i].as_deref().unwrap_or("")).collect();
    let store = ImageTextStore {
        ids: tok.encode_batch(&caps),
        images: keep.iter().map(|&i| pool.images[i].clone()).collect(),
        crop,
    };
    let uid_at: Vec<Uid> = keep.iter().map(|&i| pool.uids[i]).collect();
    let clean_rows: Vec<usize> =
        (0..uid_at.len()).filter(|&r| truth.get(&uid_at[r]).is_some_and(|t| t.kind == "clean")).collect();
    let results_path = out.join("results.json");
    let previous: Vec<RunResult> = std::fs::read(&results_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<EvalResults>(&b).ok())
        .filter(|r| r.digest == digest)
        .map(|r| r.runs)
        .unwrap_or_default();
    let scs_subset =
        |method: &str, seed: u64| -> anyhow::Result<Vec<Uid>> { Ok(flyt::read_subset(scs_path(method, seed))?) };
    let mut results = EvalResults {
        config: cfg.clone(),
        digest: digest.clone(),
        data: built.clone(),
        runs: Vec::new(),
        stages: Vec::new(),
        reference_accuracy,
        reference_tasks,
        ingest,
        mixer: mixer_json,
        dedup,
        files: BTreeMap::new(),
    };
    for &seed in &cfg.train.seeds {
        for (method, label) in METHODS {
            if !runs_method(method) {
                continue;
            }
            if let Some(r) = previous.iter().find(|r| r.method == method && r.seed == seed) {
                st.say(&format!("{label}, seed {seed}: reusing {:.2}%", 100.0 * r.accuracy));
                results.runs.push(r.clone());
                continue;
            }
            let ms = multiset(method, seed, &cfg, &scores, &row_of, store.images.len(), &clean_rows, &scs_subset)?;
            if !method.ends_with("-scs") {
                // every row's training multiset as a DataComp subset file (the SCS rows' are the curations' own)
                let uids: Vec<Uid> = ms.iter().map(|&i| uid_at[i]).collect();
                flyt::write_subset(scs_path(method, seed), &uids)?;
            }
            let mut kinds: BTreeMap<String, f64> = BTreeMap::new();
            let mut classes: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            let mut share = vec![0f64; data::DOMAINS.len()];
            for &i in &ms {
                let t = truth.get(&uid_at[i]);
                let k = t.map(|t| t.kind.clone()).unwrap_or_else(|| "unknown".into());
                *kinds.entry(k).or_default() += 1.0 / ms.len() as f64;
                if let Some(t) = t
                    && let (Some(d), Some(c)) = (&t.domain, t.class)
                    && let Some(di) = data::DOMAINS.iter().position(|(n, _)| n == d)
                {
                    classes.entry(d.clone()).or_insert_with(|| vec![0.0; 10])[c.min(9)] += 1.0;
                    share[di] += 1.0 / ms.len() as f64;
                }
            }
            for v in classes.values_mut() {
                let total: f64 = v.iter().sum();
                v.iter_mut().for_each(|c| *c /= total.max(1.0));
            }
            classes.insert("_share".into(), share);
            let mut uniq = ms.clone();
            uniq.sort_unstable();
            uniq.dedup();
            let pc = PretrainConfig {
                steps: cfg.train.steps,
                batch: cfg.train.batch,
                lr: cfg.train.lr,
                warmup: cfg.train.warmup,
                seed,
                ..PretrainConfig::default()
            };
            let r = st.time(&format!("train a CLIP on {label} (seed {seed})"), |_| {
                let t = Instant::now();
                let p = pretrain_clip(&mcfg, &store, &ms, &pc, dev, |_, _| {})?;
                let seconds = t.elapsed().as_secs_f64();
                let tasks = judge(&p.model, &judges, crop, dev)?;
                let tail = (p.losses.len() / 10).max(1);
                let final_loss = p.losses[p.losses.len() - tail..].iter().sum::<f64>() / tail as f64;
                Ok(RunResult {
                    method: method.into(),
                    seed,
                    accuracy: mean_of(&tasks),
                    tasks,
                    unique: uniq.len(),
                    samples: ms.len(),
                    kinds: kinds.clone(),
                    classes: classes.clone(),
                    final_loss,
                    seconds,
                })
            })?;
            let per: Vec<String> = r.tasks.iter().map(|t| format!("{} {:.2}%", t.task, 100.0 * t.accuracy)).collect();
            st.say(&format!(
                "{label}, seed {seed}: {:.2}% ({}; {} unique of {})",
                100.0 * r.accuracy,
                per.join(", "),
                r.unique,
                r.samples
            ));
            results.runs.push(r);
            results.stages = st.list.clone();
            std::fs::write(&results_path, serde_json::to_vec_pretty(&results)?)?;
        }
    }
    results.stages = st.list.clone();
    for (k, v) in [
        ("pool", "data/pool"),
        ("truth", "data/truth.csv"),
        ("reference", "reference"),
        ("curation", "curate"),
        ("flyt head", "flyt/head/checkpoint.safetensors"),
        ("mixer", "mflyt/mixer/checkpoint.safetensors"),
        ("subsets", "subsets"),
    ] {
        results.files.insert(k.into(), v.into());
    }
    if runs_method("flyt-full-scs") {
        results.files.insert("flyt head (full reference)".into(), "flyt/head-full/checkpoint.safetensors".into());
    }
    std::fs::write(&results_path, serde_json::to_vec_pretty(&results)?)?;
    Ok(results)
}
