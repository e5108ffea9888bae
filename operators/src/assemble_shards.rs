//! `AssembleShards`: the pieces of each shard's processing (its job, embeddings, score columns, ingest
//! events, rejects) in; once its timestamp is complete, the whole shard out, or why it could not be read.

use std::collections::{BTreeMap, HashMap};

use flyt::clip::Embeddings;
use flyt::methods::ScoreColumn;
use flyt::{RejectReason, Rejected, ShardStats, Uid};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use crate::{Job, ShardEvent, Via};

/// One piece of a shard's processing, all under the shard's timestamp.
#[derive(Clone, Debug)]
pub enum Part {
    /// The job (exactly one per shard timestamp).
    Job(Job),
    /// A batch of embeddings (rows in shard order).
    Emb(Box<Embeddings>),
    /// A score column over some rows.
    Col(ScoreColumn),
    /// A decode event: a reject, the end of the shard with its counts, or a failure.
    Event(ShardEvent),
    /// A sample whose image could not be decoded for embedding.
    Unreadable(Rejected),
    /// A sidecar's read: its counts, its rejected rows, the prefix used.
    Sidecar(Box<(ShardStats, Vec<Rejected>, String)>),
}

/// A shard with everything its processing made: rows, embeddings, score columns, ingest counts and rejects.
#[derive(Clone, Debug)]
pub struct AssembledShard {
    /// Its name.
    pub name: String,
    /// Its job (inputs and how it was embedded).
    pub job: Job,
    /// Every embedded row in shard order, with captions and sizes (`dim` 0 for a metadata-only read).
    pub embeddings: Embeddings,
    /// The score columns asked for, in that order, aligned with `embeddings.ids`.
    pub columns: Vec<Vec<f32>>,
    /// Ingest counts (they reconcile: every sample accepted or rejected with a reason).
    pub stats: ShardStats,
    /// The rejected samples.
    pub rejects: Vec<Rejected>,
    /// The `.npz` prefix of the embeddings (`store_prefix` for embeddings the model made).
    pub prefix: String,
}

/// A shard that could not be assembled: its name and why.
pub type ShardFailure = (String, String);

#[derive(Default)]
struct Pending {
    job: Option<Job>,
    embs: Vec<Embeddings>,
    cols: Vec<ScoreColumn>,
    events: Vec<ShardEvent>,
    unreadable: Vec<Rejected>,
    sidecar: Option<(ShardStats, Vec<Rejected>, String)>,
}

/// Gathers each shard's parts once its timestamp is complete (one shard per activation) and assembles it:
/// rows and embeddings in shard order, the `columns` (by name, every row must have every column), the ingest
/// counts with undecodable images reclassified as `unreadable_image`. Timestamps without a [`Job::Shard`] give
/// nothing; a shard whose read failed, or whose scoring did not cover every row, gives a [`ShardFailure`].
pub trait AssembleShards<'scope> {
    /// `store_prefix` names embeddings the CLIP model made (sidecar reads keep their own prefix).
    fn assemble_shards(
        self,
        columns: Vec<String>,
        store_prefix: String,
    ) -> Stream<'scope, u64, Vec<Result<AssembledShard, ShardFailure>>>;
}

impl<'scope> AssembleShards<'scope> for Stream<'scope, u64, Vec<Part>> {
    fn assemble_shards(
        self,
        columns: Vec<String>,
        store_prefix: String,
    ) -> Stream<'scope, u64, Vec<Result<AssembledShard, ShardFailure>>> {
        let scope = self.scope();
        self.unary_frontier::<CapacityContainerBuilder<Vec<Result<AssembledShard, ShardFailure>>>, _, _, _>(
            Pipeline,
            "AssembleShards",
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
                                Part::Emb(e) => p.embs.push(*e),
                                Part::Col(c) => p.cols.push(c),
                                Part::Event(e) => p.events.push(e),
                                Part::Unreadable(r) => p.unreadable.push(r),
                                Part::Sidecar(b) => p.sidecar = Some(*b),
                            }
                        }
                    });
                    let Some(t) = stash.keys().next().copied().filter(|t| !frontier.less_equal(t)) else { return };
                    let (cap, pending) = stash.remove(&t).expect("first key");
                    if let Some(done) = assemble(pending, &columns, &store_prefix) {
                        output.session(&cap).give(done);
                    }
                    if stash.keys().next().is_some_and(|t| !frontier.less_equal(t)) {
                        activator.activate();
                    }
                }
            },
        )
    }
}

fn assemble(p: Pending, columns: &[String], store_prefix: &str) -> Option<Result<AssembledShard, ShardFailure>> {
    let job = p.job?;
    let Job::Shard { name, via, .. } = &job else { return None };
    let name = name.clone();
    let fail = |e: String| Some(Err((name.clone(), e)));
    if let Some(ShardEvent::Failed { error, .. }) = p.events.iter().find(|e| matches!(e, ShardEvent::Failed { .. })) {
        return fail(error.clone());
    }
    let (mut stats, mut rejects, prefix) = match (via, p.sidecar) {
        (Via::Sidecar { .. } | Via::Metadata { .. }, Some(s)) => s,
        (Via::Sidecar { .. } | Via::Metadata { .. }, None) => {
            return fail("the sidecar was not read (see the log)".into());
        }
        (Via::Model { .. }, _) => {
            let Some(stats) = p.events.iter().find_map(|e| match e {
                ShardEvent::Done { stats, .. } => Some(stats.clone()),
                _ => None,
            }) else {
                return fail("the shard was not read to its end (see the log)".into());
            };
            let rejects = p
                .events
                .iter()
                .filter_map(|e| match e {
                    ShardEvent::Rejected(r) => Some(r.clone()),
                    _ => None,
                })
                .collect();
            (stats, rejects, store_prefix.to_string())
        }
    };
    for r in &p.unreadable {
        stats.reclassify(r.members, RejectReason::UnreadableImage);
    }
    rejects.extend(p.unreadable);
    let mut emb = Embeddings { dim: p.embs.first().map(|e| e.dim).unwrap_or(0), ..Default::default() };
    for e in p.embs {
        emb.append(e);
    }
    let mut values: Vec<Vec<f32>> = Vec::with_capacity(columns.len());
    for c in columns {
        let map: HashMap<Uid, f32> = p
            .cols
            .iter()
            .filter(|col| col.name == *c)
            .flat_map(|col| col.uids.iter().copied().zip(col.values.iter().copied()))
            .collect();
        match emb.ids.iter().map(|(u, _)| map.get(u).copied()).collect::<Option<Vec<f32>>>() {
            Some(v) => values.push(v),
            None => return fail(format!("column {c} is missing for some rows: scoring failed (see the log)")),
        }
    }
    Some(Ok(AssembledShard { name, job, embeddings: emb, columns: values, stats, rejects, prefix }))
}
