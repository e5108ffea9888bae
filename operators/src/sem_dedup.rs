//! `SemDedup`: SemDeDup's verdicts over a changing pool collection, kept up to date as shards arrive and leave.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use differential_dataflow::{AsCollection, VecCollection};
use flyt::Uid;
use flyt::curation::Layout;
use flyt::methods::{IncrementalSemDedup, KMeans, Verdict, normalize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map as _;

use crate::PoolRow;

/// What the [`SemDedup`] operators have done (shared with the caller).
#[derive(Debug, Default)]
pub struct SemDedupCounters {
    /// Members in the clusters now, over this process's workers.
    pub members: AtomicU64,
    /// Cosines computed.
    pub pairs: AtomicU64,
    /// Pool rows whose embedding could not be found (they stay in the pool, unjudged).
    pub missing: AtomicU64,
}

/// SemDeDup's settings.
#[derive(Clone)]
pub struct SemDedupOptions {
    /// The output directory (each row's embedding is read from its shard's stored or sidecar `.npz`).
    pub layout: Layout,
    /// The clusters (fixed centroids, so verdicts do not depend on arrival order).
    pub centroids: Arc<KMeans>,
    /// ε: a member goes when its cosine to an earlier-ranked member is ≥ 1 − ε.
    pub epsilon: f32,
    /// Counters.
    pub counters: Arc<SemDedupCounters>,
}

/// One member going to (embedding non-empty) or leaving its cluster's worker.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
struct Member {
    cluster: u32,
    uid: Uid,
    centroid_sim: u32,
    emb: Vec<u32>,
}

type Update = (Member, u64, isize);

fn hash_of<H: Hash>(x: &H) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    x.hash(&mut h);
    h.finish()
}

/// A shard's embeddings by uid, normalised, with each row's cluster and cosine to its centroid.
struct Loaded {
    rows: HashMap<Uid, (u32, f32, Vec<f32>)>,
}

fn load(layout: &Layout, shard: &str, km: &KMeans) -> Result<Loaded, String> {
    let record = layout.record_of(shard).ok_or_else(|| format!("{}: unreadable", layout.record(shard).display()))?;
    let (parquet, npz) = match &record.embeddings {
        Some(p) => p.clone(),
        None => {
            let find = |ext: &str| {
                record.inputs.iter().map(|f| f.path.clone()).find(|p| p.extension().is_some_and(|x| x == ext))
            };
            match (find("parquet"), find("npz")) {
                (Some(p), Some(n)) => (p, n),
                _ => return Err("the shard's embeddings were not stored (set [embed] store = true)".into()),
            }
        }
    };
    let read = flyt::curation::read_sidecar(shard, &parquet, &npz, Some(&record.prefix)).map_err(|e| e.to_string())?;
    let e = read.embeddings;
    if e.dim != km.dim() {
        return Err(format!("{}: {}-d embeddings, the centroids are {}-d", npz.display(), e.dim, km.dim()));
    }
    let mut image = e.image;
    for row in image.chunks_exact_mut(e.dim) {
        normalize(row);
    }
    let assigned = km.assign(&image, 1);
    let rows = e
        .ids
        .iter()
        .zip(assigned)
        .enumerate()
        .map(|(i, ((uid, _), (c, s)))| (*uid, (c, s, image[i * e.dim..(i + 1) * e.dim].to_vec())))
        .collect();
    Ok(Loaded { rows })
}

/// SemDeDup over a pool collection: each uid's verdict ([`flyt::methods::Verdict`]), equal at every completed
/// timestamp to [`flyt::methods::semdedup`] over the pool's rows as it then is, with their embeddings read from
/// their shards' `.npz` (stored by the pipeline, or the shard's own sidecar) and clustered by the fixed
/// centroids. So the result does not depend on arrival order or worker count.
///
/// Two stages: rows go to a worker by shard, which reads the shard's embeddings and sends each row to its
/// cluster's worker (and, when the row leaves the pool, its removal); each cluster's worker keeps an
/// [`IncrementalSemDedup`] and, per completed timestamp, applies the removals, then the insertions, and emits the
/// verdicts that changed. A row whose embedding cannot be found stays unjudged (no verdict; counted in
/// [`SemDedupCounters::missing`], logged).
pub trait SemDedup<'scope> {
    /// The verdicts.
    fn sem_dedup(self, options: SemDedupOptions) -> VecCollection<'scope, u64, (Uid, Verdict)>;
}

impl<'scope> SemDedup<'scope> for VecCollection<'scope, u64, (Uid, PoolRow)> {
    fn sem_dedup(self, options: SemDedupOptions) -> VecCollection<'scope, u64, (Uid, Verdict)> {
        let scope = self.inner.scope();
        let opts = Rc::new(options);
        let o = opts.clone();
        let members = self.inner.unary_frontier::<CapacityContainerBuilder<Vec<Update>>, _, _, _>(
            Exchange::new(|((_, row), _, _): &((Uid, PoolRow), u64, isize)| hash_of(&row.shard)),
            "SemDedupLoad",
            move |_cap, info| {
                let activator = scope.activator_for(info.address);
                let mut stash: crate::embed_clip::Stash<u64, ((Uid, PoolRow), isize)> = BTreeMap::new();
                // Where each (uid, shard) went, so that its removal finds its cluster.
                let mut placed: HashMap<(Uid, String), u32> = HashMap::new();
                let mut cache: VecDeque<(String, Rc<Loaded>)> = VecDeque::new();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        for (d, t, r) in data.drain(..) {
                            let e = stash.entry(t).or_insert_with(|| (cap.delayed(&t, 0), Vec::new()));
                            e.1.push((d, r));
                        }
                    });
                    let Some(t) = stash.keys().next().copied().filter(|t| !frontier.less_equal(t)) else { return };
                    let (cap, mut updates) = stash.remove(&t).expect("first key");
                    differential_dataflow::consolidation::consolidate(&mut updates);
                    let mut session = output.session(&cap);
                    for ((uid, row), r) in updates.iter().filter(|(_, r)| *r < 0) {
                        if let Some(c) = placed.remove(&(*uid, row.shard.clone())) {
                            let m = Member { cluster: c, uid: *uid, centroid_sim: 0, emb: Vec::new() };
                            session.give((m, t, *r));
                        }
                    }
                    for ((uid, row), r) in updates.iter().filter(|(_, r)| *r > 0) {
                        let loaded = match cache.iter().find(|(n, _)| *n == row.shard) {
                            Some((_, l)) => Ok(l.clone()),
                            None => load(&o.layout, &row.shard, &o.centroids).map(|l| {
                                let l = Rc::new(l);
                                cache.push_front((row.shard.clone(), l.clone()));
                                cache.truncate(4);
                                l
                            }),
                        };
                        let found = match &loaded {
                            Ok(l) => l.rows.get(uid).ok_or_else(|| format!("uid {uid} is not in its stored embeddings")),
                            Err(e) => Err(e.clone()),
                        };
                        match found {
                            Ok((c, s, emb)) => {
                                placed.insert((*uid, row.shard.clone()), *c);
                                let m = Member {
                                    cluster: *c,
                                    uid: *uid,
                                    centroid_sim: s.to_bits(),
                                    emb: emb.iter().map(|x| x.to_bits()).collect(),
                                };
                                session.give((m, t, *r));
                            }
                            Err(e) => {
                                o.counters.missing.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(shard = %row.shard, uid = %uid, error = %e, "SemDedup: no embedding; the row stays unjudged");
                            }
                        }
                    }
                    // A later shard's rows come at later times: the cache holds the current versions only.
                    cache.clear();
                    if stash.keys().next().is_some_and(|t| !frontier.less_equal(t)) {
                        activator.activate();
                    }
                }
            },
        );
        let scope = members.scope();
        let (dim, eps, counters) = (opts.centroids.dim(), opts.epsilon, opts.counters.clone());
        members
            .unary_frontier::<CapacityContainerBuilder<Vec<(Uid, Verdict, u64, isize)>>, _, _, _>(
                Exchange::new(|(m, _, _): &Update| m.cluster as u64),
                "SemDedup",
                move |_cap, info| {
                    let activator = scope.activator_for(info.address);
                    let mut state = IncrementalSemDedup::new(dim, eps).ok();
                    if state.is_none() {
                        tracing::error!(epsilon = eps, "SemDedup: bad parameters; nothing will be judged");
                    }
                    let mut stash: crate::embed_clip::Stash<u64, (Member, isize)> = BTreeMap::new();
                    move |(input, frontier), output| {
                        input.for_each(|cap, data| {
                            for (m, t, r) in data.drain(..) {
                                let e = stash.entry(t).or_insert_with(|| (cap.delayed(&t, 0), Vec::new()));
                                e.1.push((m, r));
                            }
                        });
                        let Some(t) = stash.keys().next().copied().filter(|t| !frontier.less_equal(t)) else {
                            return;
                        };
                        let (cap, mut updates) = stash.remove(&t).expect("first key");
                        // grouped by cluster: each cluster's members are read once per timestamp
                        updates.sort_by_key(|(m, _)| m.cluster);
                        if let Some(state) = state.as_mut() {
                            let (before_members, before_pairs) = (state.len() as u64, state.pairs());
                            for (m, _) in updates.iter().filter(|(_, r)| *r < 0) {
                                state.remove(m.uid);
                            }
                            for (m, _) in updates.into_iter().filter(|(_, r)| *r > 0) {
                                let emb = m.emb.iter().map(|b| f32::from_bits(*b)).collect();
                                if let Err(e) = state.insert(m.uid, m.cluster, f32::from_bits(m.centroid_sim), emb) {
                                    tracing::error!(error = %e, "SemDedup: insert refused");
                                }
                            }
                            counters.pairs.fetch_add(state.pairs() - before_pairs, Ordering::Relaxed);
                            let now = state.len() as u64;
                            if now >= before_members {
                                counters.members.fetch_add(now - before_members, Ordering::Relaxed);
                            } else {
                                counters.members.fetch_sub(before_members - now, Ordering::Relaxed);
                            }
                            let mut session = output.session(&cap);
                            for (uid, v, d) in state.changes() {
                                session.give((uid, v, t, d));
                            }
                        }
                        if stash.keys().next().is_some_and(|t| !frontier.less_equal(t)) {
                            activator.activate();
                        }
                    }
                },
            )
            .map(|(u, v, t, d)| ((u, v), t, d))
            .as_collection()
    }
}
