//! `CommitShards`: assembled shards in; each one's score table, rejects and (when the model made them)
//! embeddings written, then its commit record, last and atomically; its rows out for the pool. A shard that
//! could not be assembled or written is reported, not committed.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use flyt::curation::{FileId, Layout, ShardRecord, ShardScores, store_embeddings};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::Operator;

use crate::{AssembledShard, Counters, Identities, Job, ShardFailure, ShardSummary, SinkEvent, Via};

/// What the commit step needs to know.
pub struct CommitOptions {
    /// The output directory.
    pub layout: Layout,
    /// The score columns, in the pipeline's order.
    pub columns: Vec<String>,
    /// What the rows depend on (recorded in each commit record).
    pub identities: Identities,
    /// Keep the embeddings the model made (`OUT/embeddings/<name>.*`), so a changed scoring method re-scores
    /// without re-embedding.
    pub store: bool,
    /// Counters (commit time).
    pub counters: Arc<Counters>,
}

#[derive(Clone, Debug)]
enum Out {
    Rows(ShardScores),
    Sink(SinkEvent),
}

/// Commits assembled shards, one per input record, on the worker that holds them; returns (rows for the pool,
/// events for [`crate::PublishSubset`]).
pub trait CommitShards<'scope> {
    /// Commits.
    fn commit_shards(
        self,
        options: CommitOptions,
    ) -> (Stream<'scope, u64, Vec<ShardScores>>, Stream<'scope, u64, Vec<SinkEvent>>);
}

impl<'scope> CommitShards<'scope> for Stream<'scope, u64, Vec<Result<AssembledShard, ShardFailure>>> {
    fn commit_shards(
        self,
        options: CommitOptions,
    ) -> (Stream<'scope, u64, Vec<ShardScores>>, Stream<'scope, u64, Vec<SinkEvent>>) {
        let out = self.unary::<CapacityContainerBuilder<Vec<Out>>, _, _, _>(Pipeline, "CommitShards", move |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let mut session = output.session(&cap);
                    for shard in data.drain(..) {
                        let started = std::time::Instant::now();
                        let done = shard.and_then(|s| commit(&options, s));
                        options
                            .counters
                            .commit_micros
                            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                        match done {
                            Ok((rows, summary)) => {
                                session.give(Out::Rows(rows));
                                session.give(Out::Sink(SinkEvent::Committed(Box::new(summary))));
                            }
                            Err((name, error)) => {
                                tracing::warn!(shard = %name, %error, "shard not committed");
                                session.give(Out::Sink(SinkEvent::Failed { name, error }));
                            }
                        }
                    }
                });
            }
        });
        out.ok_err::<Vec<ShardScores>, ShardScores, Vec<SinkEvent>, SinkEvent, _>(|o| match o {
            Out::Rows(r) => Ok(r),
            Out::Sink(s) => Err(s),
        })
    }
}

fn commit(o: &CommitOptions, s: AssembledShard) -> Result<(ShardScores, ShardSummary), ShardFailure> {
    let AssembledShard { name, job, embeddings: emb, columns, mut stats, mut rejects, prefix } = s;
    let Job::Shard { inputs, via, .. } = job else { return Err((name, "not a shard job".into())) };
    let fail = |e: String| (name.clone(), e);
    let layout = &o.layout;
    if let Via::Sidecar { stored: true, .. } = &via {
        // A re-score of a tar read earlier: its ingest counts and rejects are that read's, not the stored
        // copy's (which holds only the accepted rows).
        let earlier = layout
            .record_of(&name)
            .ok_or_else(|| fail("the record of the earlier read is unreadable; it will be read again".into()))?;
        stats = earlier.stats;
        rejects = layout.read_rejects(&name);
    }
    let digested: Vec<FileId> =
        inputs.iter().map(|f| FileId::digest(&f.path)).collect::<flyt::Result<_>>().map_err(|e| fail(e.to_string()))?;
    // The files must be the ones the source saw before they were read (a writer may replace a sidecar pair one
    // file at a time): otherwise this read mixed versions; the source sees the change and gives it out again.
    if let Some(f) = inputs.iter().zip(&digested).find(|(a, b)| a.size != b.size || a.mtime_ns != b.mtime_ns) {
        return Err(fail(format!("{} changed while the shard was read; it will be read again", f.0.path.display())));
    }
    // (Checked before anything is written: a read of a changing file must not overwrite the score table of an
    // earlier commit of this shard, whose rows a replacement retracts.)
    let cols: Vec<(&str, &[f32])> =
        o.columns.iter().map(|c| c.as_str()).zip(columns.iter().map(|v| v.as_slice())).collect();
    // The content digests go into the score table (for exact dedup on replay); captions and sizes do not.
    let digests: Vec<flyt::RowMeta> = if emb.meta.len() == emb.ids.len() {
        emb.meta
            .iter()
            .map(|m| flyt::RowMeta {
                sha256: m.sha256.clone(),
                pixels_sha256: m.pixels_sha256.clone(),
                ..Default::default()
            })
            .collect()
    } else {
        Vec::new()
    };
    let content: Vec<(Option<u128>, Option<u128>)> = digests.iter().map(|m| m.content()).collect();
    flyt::write_score_table(layout.scores(&name), &emb.ids, &digests, &cols).map_err(|e| fail(e.to_string()))?;
    let scores_sha256 = flyt::file_sha256(&layout.scores(&name)).map_err(|e| fail(e.to_string()))?;
    layout.write_rejects(&name, &rejects).map_err(|e| fail(e.to_string()))?;
    let mut embeddings = None;
    if o.store && matches!(via, Via::Model { .. }) {
        let (pq, npz) = layout.embeddings(&name);
        store_embeddings(&pq, &npz, &prefix, &emb).map_err(|e| fail(e.to_string()))?;
        embeddings = Some((pq, npz));
    } else if let Via::Sidecar { parquet, npz, stored: true } = &via {
        embeddings = Some((parquet.clone(), npz.clone()));
    }
    let via_name = match &via {
        Via::Model { .. } => "model",
        Via::Sidecar { stored: false, .. } | Via::Metadata { .. } => "sidecar",
        Via::Sidecar { stored: true, .. } => "stored",
    };
    let record = ShardRecord {
        name: name.clone(),
        inputs: digested,
        via: via_name.into(),
        models: o.identities.record_models(&via),
        columns: o.columns.clone(),
        rows: emb.ids.len() as u64,
        stats: stats.clone(),
        embeddings,
        prefix,
        dim: emb.dim,
        flyt_version: env!("CARGO_PKG_VERSION").into(),
        content_digests: true,
        scores: Some(flyt::curation::TableId { sha256: scores_sha256, rows: emb.ids.len() as u64 }),
    };
    layout.write_record(&record).map_err(|e| fail(e.to_string()))?;
    let summary = ShardSummary { name: name.clone(), rows: record.rows, stats, replayed: false, via: via_name.into() };
    Ok((ShardScores { name, ids: emb.ids, columns, content }, summary))
}
