//! `flyt curate`: curation as a timely dataflow graph.
//!
//! ```text
//! WatchShards ─ jobs, one timestamp per shard ─▶ exchange by shard name
//!   ├─ tar ──▶ DecodeShards ──▶ EmbedClip ─┐                      (pixels stay on the worker)
//!   ├─ sidecar .parquet + .npz ──▶ ReadSidecars ─┴─▶ ScoreClip, ScoreFlyt ─▶ CommitShards (per-shard files,
//!   │                                                                        then the commit record)
//!   ├─ committed shard ─▶ ReplayShards (rows from its score table; retractions of replaced shards)
//!   └─ score file ─▶ ReadScoreFiles
//! pool rows (uid, shard, key, scores) ─▶ DedupUids ─▶ MixScores (⋈ external scores on uid) ─▶ SoftCapSample
//!   ─▶ PublishSubset: OUT/subset.npy, then OUT/manifest.json (the shards and models it reflects)
//! ```
//!
//! Exactly-once: a shard is committed when its record `OUT/shards/<name>.json` exists (written last,
//! atomically, after its score table). A restart replays committed shards from their score tables and reads
//! only the rest; the pool holds one row per uid, so nothing counts twice. Outputs are pure functions of the
//! input shards, the models and the seed, so they do not depend on arrival order, worker count or restarts.

mod commit;
pub mod config;
mod progress;
mod publish;
mod read_scores;
mod read_sidecars;
pub mod records;
mod replay;
pub mod source;

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use differential_dataflow::AsCollection;
use flyt::clip::{Embedder, EmbedderConfig};
use flyt::train::{FlytScorer, MixWeights};
use flyt::{ReaderConfig, ShardStats, Uid};
use flyt_operators::{
    DecodeShards, DedupUids, EmbedClip, Mix, MixScores, PoolRow, ScoreClip, ScoreFlyt, SoftCapSample,
};
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::core::{Concat as _, Concatenate, Exchange as _};
use timely::dataflow::operators::generic::operator::source as timely_source;
use timely::dataflow::operators::vec::Map as _;

use commit::{CommitCtx, Part, commit_shards};
pub use config::{Arrival, CurateConfig, EmbeddingSource};
pub use progress::Progress;
use records::{Layout, ShardScores};
use source::{Job, Models, Via, Watcher};

/// A committed (or replayed) shard, as the publisher sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardSummary {
    /// Its name.
    pub name: String,
    /// Rows (accepted samples) in its score table.
    pub rows: u64,
    /// Its ingest counts.
    pub stats: ShardStats,
    /// Replayed from an earlier run.
    pub replayed: bool,
    /// How it was embedded.
    pub via: String,
}

/// What the publisher is told.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SinkEvent {
    /// A shard committed (or replayed).
    Committed(Box<ShardSummary>),
    /// A committed shard was replaced and its rows retracted.
    Retracted {
        /// Its name.
        name: String,
    },
    /// A shard could not be committed.
    Failed {
        /// Its name.
        name: String,
        /// Why.
        error: String,
    },
    /// An external score file was read (or refused).
    External {
        /// The file.
        file: PathBuf,
        /// Values taken from it.
        values: u64,
        /// The columns it provided.
        columns: Vec<String>,
        /// Why it was refused, if it was.
        error: Option<String>,
    },
    /// A change in a uid's count in the subset.
    Count(Uid, i64),
    /// A change in the number of distinct uids in the pool.
    Pool(i64),
}

/// Set by SIGINT/SIGTERM (see [`install_stop_signals`]): a following run stops taking new shards, finishes
/// what it has, publishes and exits.
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
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

/// The rows of a shard as pool records.
pub fn pool_rows(s: &ShardScores) -> Vec<(Uid, PoolRow)> {
    s.ids
        .iter()
        .enumerate()
        .map(|(i, (uid, key))| {
            (
                *uid,
                PoolRow {
                    shard: s.name.clone(),
                    key: key.clone(),
                    values: s.columns.iter().map(|c| c[i].to_bits()).collect(),
                },
            )
        })
        .collect()
}

/// What a finished run reports (process 0).
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// The manifest as published last.
    pub manifest: serde_json::Value,
    /// The progress line at the end.
    pub line: String,
    /// Seconds per stage in this process (see [`Progress::stage_seconds`]).
    pub stages: Vec<(&'static str, f64)>,
}

fn clip_identity(dir: &std::path::Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for f in ["config.json", "model.safetensors"] {
        let p = dir.join(f);
        h.update(flyt::train::file_sha256(&p)?.as_bytes());
    }
    Ok(format!("clip:{:x}", h.finalize()))
}

/// Everything a worker needs, shared.
struct Shared {
    config: CurateConfig,
    models: Models,
    columns: Arc<Vec<String>>,
    mix: Mix,
    device: tch::Device,
    progress: Arc<Progress>,
    embed_threads: usize,
    config_json: serde_json::Value,
    models_json: serde_json::Value,
}

/// Runs the curation pipeline on this process's share of a timely computation (`timely::Config::thread()`,
/// `process(n)`, or a cluster). Returns when the inputs are done (or, following, when stopped).
pub fn run(config: CurateConfig, timely_config: timely::Config) -> anyhow::Result<Summary> {
    config.validate()?;
    let layout = Layout { out: config.output.dir.clone() };
    layout.create()?;
    let device = crate::cli::parse_device(&config.embed.device)?;
    let clip = match &config.embed.model {
        Some(m) => Some(clip_identity(m).with_context(|| format!("the CLIP model {}", m.display()))?),
        None => None,
    };
    let flyt_digest = match &config.score.flyt {
        Some(p) => Some(FlytScorer::load(p, tch::Device::Cpu)?.digest().to_string()),
        None => None,
    };
    let mut columns = vec!["clip_score".to_string()];
    if config.score.flyt.is_some() {
        columns.push("flyt".into());
    }
    let mix = match &config.score.mixer {
        Some(p) => {
            let weights = MixWeights::load(p)?;
            Mix::Linear { weights, internal: columns.clone() }
        }
        None => {
            let want = config.score.column.clone().unwrap_or_else(|| columns.last().cloned().unwrap_or_default());
            let i = columns.iter().position(|c| *c == want).ok_or_else(|| {
                anyhow::anyhow!("[score] column {want:?} is not computed here (have: {})", columns.join(", "))
            })?;
            Mix::Column(i)
        }
    };
    let external = mix.external_columns();
    if !external.is_empty() && config.input.scores.is_none() {
        anyhow::bail!(
            "the mixer uses columns this pipeline does not compute ({}): give their score files with --scores DIR",
            external.join(", ")
        );
    }
    let (process, threads) = match &timely_config.communication {
        timely::CommunicationConfig::Cluster { process, threads, .. } => (*process, *threads),
        timely::CommunicationConfig::Process(n) | timely::CommunicationConfig::ProcessBinary(n) => (0, *n),
        _ => (0, 1),
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let progress = Arc::new(Progress::default());
    let models = Models {
        embeddings: config.input.embeddings,
        arrival: config.input.arrival,
        clip: clip.clone(),
        prefix: config.input.prefix.clone(),
        flyt: flyt_digest.clone(),
    };
    let models_json = serde_json::json!({
        "clip": clip, "flyt": flyt_digest,
        "mixer": match &mix { Mix::Linear { weights, .. } => Some(weights.digest.clone()), _ => None },
        "columns": columns, "score": match &mix {
            Mix::Column(i) => columns[*i].clone(),
            Mix::Linear { weights, .. } => format!("mflyt({})", weights.columns.join(", ")),
        },
    });
    let shared = Arc::new(Shared {
        config_json: serde_json::to_value(&config)?,
        config,
        models,
        columns: Arc::new(columns),
        mix,
        device,
        progress: progress.clone(),
        embed_threads: (cores / threads.max(1)).max(1),
        models_json,
    });
    let display = (process == 0).then(|| progress.display());
    let result = timely::execute(timely_config, {
        let shared = shared.clone();
        move |worker| build_and_run(worker, &shared)
    })
    .map_err(|e| anyhow::anyhow!("timely: {e}"))?;
    let mut errors = Vec::new();
    for r in result.join() {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(format!("a worker panicked: {e}")),
        }
    }
    progress.finished.store(true, Ordering::SeqCst);
    if let Some(d) = display {
        let _ = d.join();
    }
    if !errors.is_empty() {
        anyhow::bail!("{}", errors.join("; "));
    }
    let mut summary = Summary { line: progress.line(), stages: progress.stage_seconds(), ..Default::default() };
    if process == 0 {
        let m = shared.config.output.dir.join("manifest.json");
        summary.manifest = serde_json::from_slice(&std::fs::read(&m).with_context(|| format!("{}", m.display()))?)?;
    }
    Ok(summary)
}

fn build_and_run(worker: &mut timely::worker::Worker, shared: &Arc<Shared>) -> anyhow::Result<()> {
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
            Some(Rc::new(Embedder::load(m, ec).with_context(|| format!("loading the CLIP model {}", m.display()))?))
        }
        _ => None,
    };
    let head = match &cfg.score.flyt {
        Some(p) => Some(Rc::new(FlytScorer::load(p, shared.device)?)),
        None => None,
    };
    if let (Some(e), Some(h)) = (&embedder, &head)
        && e.dim() != h.dim()
    {
        anyhow::bail!("the CLIP model embeds {}-d, the FLYT head takes {}-d", e.dim(), h.dim());
    }
    let layout = Layout { out: cfg.output.dir.clone() };
    let done_before = Rc::new(Cell::new(0u64));
    let shared2 = shared.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        let shared = shared2;
        let cfg = &shared.config;
        // The source: global worker 0 lists the inputs; every job gets its own timestamp (replays share 0).
        let mut watcher = Watcher {
            dirs: cfg.input.shards.iter().filter(|p| p.is_dir()).cloned().collect(),
            files: cfg.input.shards.iter().filter(|p| !p.is_dir()).cloned().collect(),
            scores: cfg.input.scores.clone(),
            models: shared.models.clone(),
            layout: layout.clone(),
            columns: (*shared.columns).clone(),
            given: Default::default(),
            given_scores: Default::default(),
        };
        let (follow, poll, idle_exit) = (
            cfg.follow,
            Duration::from_millis(cfg.input.poll_ms.max(10)),
            cfg.idle_exit_s.map(Duration::from_secs_f64),
        );
        let progress = shared.progress.clone();
        let source_done = done_before.clone();
        let jobs = timely_source::<u64, timely::container::CapacityContainerBuilder<Vec<Job>>, _, _>(
            scope,
            "WatchShards",
            move |cap, info| {
                let activator = scope.activator_for(info.address);
                let mut cap = (index == 0).then_some(cap);
                let mut next = 1u64;
                let mut first = true;
                let mut last_new = Instant::now();
                move |output| {
                    let Some(c) = cap.as_mut() else { return };
                    let jobs = watcher.scan(first, source_done.get());
                    if !jobs.is_empty() {
                        last_new = Instant::now();
                    }
                    for job in jobs {
                        let t = match &job {
                            Job::Replay { .. } => 0,
                            Job::Retract { .. } => next, // with the replacing shard's job, which follows
                            Job::Shard { name, .. } => {
                                watcher.given_at(name, next);
                                next += 1;
                                next - 1
                            }
                            Job::Scores { .. } => {
                                next += 1;
                                next - 1
                            }
                        };
                        if !matches!(job, Job::Scores { .. } | Job::Retract { .. }) {
                            progress.given.fetch_add(1, Ordering::Relaxed);
                        }
                        output.session(&c.delayed(&t)).give(job);
                    }
                    first = false;
                    c.downgrade(&next);
                    let idle = idle_exit.is_some_and(|d| last_new.elapsed() >= d && source_done.get() >= next);
                    if !follow || STOP.load(Ordering::Relaxed) || idle {
                        cap = None;
                    } else {
                        activator.activate_after(poll);
                    }
                }
            },
        );
        let jobs = jobs.exchange(|j: &Job| j.route());

        // Shards read from tars with the CLIP model (only when a model is loaded: otherwise such shards fail
        // at commit with a message saying so, without being read).
        let mut parts = vec![jobs.clone().filter_map_jobs(|j| matches!(j, Job::Shard { .. }).then(|| Part::Job(j)))];
        let mut embeddings = Vec::new();
        if let Some(embedder) = embedder.clone() {
            let tars = jobs.clone().flat_map(|j| match j {
                Job::Shard { via: Via::Model { tar }, .. } => Some(tar),
                _ => None,
            });
            let reader = ReaderConfig::default();
            let (samples, events) = tars.decode_shards_local(reader, cfg.input.decode_budget);
            let (emb, unreadable) = samples.embed_clip(embedder, cfg.embed.batch_size, shared.progress.embed.clone());
            embeddings.push(emb.map(|mut e| {
                records::round_to_f16(&mut e);
                e
            }));
            parts.push(events.map(Part::Event));
            parts.push(unreadable.map(Part::Unreadable));
        }
        let (side_emb, side_parts) =
            read_sidecars::read_sidecars(jobs.clone(), cfg.input.prefix.clone(), shared.progress.clone());
        embeddings.push(side_emb);
        parts.push(side_parts);
        let embeddings = scope.concatenate(embeddings);
        parts.push(embeddings.clone().score_clip().map(Part::Col));
        if let Some(h) = head.clone() {
            parts.push(embeddings.clone().score_flyt(h).map(Part::Col));
        }
        parts.push(embeddings.map(Part::Emb));
        let ctx = Arc::new(CommitCtx {
            layout: layout.clone(),
            columns: (*shared.columns).clone(),
            models: shared.models.clone(),
            has_model: embedder.as_ref().map(|_| "clip".to_string()),
            store: cfg.embed.store,
            store_prefix: "clip".into(),
            progress: shared.progress.clone(),
        });
        let (rows, commit_events) = commit_shards(scope.concatenate(parts), ctx);
        let (replayed, replay_events) =
            replay::replay_shards(jobs.clone(), layout.clone(), shared.columns.clone(), shared.progress.clone());
        let fresh = replay::commit_updates(rows);

        // The pool, one row per uid, scored, sampled.
        let pool = fresh.concat(replayed).as_collection().dedup_uids();
        let external_cols = shared.mix.external_columns();
        let (external, external_events) = read_scores::read_score_files(jobs, external_cols);
        let scored = pool.clone().mix_scores(&shared.mix, Some(external.as_collection()));
        let counts =
            scored.soft_cap_sample(cfg.sample.alpha, cfg.target(), cfg.sample.seed, shared.progress.scs.clone());
        let pool_size = pool.map(|_| ()).consolidate().inner.map(|((), _, d)| SinkEvent::Pool(d as i64));
        let count_events = counts.inner.map(|(u, _, d)| SinkEvent::Count(u, d as i64));
        let events = scope.concatenate(vec![commit_events, replay_events, external_events, pool_size, count_events]);
        publish::publish_subset(
            events,
            publish::PublishCtx {
                out: cfg.output.dir.clone(),
                every: Duration::from_millis(cfg.output.publish_ms),
                config: shared.config_json.clone(),
                models: shared.models_json.clone(),
                progress: shared.progress.clone(),
                publisher: index == 0,
            },
            done_before.clone(),
        );
    });
    Ok(())
}

/// `flat_map` with a name that reads well for job streams.
trait FilterMapJobs<'s> {
    fn filter_map_jobs(
        self,
        f: impl FnMut(Job) -> Option<Part> + 'static,
    ) -> timely::dataflow::Stream<'s, u64, Vec<Part>>;
}

impl<'s> FilterMapJobs<'s> for timely::dataflow::Stream<'s, u64, Vec<Job>> {
    fn filter_map_jobs(
        self,
        f: impl FnMut(Job) -> Option<Part> + 'static,
    ) -> timely::dataflow::Stream<'s, u64, Vec<Part>> {
        self.flat_map(f)
    }
}
