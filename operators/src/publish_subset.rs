//! `PublishSubset`: on one worker, applies the sample's count changes and the shards' commit events, and —
//! whenever its input frontier has moved (at most once per `publish_ms`, and always at the end) — writes
//! `subset.npy` and then `manifest.json` naming exactly the shards, files and models that subset reflects.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flyt::curation::Layout;
use flyt::{ShardStats, Uid};
use serde::{Deserialize, Serialize};
use serde_json::json;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use crate::Counters;

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
    /// A uid left out of (or, `-1`, back into) the pool as a duplicate.
    Duplicate(Uid, crate::Duplicate, i64),
}

/// What the manifest says besides the shards: the run's configuration and models.
pub struct PublishOptions {
    /// The output directory.
    pub layout: Layout,
    /// Least time between publications.
    pub every: Duration,
    /// The configuration, as JSON (written into the manifest).
    pub config: serde_json::Value,
    /// Model identities (written into the manifest).
    pub models: serde_json::Value,
    /// Counters.
    pub counters: Arc<Counters>,
    /// Whether this worker publishes (global worker 0; every event is routed there).
    pub publisher: bool,
    /// Whether dedup runs: then `OUT/duplicates.parquet` is written before each manifest.
    pub duplicates: bool,
    /// Kept equal to the least time not yet complete (`u64::MAX` at the end), for the source on the same worker.
    pub done_before: Rc<Cell<u64>>,
    /// Set by the source on the same worker ([`crate::WatchOptions::restored_before`]): the time before which
    /// every shard an earlier run committed has come back (replayed, re-read, or found gone); `u64::MAX` until
    /// the source has looked. While an earlier manifest exists and the frontier is below it, nothing is
    /// published, so a restart never replaces the subset on disk with one that reflects less.
    pub restored_before: Rc<Cell<u64>>,
}

#[derive(Default)]
struct State {
    counts: HashMap<Uid, i64>,
    shards: BTreeMap<String, ShardSummary>,
    /// The rows of `shards`.
    rows: u64,
    failed: BTreeMap<String, String>,
    interrupted: BTreeMap<String, String>,
    external: BTreeMap<PathBuf, (u64, Vec<String>, Option<String>)>,
    pool: i64,
    version: u64,
    duplicates: BTreeMap<(Uid, crate::Duplicate), i64>,
}

/// Publishes the subset and the manifest. All events are routed to global worker 0, which writes them; every
/// worker keeps [`PublishOptions::done_before`] for its source.
pub trait PublishSubset {
    /// Publishes.
    fn publish_subset(self, options: PublishOptions);
}

impl<'scope> PublishSubset for Stream<'scope, u64, Vec<SinkEvent>> {
    fn publish_subset(self, ctx: PublishOptions) {
        let done_before = ctx.done_before.clone();
        let scope = self.scope();
        self.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Exchange::new(|_: &SinkEvent| 0u64),
            "PublishSubset",
            move |_, info| {
                let activator = scope.activator_for(info.address);
                let mut stash: BTreeMap<u64, Vec<SinkEvent>> = BTreeMap::new();
                let mut state = State::default();
                // What an earlier run published: its version goes on (never backwards), and until the shards it
                // reflects are back, nothing is published over it.
                let earlier = if ctx.publisher { earlier_manifest(&ctx.layout) } else { None };
                state.version = earlier.as_ref().map(|e| e.version).unwrap_or(0);
                let hold = earlier.is_some();
                let mut dirty = true; // publish once at the start too, so OUT/subset.npy always exists
                let mut finished = false;
                let mut last = Instant::now() - ctx.every;
                let mut backoff = Duration::from_secs(1);
                move |(input, frontier), _output| {
                    input.for_each(|cap, data| {
                        let Some(t) = cap.least().copied() else { return };
                        stash.entry(t).or_default().append(data);
                    });
                    let bound = frontier.frontier().first().copied().unwrap_or(u64::MAX);
                    let ready: Vec<u64> = stash.range(..bound).map(|(t, _)| *t).collect();
                    for t in ready {
                        // A replaced shard's retraction shares its time with the replacing commit: the
                        // retraction goes first, whatever order they arrived in.
                        let mut events = stash.remove(&t).unwrap_or_default();
                        events.sort_by_key(|e| !matches!(e, SinkEvent::Retracted { .. }));
                        for e in events {
                            apply(&mut state, e, &ctx.counters);
                        }
                        dirty = true;
                    }
                    done_before.set(bound);
                    if !ctx.publisher {
                        return;
                    }
                    let end = bound == u64::MAX;
                    if hold && !end && bound < ctx.restored_before.get() {
                        return; // an earlier run's subset stays until its shards are back
                    }
                    if dirty || (end && !finished) {
                        if end || last.elapsed() >= ctx.every {
                            let started = Instant::now();
                            let published = publish(&ctx, &mut state, bound);
                            ctx.counters
                                .publish_micros
                                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                            match published {
                                Ok(()) => {
                                    ctx.counters.published.fetch_add(1, Ordering::Relaxed);
                                    if let Ok(mut e) = ctx.counters.publish_error.lock() {
                                        *e = None;
                                    }
                                    dirty = false;
                                    finished = end;
                                    last = Instant::now();
                                    backoff = Duration::from_secs(1);
                                }
                                Err(e) => {
                                    // Recorded for the run's exit status; a following run tries again after a
                                    // growing pause (a full disk may get space back).
                                    tracing::error!(error = %e, "could not publish the subset");
                                    if let Ok(mut slot) = ctx.counters.publish_error.lock() {
                                        *slot = Some(e.to_string());
                                    }
                                    if !end {
                                        activator.activate_after(backoff);
                                        backoff = (backoff * 2).min(Duration::from_secs(60));
                                    }
                                }
                            }
                        } else {
                            activator.activate_after(ctx.every.saturating_sub(last.elapsed()));
                        }
                    }
                }
            },
        );
    }
}

fn apply(state: &mut State, e: SinkEvent, progress: &Counters) {
    match e {
        SinkEvent::Count(uid, d) => {
            let c = state.counts.entry(uid).or_insert(0);
            *c += d;
            if *c == 0 {
                state.counts.remove(&uid);
            }
        }
        SinkEvent::Pool(d) => state.pool += d,
        SinkEvent::Duplicate(uid, dup, d) => {
            let c = state.duplicates.entry((uid, dup)).or_insert(0);
            *c += d;
            if *c == 0 {
                state.duplicates.remove(&(uid, dup));
            }
        }
        SinkEvent::Committed(s) => {
            progress.done.fetch_add(1, Ordering::Relaxed);
            if state.failed.remove(&s.name).is_some() {
                progress.failed_now.fetch_sub(1, Ordering::Relaxed);
            }
            if state.interrupted.remove(&s.name).is_some() {
                progress.interrupted.fetch_sub(1, Ordering::Relaxed);
            }
            if s.replayed {
                progress.replayed.fetch_add(1, Ordering::Relaxed);
            } else {
                progress.rows.fetch_add(s.rows, Ordering::Relaxed);
                if let Ok(mut r) = progress.rejects.lock() {
                    for (k, v) in &s.stats.rejected_by_reason {
                        *r.entry(k.clone()).or_default() += v;
                    }
                }
            }
            state.rows += s.rows;
            if let Some(old) = state.shards.insert(s.name.clone(), *s) {
                state.rows -= old.rows;
            }
            tally(state, progress);
        }
        SinkEvent::Retracted { name } => {
            if let Some(old) = state.shards.remove(&name) {
                state.rows -= old.rows;
            }
            tally(state, progress);
        }
        SinkEvent::Failed { name, error } => {
            progress.failed.fetch_add(1, Ordering::Relaxed);
            if flyt::is_interruption(&error) {
                if state.interrupted.insert(name, error).is_none() {
                    progress.interrupted.fetch_add(1, Ordering::Relaxed);
                }
            } else if state.failed.insert(name, error).is_none() {
                progress.failed_now.fetch_add(1, Ordering::Relaxed);
            }
        }
        SinkEvent::External { file, values, columns, error } => {
            state.external.insert(file, (values, columns, error));
        }
    }
}

/// The shards found but not arrived, by what they wait for (`{"marker": [names], "sidecars": [...]}`).
fn waiting(counters: &Counters) -> serde_json::Value {
    let w = counters.waiting.lock().map(|w| w.clone()).unwrap_or_default();
    let mut m = serde_json::Map::new();
    for (why, names) in w {
        m.insert(why.key().into(), json!(names));
    }
    serde_json::Value::Object(m)
}

/// Keeps the status line's pool counts equal to what the manifest will list.
fn tally(state: &State, progress: &Counters) {
    progress.pool_shards.store(state.shards.len() as u64, Ordering::Relaxed);
    progress.pool_rows.store(state.rows, Ordering::Relaxed);
}

fn publish(ctx: &PublishOptions, state: &mut State, frontier: u64) -> flyt::Result<()> {
    let mut counts: Vec<(Uid, i64)> = state.counts.iter().map(|(u, c)| (*u, *c)).collect();
    counts.sort_unstable();
    if let Some((u, c)) = counts.iter().find(|(_, c)| *c < 0) {
        return Err(flyt::Error::Config(format!("internal: uid {u} has count {c}")));
    }
    let uids: Vec<Uid> = counts.iter().flat_map(|(u, c)| std::iter::repeat_n(*u, *c as usize)).collect();
    let subset = ctx.layout.subset();
    flyt::write_subset(&subset, &uids)?;
    let digest = flyt::file_sha256(&subset)?;
    state.version += 1;
    let mut total = ShardStats::default();
    let mut rows = 0u64;
    for s in state.shards.values() {
        total.add(&s.stats);
        rows += s.rows;
    }
    let max_count = counts.iter().map(|(_, c)| *c).max().unwrap_or(0);
    let dedup = if ctx.duplicates {
        let rows: Vec<(Uid, crate::Duplicate)> =
            state.duplicates.iter().filter(|(_, c)| **c > 0).map(|(k, _)| *k).collect();
        let path = ctx.layout.out.join("duplicates.parquet");
        write_duplicates(&path, &rows)?;
        let mut by: BTreeMap<&str, u64> = BTreeMap::new();
        for (_, d) in &rows {
            *by.entry(d.reason.name()).or_default() += 1;
        }
        json!({"file": "duplicates.parquet", "sha256": flyt::file_sha256(&path)?, "uids": rows.len(), "by_reason": by})
    } else {
        serde_json::Value::Null
    };
    let manifest = json!({
        "version": state.version,
        "complete": frontier == u64::MAX,
        "frontier": if frontier == u64::MAX { serde_json::Value::Null } else { json!(frontier) },
        "flyt_version": env!("CARGO_PKG_VERSION"),
        "subset": {
            "file": "subset.npy",
            "sha256": digest,
            "uids": counts.len(),
            "samples": uids.len(),
            "max_count": max_count,
        },
        "pool": {
            "rows": rows,
            "uids": state.pool,
            "duplicate_rows": rows as i64 - state.pool,
            "scored": ctx.counters.scs.pool.load(Ordering::Relaxed),
            "non_finite_scores": ctx.counters.scs.non_finite.load(Ordering::Relaxed),
            "refused_rows": ctx.counters.scs.refused.load(Ordering::Relaxed),
        },
        "dedup": dedup,
        "ingest": total,
        "shards": state.shards.values().map(|s| json!({
            "name": s.name, "rows": s.rows, "via": s.via, "replayed": s.replayed,
            "record": format!("shards/{}.json", s.name),
        })).collect::<Vec<_>>(),
        "failed": state.failed.iter().map(|(n, e)| json!({"name": n, "error": e})).collect::<Vec<_>>(),
        "interrupted": state.interrupted.keys().collect::<Vec<_>>(),
        "waiting": waiting(&ctx.counters),
        "external_scores": state.external.iter().map(|(f, (n, c, e))| json!({
            "file": f, "values": n, "columns": c, "error": e,
        })).collect::<Vec<_>>(),
        "models": ctx.models,
        "config": ctx.config,
    });
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| flyt::Error::format(ctx.layout.manifest(), "manifest", e.to_string()))?;
    flyt::write_atomic(&ctx.layout.manifest(), text.as_bytes())?;
    Ok(())
}

/// What an earlier run's manifest says that a restart must respect.
struct Earlier {
    version: u64,
}

/// The manifest an earlier run published in this directory, if there is one with a subset that still exists.
fn earlier_manifest(layout: &Layout) -> Option<Earlier> {
    let bytes = std::fs::read(layout.manifest()).ok()?;
    let m: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let version = m.get("version")?.as_u64()?;
    layout.subset().exists().then_some(Earlier { version })
}

/// Writes `duplicates.parquet`: `uid`, `duplicate_of`, `reason`, `similarity` (near duplicates), sorted by uid.
fn write_duplicates(path: &std::path::Path, rows: &[(Uid, crate::Duplicate)]) -> flyt::Result<()> {
    flyt::write_duplicates_table(
        path,
        &rows.iter().map(|(u, d)| (*u, d.of, d.reason.name(), d.similarity.map(f32::from_bits))).collect::<Vec<_>>(),
    )
}
