//! `commit_shards`: gathers each shard's parts (its job, embeddings, score columns, ingest events, rejects)
//! once its timestamp is complete, writes its outputs and then its commit record, and emits its rows for the
//! pool. A shard that could not be read is reported, not committed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use flyt::clip::Embeddings;
use flyt::methods::ScoreColumn;
use flyt::{RejectReason, Rejected, ShardStats, Uid};
use flyt_operators::ShardEvent;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::Operator;

use super::records::{FileId, Layout, ShardRecord, ShardScores, store_embeddings};
use super::source::{Job, Models, Via};
use super::{ShardSummary, SinkEvent};

/// One piece of a shard's processing, all under the shard's timestamp.
#[derive(Clone, Debug)]
pub enum Part {
    /// The job (exactly one per shard timestamp).
    Job(Job),
    /// A batch of embeddings (rows in shard order).
    Emb(Embeddings),
    /// A score column over some rows.
    Col(ScoreColumn),
    /// A decode event: a reject, the end of the shard with its counts, or a failure.
    Event(ShardEvent),
    /// A sample whose image could not be decoded for embedding.
    Unreadable(Rejected),
    /// A sidecar's read: its counts, its rejected rows, the prefix used.
    Sidecar(Box<(ShardStats, Vec<Rejected>, String)>),
}

/// What the commit step needs to know.
pub struct CommitCtx {
    /// Output layout.
    pub layout: Layout,
    /// Internal score columns, in order.
    pub columns: Vec<String>,
    /// Model identities.
    pub models: Models,
    /// Whether a CLIP model is loaded on this worker (else tar shards without sidecars fail).
    pub has_model: Option<String>,
    /// Keep embeddings computed by the model.
    pub store: bool,
    /// The prefix for stored embeddings.
    pub store_prefix: String,
    /// Progress counters (commit time).
    pub progress: Arc<super::Progress>,
}

#[derive(Default)]
struct Pending {
    job: Option<Job>,
    embs: Vec<Embeddings>,
    cols: Vec<ScoreColumn>,
    events: Vec<ShardEvent>,
    unreadable: Vec<Rejected>,
    sidecar: Option<(ShardStats, Vec<Rejected>, String)>,
}

#[derive(Clone, Debug)]
enum Out {
    Rows(ShardScores),
    Sink(SinkEvent),
}

/// Commits shards; returns (rows for the pool, events for the publisher).
pub fn commit_shards<'s>(
    parts: Stream<'s, u64, Vec<Part>>,
    ctx: Arc<CommitCtx>,
) -> (Stream<'s, u64, Vec<ShardScores>>, Stream<'s, u64, Vec<SinkEvent>>) {
    let scope = parts.scope();
    let out = parts.unary_frontier::<CapacityContainerBuilder<Vec<Out>>, _, _, _>(
        Pipeline,
        "CommitShards",
        move |_, info| {
            let activator = scope.activator_for(info.address);
            let mut stash: BTreeMap<u64, (Capability<u64>, Pending)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let Some(c) = cap.retain_least(0) else { return };
                    let p = &mut stash.entry(*c.time()).or_insert_with(|| (c, Pending::default())).1;
                    for part in data.drain(..) {
                        match part {
                            Part::Job(j) => p.job = Some(j),
                            Part::Emb(e) => p.embs.push(e),
                            Part::Col(c) => p.cols.push(c),
                            Part::Event(e) => p.events.push(e),
                            Part::Unreadable(r) => p.unreadable.push(r),
                            Part::Sidecar(b) => p.sidecar = Some(*b),
                        }
                    }
                });
                // One complete shard per activation.
                let Some(t) = stash.keys().next().copied().filter(|t| !frontier.less_equal(t)) else { return };
                let (cap, pending) = stash.remove(&t).expect("first key");
                let mut session = output.session(&cap);
                let started = std::time::Instant::now();
                let done = finish(&ctx, pending);
                ctx.progress
                    .commit_micros
                    .fetch_add(started.elapsed().as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
                match done {
                    Ok(Some((rows, summary))) => {
                        session.give(Out::Rows(rows));
                        session.give(Out::Sink(SinkEvent::Committed(Box::new(summary))));
                    }
                    Ok(None) => {}
                    Err((name, error)) => {
                        tracing::warn!(shard = %name, %error, "shard not committed");
                        session.give(Out::Sink(SinkEvent::Failed { name, error }));
                    }
                }
                drop(session);
                if stash.keys().next().is_some_and(|t| !frontier.less_equal(t)) {
                    activator.activate();
                }
            }
        },
    );
    out.ok_err::<Vec<ShardScores>, ShardScores, Vec<SinkEvent>, SinkEvent, _>(|o| match o {
        Out::Rows(r) => Ok(r),
        Out::Sink(s) => Err(s),
    })
}

type Failure = (String, String);

/// The rejects a commit wrote (`OUT/shards/<name>.rejects.jsonl`); unreadable lines are logged and skipped.
fn read_rejects(path: &std::path::Path) -> Vec<flyt::Rejected> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| match serde_json::from_str(l) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "an unreadable reject line");
                None
            }
        })
        .collect()
}

fn finish(ctx: &CommitCtx, p: Pending) -> Result<Option<(ShardScores, ShardSummary)>, Failure> {
    let Some(Job::Shard { name, inputs, via }) = p.job else { return Ok(None) };
    let fail = |e: String| (name.clone(), e);
    if let Some(ShardEvent::Failed { error, .. }) = p.events.iter().find(|e| matches!(e, ShardEvent::Failed { .. })) {
        return Err(fail(error.clone()));
    }
    let (mut stats, mut rejects, prefix) = match (&via, p.sidecar) {
        (Via::Sidecar { stored: true, .. }, Some((_, _, prefix))) => {
            // A re-score of a tar read earlier: its ingest counts and rejects are that read's, not the stored
            // copy's (which holds only the accepted rows).
            let earlier = ctx
                .layout
                .records_one(&name)
                .ok_or_else(|| fail("the record of the earlier read is unreadable; it will be read again".into()))?;
            (earlier.stats, read_rejects(&ctx.layout.rejects(&name)), prefix)
        }
        (Via::Sidecar { .. }, Some(s)) => s,
        (Via::Sidecar { .. }, None) => return Err(fail("the sidecar was not read (see the log)".into())),
        (Via::Model { .. }, _) => {
            if ctx.has_model.is_none() {
                return Err(fail("no sidecar embeddings (<stem>.parquet + <stem>.npz) and no CLIP model to embed the tar (give --model DIR)".into()));
            }
            let Some(stats) = p.events.iter().find_map(|e| match e {
                ShardEvent::Done { stats, .. } => Some(stats.clone()),
                _ => None,
            }) else {
                return Err(fail("the shard was not read to its end (see the log)".into()));
            };
            let rejects = p
                .events
                .iter()
                .filter_map(|e| match e {
                    ShardEvent::Rejected(r) => Some(r.clone()),
                    _ => None,
                })
                .collect();
            (stats, rejects, ctx.store_prefix.clone())
        }
    };
    for r in &p.unreadable {
        stats.reclassify(r.members, RejectReason::UnreadableImage);
    }
    rejects.extend(p.unreadable);
    let mut emb = Embeddings { dim: p.embs.first().map(|e| e.dim).unwrap_or(0), ..Default::default() };
    for e in p.embs {
        emb.ids.extend(e.ids);
        emb.image.extend(e.image);
        emb.text.extend(e.text);
    }
    let mut columns: Vec<Vec<f32>> = Vec::with_capacity(ctx.columns.len());
    for c in &ctx.columns {
        let map: HashMap<Uid, f32> = p
            .cols
            .iter()
            .filter(|col| col.name == *c)
            .flat_map(|col| col.uids.iter().copied().zip(col.values.iter().copied()))
            .collect();
        let values: Option<Vec<f32>> = emb.ids.iter().map(|(u, _)| map.get(u).copied()).collect();
        match values {
            Some(v) => columns.push(v),
            None => return Err(fail(format!("column {c} is missing for some rows: scoring failed (see the log)"))),
        }
    }
    let layout = &ctx.layout;
    let cols: Vec<(&str, &[f32])> =
        ctx.columns.iter().map(|c| c.as_str()).zip(columns.iter().map(|v| v.as_slice())).collect();
    flyt::write_score_table(layout.scores(&name), &emb.ids, &[], &cols).map_err(|e| fail(e.to_string()))?;
    let lines: String = rejects.iter().map(|r| format!("{}\n", serde_json::to_string(r).unwrap_or_default())).collect();
    flyt::write_atomic(&layout.rejects(&name), lines.as_bytes()).map_err(|e| fail(e.to_string()))?;
    let mut embeddings = None;
    if ctx.store && matches!(via, Via::Model { .. }) {
        let (pq, npz) = layout.embeddings(&name);
        store_embeddings(&pq, &npz, &prefix, &emb).map_err(|e| fail(format!("{e:#}")))?;
        embeddings = Some((pq, npz));
    } else if let Via::Sidecar { parquet, npz, stored: true } = &via {
        embeddings = Some((parquet.clone(), npz.clone()));
    }
    let digested: Vec<FileId> = inputs
        .iter()
        .map(|f| FileId::digest(&f.path))
        .collect::<anyhow::Result<_>>()
        .map_err(|e| fail(format!("{e:#}")))?;
    // The files must be the ones the source saw before they were read (a writer may replace a sidecar pair one
    // file at a time): otherwise this read mixed versions; the source sees the change and gives it out again.
    if let Some(f) = inputs.iter().zip(&digested).find(|(a, b)| a.size != b.size || a.mtime_ns != b.mtime_ns) {
        return Err(fail(format!("{} changed while the shard was read; it will be read again", f.0.path.display())));
    }
    let mut models = BTreeMap::new();
    models.insert("clip".to_string(), ctx.models.clip_identity(&via));
    if let Some(f) = &ctx.models.flyt {
        models.insert("flyt".to_string(), f.clone());
    }
    let via_name = match &via {
        Via::Model { .. } => "model",
        Via::Sidecar { stored: false, .. } => "sidecar",
        Via::Sidecar { stored: true, .. } => "stored",
    };
    let record = ShardRecord {
        name: name.clone(),
        inputs: digested,
        via: via_name.into(),
        models,
        columns: ctx.columns.clone(),
        rows: emb.ids.len() as u64,
        stats: stats.clone(),
        embeddings,
        prefix,
        dim: emb.dim,
        flyt_version: env!("CARGO_PKG_VERSION").into(),
    };
    let json = serde_json::to_vec_pretty(&record).map_err(|e| fail(e.to_string()))?;
    flyt::write_atomic(&layout.record(&name), &json).map_err(|e| fail(e.to_string()))?;
    let summary = ShardSummary { name: name.clone(), rows: record.rows, stats, replayed: false, via: via_name.into() };
    Ok(Some((ShardScores { name, ids: emb.ids, columns }, summary)))
}
