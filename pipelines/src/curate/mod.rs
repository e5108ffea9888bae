//! `flyt curate`: curation as a timely dataflow graph.
//!
//! ```text
//! WatchShards ─ jobs, one timestamp per shard ─▶ exchange by shard name
//!   ├─ tar ──▶ DecodeShards ──▶ EmbedClip ─┐                              (pixels stay on the worker)
//!   ├─ sidecar .parquet + .npz ─▶ ReadSidecars ─┴─▶ GatherShards ─▶ one operator per scoring method
//!   │                                 (ScoreClip, ScoreNegClipLoss, ScoreNormSim, ScoreImageClusters,
//!   │                                  ScoreTextMatch, ScoreBasic, ScoreFlyt) ─▶ AssembleShards ─▶ CommitShards
//!   │                                                               (per-shard files, then the commit record)
//!   ├─ committed shard ─▶ ReplayShards (rows from its score table; retractions of replaced shards)
//!   └─ score file ─▶ ReadScoreFiles
//! pool rows (uid, shard, scores, content digests) ─▶ DedupUids ─▶ DedupContent ([dedup] exact)
//!   ─▶ SemDedup ([dedup.semantic]: each row's embedding read back from its shard, by cluster) ─▶ MixScores (M-FLYT over the methods' columns,
//!   ⋈ external scores on uid) ─▶ SoftCapSample ─▶ PublishSubset: OUT/subset.npy, then OUT/manifest.json
//! ```
//!
//! Exactly-once: a shard is committed when its record `OUT/shards/<name>.json` exists (written last,
//! atomically, after its score table). A restart replays committed shards from their score tables and reads
//! only the rest; a shard whose columns were made by other methods (or other inputs of a method) is re-scored
//! from its stored embeddings. The pool holds one row per uid, so nothing counts twice. Outputs are pure
//! functions of the input shards, the models and the seed, so they do not depend on arrival order, worker count
//! or restarts.

mod config;
mod display;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use differential_dataflow::AsCollection;
use flyt::ReaderConfig;
use flyt::clip::{Embedder, EmbedderConfig};
use flyt::curation::Layout;
use flyt::train::MixWeights;
use flyt_operators::{
    CommitOptions, CommitShards, Counters, DedupContent, DedupUids, Duplicate, DuplicateReason, Identities, Mix,
    MixScores, PoolRows, PublishOptions, PublishSubset, ReadScoreFiles, ReplayShards, SemDedup, SemDedupOptions,
    SinkEvent, SoftCapSample, WatchOptions, WatchShards, Watcher,
};
use timely::dataflow::operators::core::{Concat as _, Concatenate, Exchange as _};
use timely::dataflow::operators::vec::Map as _;

pub use config::{Arrival, CurateConfig, Dedup, Embed, EmbeddingSource, Input, Output, Sample, Score, SemanticDedup};

use crate::graph::Front;
use crate::methods::Loaded;
use crate::{Context, Error, Result};

/// Set by SIGINT/SIGTERM (see [`install_stop_signals`]): a run stops taking new shards, interrupts the reads in
/// flight (those shards stay uncommitted and are listed as `interrupted` in the manifest), publishes what is
/// committed and exits.
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
    // In-flight shard reads and digests end at their next block (the shards stay uncommitted: "interrupted").
    flyt::request_stop();
}

/// Routes SIGINT and SIGTERM to [`STOP`].
pub fn install_stop_signals() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe; `signal` is given a valid
    // `extern "C" fn(c_int)` that lives for the whole program.
    unsafe {
        libc::signal(libc::SIGINT, on_stop_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_stop_signal as *const () as libc::sighandler_t);
    }
}

/// What a finished run reports (process 0).
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// The manifest as published last.
    pub manifest: serde_json::Value,
    /// The status line at the end.
    pub line: String,
    /// Seconds per stage in this process (see [`Counters::stage_seconds`]).
    pub stages: Vec<(&'static str, f64)>,
}

/// The identity of a Hugging Face CLIP folder: its config's and weights' digests.
pub(crate) fn clip_identity(dir: &std::path::Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for f in ["config.json", "model.safetensors"] {
        h.update(flyt::file_sha256(&dir.join(f))?.as_bytes());
    }
    Ok(format!("clip:{:x}", h.finalize()))
}

/// Everything a worker needs, shared.
struct Shared {
    config: CurateConfig,
    identities: Identities,
    loaded: Arc<Loaded>,
    mix: Mix,
    device: tch::Device,
    counters: Arc<Counters>,
    embed_threads: usize,
    config_json: serde_json::Value,
    models_json: serde_json::Value,
    semantic: Option<SemDedupOptions>,
}

/// Runs the curation graph on this process's share of a timely computation (`timely::Config::thread()`,
/// `process(n)`, or a cluster). Returns when the inputs are done (or, following, when stopped).
pub fn run(config: CurateConfig, timely_config: timely::Config) -> Result<Summary> {
    config.validate()?;
    let layout = Layout::new(&config.output.dir);
    layout.create()?;
    let device = config.embed.device.resolve()?;
    let clip = match &config.embed.model {
        Some(m) => Some(clip_identity(m).context_with(|| format!("the CLIP model {}", m.display()))?),
        None => None,
    };
    let methods = config.score.methods();
    let columns = config.score.columns();
    let (process, threads) = match &timely_config.communication {
        timely::CommunicationConfig::Cluster { process, threads, .. } => (*process, *threads),
        timely::CommunicationConfig::Process(n) | timely::CommunicationConfig::ProcessBinary(n) => (0, *n),
        _ => (0, 1),
    };
    // One run per output directory (per process index of a cluster run): a second gets an error naming the
    // holder instead of racing the first's files.
    let _lock = layout.lock(process)?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let embed_threads = (cores / threads.max(1)).max(1);
    let loaded = Arc::new(Loaded::load(&methods, &config.score.inputs(config.input.prefix.clone()), embed_threads)?);
    let mix = match &config.score.mixer {
        Some(p) => Mix::Linear { weights: MixWeights::load(p)?, internal: columns.clone() },
        None => {
            let want = config.score.column.clone().unwrap_or_else(|| {
                if columns.iter().any(|c| c == "flyt") { "flyt".into() } else { "clip_score".into() }
            });
            let i = columns.iter().position(|c| *c == want).ok_or_else(|| {
                Error::Config(format!("[score] column {want:?} is not computed here (have: {})", columns.join(", ")))
            })?;
            Mix::Column(i)
        }
    };
    let external = mix.external_columns();
    if !external.is_empty() && config.input.scores.is_none() {
        return Err(Error::Config(format!(
            "the mixer uses columns this pipeline does not compute ({}): give their score files with --scores DIR, \
             or compute them with [score] methods",
            external.join(", ")
        )));
    }
    let counters = Arc::new(Counters::default());
    let semantic = match &config.dedup.semantic {
        Some(s) => {
            let km = crate::methods::read_centroids(&s.centroids)?;
            let digest = flyt::file_sha256(&s.centroids)?;
            Some((
                SemDedupOptions {
                    layout: layout.clone(),
                    centroids: Arc::new(km),
                    epsilon: s.epsilon,
                    counters: counters.semdedup.clone(),
                },
                digest,
            ))
        }
        None => None,
    };
    let identities = Identities {
        embeddings: config.input.embeddings,
        arrival: config.input.arrival,
        clip: clip.clone(),
        prefix: config.input.prefix.clone(),
        columns: columns.clone(),
        methods: loaded.identities.clone(),
        content: config.dedup.exact,
    };
    let models_json = serde_json::json!({
        "clip": clip,
        "flyt": loaded.identities.get("flyt"),
        "methods": loaded.identities,
        "semdedup": semantic.as_ref().map(|(o, d)| serde_json::json!({"centroids": d, "k": o.centroids.k(), "epsilon": o.epsilon})),
        "mixer": match &mix { Mix::Linear { weights, .. } => Some(weights.digest.clone()), _ => None },
        "columns": columns,
        "score": match &mix {
            Mix::Column(i) => columns[*i].clone(),
            Mix::Linear { weights, .. } => format!("mflyt({})", weights.columns.join(", ")),
        },
    });
    let shared = Arc::new(Shared {
        config_json: serde_json::to_value(&config).map_err(|e| Error::Config(e.to_string()))?,
        config,
        identities,
        loaded,
        mix,
        device,
        counters: counters.clone(),
        embed_threads,
        models_json,
        semantic: semantic.map(|(o, _)| o),
    });
    let display = (process == 0).then(|| display::spawn(counters.clone()));
    let result = timely::execute(timely_config, {
        let shared = shared.clone();
        move |worker| build_and_run(worker, &shared)
    })
    .map_err(|e| Error::Dataflow(format!("timely: {e}")));
    let result = result.and_then(crate::graph::join);
    counters.finished.store(true, Ordering::SeqCst);
    if let Some(d) = display {
        let _ = d.join();
    }
    result?;
    if let Some(e) = counters.publish_error.lock().ok().and_then(|e| e.clone()) {
        return Err(Error::Incomplete(format!(
            "could not publish the subset into {}: {e}; the shards committed so far stay committed, and a run \
             started again publishes them",
            layout.out.display()
        )));
    }
    let mut summary = Summary { line: counters.line(), stages: counters.stage_seconds(), ..Default::default() };
    if process == 0 {
        let m = layout.manifest();
        let bytes = std::fs::read(&m).map_err(|e| Error::io(&m, e))?;
        summary.manifest =
            serde_json::from_slice(&bytes).map_err(|e| Error::Config(format!("{}: {e}", m.display())))?;
    }
    Ok(summary)
}

fn build_and_run(worker: &mut timely::worker::Worker, shared: &Arc<Shared>) -> Result<()> {
    let cfg = &shared.config;
    let index = worker.index();
    let embedder = match &cfg.embed.model {
        Some(m) if cfg.input.embeddings != EmbeddingSource::Sidecar => {
            let ec = EmbedderConfig {
                batch_size: cfg.embed.batch_size,
                device: shared.device,
                workers: shared.embed_threads,
                ..Default::default()
            };
            Some(Rc::new(Embedder::load(m, ec).context_with(|| format!("loading the CLIP model {}", m.display()))?))
        }
        _ => None,
    };
    let scorers = shared.loaded.for_worker(shared.device, shared.embed_threads)?;
    for (what, d) in [("the FLYT head", scorers.flyt_dim()), ("the downstream embeddings", shared.loaded.dim())] {
        if let (Some(e), Some(d)) = (&embedder, d)
            && e.dim() != d
        {
            return Err(Error::Config(format!("the CLIP model embeds {}-d, {what} are {d}-d", e.dim())));
        }
    }
    let layout = Layout::new(&cfg.output.dir);
    let done_before = Rc::new(Cell::new(0u64));
    let restored_before = Rc::new(Cell::new(u64::MAX));
    let columns = shared.identities.columns.clone();
    let front = Front {
        embedder,
        batch_size: cfg.embed.batch_size,
        decode_budget: cfg.input.decode_budget,
        reader: ReaderConfig::default(),
        round_f16: true,
        prefix: cfg.input.prefix.clone(),
        scorers,
        columns: columns.clone(),
        store_prefix: "clip".into(),
        counters: shared.counters.clone(),
    };
    worker.dataflow::<u64, _, _>(|scope| {
        let watcher =
            Watcher::new(&cfg.input.shards, cfg.input.scores.clone(), shared.identities.clone(), layout.clone());
        let jobs = scope
            .watch_shards(WatchOptions {
                watcher,
                follow: cfg.follow,
                poll: Duration::from_millis(cfg.input.poll_ms.max(10)),
                idle_exit: cfg.idle_exit_s.map(Duration::from_secs_f64),
                stop: &STOP,
                counters: shared.counters.clone(),
                done_before: done_before.clone(),
                restored_before: restored_before.clone(),
            })
            .exchange(|j| j.route());

        let (rows, commit_events) = front.assemble(jobs.clone()).commit_shards(CommitOptions {
            layout: layout.clone(),
            columns: columns.clone(),
            identities: shared.identities.clone(),
            store: cfg.embed.store,
            counters: shared.counters.clone(),
        });
        let (replayed, replay_events) =
            jobs.clone().replay_shards(layout.clone(), Arc::new(columns.clone()), shared.counters.clone());

        // The pool, one row per uid, scored, sampled.
        let mut pool = rows.pool_rows().concat(replayed).as_collection().dedup_uids();
        let mut duplicates = Vec::new();
        if cfg.dedup.exact {
            let (kept, dups) = pool.dedup_content();
            pool = kept;
            duplicates.push(dups.inner.map(|((u, d), _, r)| SinkEvent::Duplicate(u, d, r as i64)));
        }
        if let Some(options) = &shared.semantic {
            let near = pool.clone().sem_dedup(options.clone()).flat_map(|(u, v)| {
                v.of.filter(|_| !v.keep)
                    .map(|of| (u, Duplicate { of, reason: DuplicateReason::NearDuplicate, similarity: v.sim }))
            });
            pool = pool.antijoin(near.clone().map(|(u, _)| u));
            duplicates.push(near.inner.map(|((u, d), _, r)| SinkEvent::Duplicate(u, d, r as i64)));
        }
        let (external, external_events) = jobs.read_score_files(shared.mix.external_columns());
        let scored = pool.clone().mix_scores(&shared.mix, Some(external.as_collection()));
        let counts =
            scored.soft_cap_sample(cfg.sample.alpha, cfg.target(), cfg.sample.seed, shared.counters.scs.clone());
        let pool_size = pool.map(|_| ()).consolidate().inner.map(|((), _, d)| SinkEvent::Pool(d as i64));
        let count_events = counts.inner.map(|(u, _, d)| SinkEvent::Count(u, d as i64));
        let mut events = vec![commit_events, replay_events, external_events, pool_size, count_events];
        events.extend(duplicates);
        scope.concatenate(events).publish_subset(PublishOptions {
            layout: layout.clone(),
            every: Duration::from_millis(cfg.output.publish_ms),
            config: shared.config_json.clone(),
            models: shared.models_json.clone(),
            counters: shared.counters.clone(),
            publisher: index == 0,
            duplicates: cfg.dedup.exact || cfg.dedup.semantic.is_some(),
            done_before: done_before.clone(),
            restored_before: restored_before.clone(),
        });
    });
    Ok(())
}
