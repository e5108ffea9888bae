//! SemDeDup (Abbas et al. 2023, arXiv 2303.09540): semantic near-duplicates within k-means clusters of the
//! image embeddings, in batch and incrementally.
//!
//! The rule is the one the authors' released code applies (`semdedup.py`, `keep_hard=True`): within a
//! cluster, members are ranked farthest from the centroid first (least cosine to it; ties by uid); each
//! member's `sim` is the largest cosine to any member ranked before it, and the member is removed when
//! `sim ≥ 1 − ε` (the code writes `>`; `≥` makes ε = 0 remove exact copies, which is what a user asking for
//! ε = 0 means). A member is compared with every earlier member, removed or not, so a verdict depends only on
//! the members ranked before it: that is what makes the incremental version exact (an insertion or a removal
//! changes the `sim` of later members only, and never cascades).
//!
//! Every dot product is computed by one kernel (eight lanes, a fixed summation order), so the batch, the brute-force
//! and the incremental computations agree bit for bit, whatever the thread count or arrival order.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::dot;
use crate::{Error, Result, Uid};

/// A member's rank in its cluster: farther from the centroid first (least cosine to it), then the least uid.
pub type Rank = (u32, Uid);

/// The rank of a member with cosine `centroid_sim` to its centroid.
pub fn rank(centroid_sim: f32, uid: Uid) -> Rank {
    // A total order on f32 as u32: negative values reversed below positive ones (NaN ranks last).
    let b = centroid_sim.to_bits();
    let key = if b >> 31 == 1 { !b } else { b | 0x8000_0000 };
    (key, uid)
}

/// What SemDeDup says of one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    /// Kept (no earlier-ranked member of its cluster has cosine ≥ 1 − ε to it).
    pub keep: bool,
    /// The largest cosine to an earlier-ranked member of its cluster, as `f32` bits (`None` for the first).
    pub sim: Option<u32>,
    /// That member (the earliest-ranked one on a tie).
    pub of: Option<Uid>,
}

impl Verdict {
    /// The largest cosine to an earlier-ranked member, if any.
    pub fn similarity(&self) -> Option<f32> {
        self.sim.map(f32::from_bits)
    }
}

/// L2-normalises a vector in place (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let n = dot(v, v).sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Whether `(d, r)` beats the current best (larger cosine; on a tie, the earlier rank). NaN never wins.
#[inline]
fn better(d: f32, r: &Rank, best: &Option<(f32, Rank)>) -> bool {
    if d.is_nan() {
        return false;
    }
    match best {
        None => true,
        Some((bd, br)) => d > *bd || (d == *bd && r < br),
    }
}

fn verdict(best: &Option<(f32, Rank)>, threshold: f32) -> Verdict {
    match best {
        None => Verdict { keep: true, sim: None, of: None },
        Some((d, r)) => Verdict { keep: *d < threshold, sim: Some(d.to_bits()), of: Some(r.1) },
    }
}

/// One pool's inputs: per row its uid, cluster, cosine to that cluster's centroid and image embedding.
#[derive(Clone, Copy, Debug)]
pub struct SemDedupInput<'a> {
    /// Embedding dimension.
    pub dim: usize,
    /// The uids (distinct).
    pub uids: &'a [Uid],
    /// Each row's cluster (nearest centroid).
    pub cluster: &'a [u32],
    /// Each row's cosine to that centroid.
    pub centroid_sim: &'a [f32],
    /// `rows × dim` image embeddings, L2-normalised.
    pub image: &'a [f32],
}

impl SemDedupInput<'_> {
    fn check(&self) -> Result<usize> {
        let n = self.uids.len();
        if self.dim == 0 || self.image.len() != n * self.dim || self.cluster.len() != n || self.centroid_sim.len() != n
        {
            return Err(Error::Config(format!(
                "semdedup: {n} uids, {} clusters, {} centroid cosines and {} embedding values at dimension {}",
                self.cluster.len(),
                self.centroid_sim.len(),
                self.image.len(),
                self.dim
            )));
        }
        let distinct: BTreeSet<&Uid> = self.uids.iter().collect();
        if distinct.len() != n {
            return Err(Error::Config(format!("semdedup: {} of {n} uids repeat", n - distinct.len())));
        }
        Ok(n)
    }

    /// Row indices per cluster, each in rank order.
    fn clusters(&self) -> Vec<Vec<usize>> {
        let mut by: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, c) in self.cluster.iter().enumerate() {
            by.entry(*c).or_default().push(i);
        }
        by.into_values()
            .map(|mut rows| {
                rows.sort_by_key(|&i| rank(self.centroid_sim[i], self.uids[i]));
                rows
            })
            .collect()
    }
}

fn threshold_of(epsilon: f32) -> Result<f32> {
    if !(0.0..=2.0).contains(&epsilon) {
        return Err(Error::Config(format!("semdedup: ε = {epsilon} must be in [0, 2]")));
    }
    Ok(1.0 - epsilon)
}

/// SemDeDup over a pool (clusters given): one verdict per row. Each cluster's earlier-ranked pairs only (half the
/// pairs), clusters spread over `threads` threads (0 = all cores).
///
/// ```
/// use flyt::Uid;
/// use flyt::methods::{SemDedupInput, semdedup};
/// // two copies of one picture and a different one, all in cluster 0
/// let image = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0];
/// let uids = [Uid::from_u128(1), Uid::from_u128(2), Uid::from_u128(3)];
/// let input = SemDedupInput { dim: 2, uids: &uids, cluster: &[0, 0, 0], centroid_sim: &[0.9, 0.9, 0.1], image: &image };
/// let v = semdedup(&input, 0.05, 1).unwrap();
/// assert!(v[0].keep && !v[1].keep && v[2].keep); // uid 2 duplicates uid 1 (same rank key, least uid first)
/// assert_eq!(v[1].of, Some(uids[0]));
/// ```
pub fn semdedup(input: &SemDedupInput<'_>, epsilon: f32, threads: usize) -> Result<Vec<Verdict>> {
    let n = input.check()?;
    let threshold = threshold_of(epsilon)?;
    let dim = input.dim;
    let clusters = input.clusters();
    let threads =
        if threads > 0 { threads } else { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) };
    // Largest clusters first, dealt round-robin: the threads' loads stay even.
    let mut order: Vec<usize> = (0..clusters.len()).collect();
    order.sort_by_key(|&c| std::cmp::Reverse(clusters[c].len()));
    let mut out = vec![Verdict { keep: true, sim: None, of: None }; n];
    let results: Vec<Vec<(usize, Verdict)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.clamp(1, clusters.len().max(1)))
            .map(|t| {
                let (clusters, order) = (&clusters, &order);
                s.spawn(move || {
                    let mut got = Vec::new();
                    let mut packed: Vec<f32> = Vec::new();
                    for &c in order.iter().skip(t).step_by(threads.max(1)) {
                        let rows = &clusters[c];
                        packed.clear();
                        for &i in rows {
                            packed.extend_from_slice(&input.image[i * dim..(i + 1) * dim]);
                        }
                        for (j, &row_j) in rows.iter().enumerate() {
                            let x = &packed[j * dim..(j + 1) * dim];
                            let mut best: Option<(f32, Rank)> = None;
                            for (i, &row_i) in rows[..j].iter().enumerate() {
                                let d = dot(&packed[i * dim..(i + 1) * dim], x);
                                // ranks grow with i, so a tie keeps the earlier one: strict comparison
                                if !d.is_nan() && best.is_none_or(|(bd, _)| d > bd) {
                                    best = Some((d, rank(input.centroid_sim[row_i], input.uids[row_i])));
                                }
                            }
                            got.push((row_j, verdict(&best, threshold)));
                        }
                    }
                    got
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("semdedup thread")).collect()
    });
    for (i, v) in results.into_iter().flatten() {
        out[i] = v;
    }
    Ok(out)
}

/// The brute-force computation the benchmark measures [`semdedup`] against: each cluster's full cosine matrix
/// (every ordered pair, the diagonal masked afterwards, as the authors' code builds it), one thread.
pub fn semdedup_brute_force(input: &SemDedupInput<'_>, epsilon: f32) -> Result<Vec<Verdict>> {
    let n = input.check()?;
    let threshold = threshold_of(epsilon)?;
    let dim = input.dim;
    let mut out = vec![Verdict { keep: true, sim: None, of: None }; n];
    for rows in input.clusters() {
        let m = rows.len();
        let mut sim = vec![0f32; m * m];
        for (a, &ra) in rows.iter().enumerate() {
            for (b, &rb) in rows.iter().enumerate() {
                sim[a * m + b] = dot(&input.image[ra * dim..(ra + 1) * dim], &input.image[rb * dim..(rb + 1) * dim]);
            }
        }
        for (j, &row_j) in rows.iter().enumerate() {
            let mut best: Option<(f32, Rank)> = None;
            for (i, &row_i) in rows[..j].iter().enumerate() {
                let d = sim[i * m + j];
                if !d.is_nan() && best.is_none_or(|(bd, _)| d > bd) {
                    best = Some((d, rank(input.centroid_sim[row_i], input.uids[row_i])));
                }
            }
            out[row_j] = verdict(&best, threshold);
        }
    }
    Ok(out)
}

/// A member: its slot in its cluster's arena and its best earlier-ranked match.
struct Entry {
    at: usize,
    best: Option<(f32, Rank)>,
}

/// One cluster: members in rank order, their embeddings in one contiguous arena (slots reused), so comparing a
/// newcomer with the cluster reads one block of memory.
#[derive(Default)]
struct Cluster {
    members: BTreeMap<Rank, Entry>,
    arena: Vec<f32>,
    free: Vec<usize>,
}

/// SemDeDup kept up to date as members arrive and leave: equal, after every change, to [`semdedup`] over the
/// members present (same verdicts, bit for bit). Inserting a member compares it with its cluster's members
/// once each (O(cluster · dim)); removing one recomputes only the later members whose nearest earlier member it
/// was.
pub struct IncrementalSemDedup {
    dim: usize,
    threshold: f32,
    clusters: HashMap<u32, Cluster>,
    place: HashMap<Uid, (u32, Rank)>,
    touched: BTreeSet<Uid>,
    published: HashMap<Uid, Verdict>,
    pairs: u64,
}

impl IncrementalSemDedup {
    /// An empty state for `dim`-d embeddings and ε.
    pub fn new(dim: usize, epsilon: f32) -> Result<Self> {
        if dim == 0 {
            return Err(Error::Config("semdedup: embedding dimension 0".into()));
        }
        Ok(IncrementalSemDedup {
            dim,
            threshold: threshold_of(epsilon)?,
            clusters: HashMap::new(),
            place: HashMap::new(),
            touched: BTreeSet::new(),
            published: HashMap::new(),
            pairs: 0,
        })
    }

    /// Members now.
    pub fn len(&self) -> usize {
        self.place.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.place.is_empty()
    }

    /// Cosines computed so far.
    pub fn pairs(&self) -> u64 {
        self.pairs
    }

    /// Adds (or replaces) a member: its cluster, cosine to the centroid, L2-normalised embedding.
    pub fn insert(&mut self, uid: Uid, cluster: u32, centroid_sim: f32, emb: Vec<f32>) -> Result<()> {
        if emb.len() != self.dim {
            return Err(Error::Config(format!(
                "semdedup: a {}-d embedding for uid {uid}, want {}",
                emb.len(),
                self.dim
            )));
        }
        self.remove(uid);
        let r = rank(centroid_sim, uid);
        let dim = self.dim;
        let c = self.clusters.entry(cluster).or_default();
        let mut best: Option<(f32, Rank)> = None;
        for (k, e) in c.members.iter_mut() {
            let d = dot(&c.arena[e.at * dim..(e.at + 1) * dim], &emb);
            self.pairs += 1;
            if *k < r {
                if !d.is_nan() && best.is_none_or(|(bd, _)| d > bd) {
                    best = Some((d, *k));
                }
            } else if better(d, &r, &e.best) {
                e.best = Some((d, r));
                self.touched.insert(k.1);
            }
        }
        let at = match c.free.pop() {
            Some(at) => {
                c.arena[at * dim..(at + 1) * dim].copy_from_slice(&emb);
                at
            }
            None => {
                c.arena.extend_from_slice(&emb);
                c.arena.len() / dim - 1
            }
        };
        c.members.insert(r, Entry { at, best });
        self.place.insert(uid, (cluster, r));
        self.touched.insert(uid);
        Ok(())
    }

    /// Removes a member (nothing if absent).
    pub fn remove(&mut self, uid: Uid) {
        let Some((cluster, r)) = self.place.remove(&uid) else { return };
        self.touched.insert(uid);
        let dim = self.dim;
        let Some(c) = self.clusters.get_mut(&cluster) else { return };
        if let Some(e) = c.members.remove(&r) {
            c.free.push(e.at);
        }
        let stale: Vec<(Rank, usize)> = c
            .members
            .range(r..)
            .filter(|(_, e)| e.best.is_some_and(|(_, of)| of == r))
            .map(|(k, e)| (*k, e.at))
            .collect();
        for (k, at) in stale {
            let emb = &c.arena[at * dim..(at + 1) * dim];
            let mut best: Option<(f32, Rank)> = None;
            for (ki, e) in c.members.range(..k) {
                let d = dot(&c.arena[e.at * dim..(e.at + 1) * dim], emb);
                self.pairs += 1;
                if !d.is_nan() && best.is_none_or(|(bd, _)| d > bd) {
                    best = Some((d, *ki));
                }
            }
            c.members.get_mut(&k).expect("present").best = best;
            self.touched.insert(k.1);
        }
        if c.members.is_empty() {
            self.clusters.remove(&cluster);
        }
    }

    /// A member's verdict now.
    pub fn verdict(&self, uid: Uid) -> Option<Verdict> {
        let (c, r) = self.place.get(&uid)?;
        Some(verdict(&self.clusters.get(c)?.members.get(r)?.best, self.threshold))
    }

    /// The verdict changes since the last call: `(uid, verdict, +1)` for a new verdict, `-1` for one withdrawn.
    pub fn changes(&mut self) -> Vec<(Uid, Verdict, isize)> {
        let mut out = Vec::new();
        for uid in std::mem::take(&mut self.touched) {
            let now = self.verdict(uid);
            let was = self.published.get(&uid).copied();
            if now == was {
                continue;
            }
            if let Some(w) = was {
                out.push((uid, w, -1));
            }
            match now {
                Some(v) => {
                    out.push((uid, v, 1));
                    self.published.insert(uid, v);
                }
                None => {
                    self.published.remove(&uid);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64 as Rng;

    fn pool(n: usize, dim: usize, k: u32, seed: u64) -> (Vec<Uid>, Vec<u32>, Vec<f32>, Vec<f32>) {
        let mut rng = Rng::new(seed);
        let mut image = Vec::new();
        for i in 0..n {
            let mut v: Vec<f32> = if i > 4 && rng.unit() < 0.3 {
                // a near-copy of an earlier row
                let j = rng.below(i as u64) as usize;
                image[j * dim..(j + 1) * dim].iter().map(|x: &f32| x + 0.02 * (rng.unit() as f32 - 0.5)).collect()
            } else {
                (0..dim).map(|_| rng.unit() as f32 - 0.5).collect()
            };
            normalize(&mut v);
            image.extend(v);
        }
        let uids = (0..n).map(|i| Uid::from_u128(1000 + (i as u128 * 7919) % 10007)).collect();
        let cluster = (0..n).map(|_| rng.below(k as u64) as u32).collect();
        let sims = (0..n).map(|_| (rng.below(5) as f32) / 5.0).collect(); // ties in rank: the uid decides
        (uids, cluster, sims, image)
    }

    #[test]
    fn the_batch_the_brute_force_and_the_incremental_computations_agree_for_any_order() {
        let (dim, n) = (16, 300);
        let (uids, cluster, sims, image) = pool(n, dim, 4, 3);
        let input = SemDedupInput { dim, uids: &uids, cluster: &cluster, centroid_sim: &sims, image: &image };
        let batch = semdedup(&input, 0.05, 3).unwrap();
        assert_eq!(batch, semdedup_brute_force(&input, 0.05).unwrap());
        assert_eq!(batch, semdedup(&input, 0.05, 1).unwrap());
        let removed = batch.iter().filter(|v| !v.keep).count();
        assert!(removed > 30 && removed < 150, "{removed} removed");
        let mut rng = Rng::new(9);
        for _ in 0..3 {
            let mut order: Vec<usize> = (0..n).collect();
            rng.shuffle(&mut order);
            let mut inc = IncrementalSemDedup::new(dim, 0.05).unwrap();
            let mut seen: HashMap<Uid, Verdict> = HashMap::new();
            let apply = |inc: &mut IncrementalSemDedup, seen: &mut HashMap<Uid, Verdict>| {
                for (u, v, d) in inc.changes() {
                    if d > 0 {
                        assert!(seen.insert(u, v).is_none());
                    } else {
                        assert_eq!(seen.remove(&u), Some(v));
                    }
                }
            };
            // everything in, a third out again, then back
            for &i in &order {
                inc.insert(uids[i], cluster[i], sims[i], image[i * dim..(i + 1) * dim].to_vec()).unwrap();
            }
            apply(&mut inc, &mut seen);
            for &i in order.iter().take(n / 3) {
                inc.remove(uids[i]);
            }
            apply(&mut inc, &mut seen);
            let rest: Vec<usize> = order[n / 3..].to_vec();
            let u2: Vec<Uid> = rest.iter().map(|&i| uids[i]).collect();
            let c2: Vec<u32> = rest.iter().map(|&i| cluster[i]).collect();
            let s2: Vec<f32> = rest.iter().map(|&i| sims[i]).collect();
            let im2: Vec<f32> = rest.iter().flat_map(|&i| image[i * dim..(i + 1) * dim].to_vec()).collect();
            let part = SemDedupInput { dim, uids: &u2, cluster: &c2, centroid_sim: &s2, image: &im2 };
            let want = semdedup(&part, 0.05, 2).unwrap();
            assert_eq!(seen.len(), rest.len());
            for (k, u) in u2.iter().enumerate() {
                assert_eq!(seen[u], want[k], "uid {u} after removals");
            }
            for &i in order.iter().take(n / 3) {
                inc.insert(uids[i], cluster[i], sims[i], image[i * dim..(i + 1) * dim].to_vec()).unwrap();
            }
            apply(&mut inc, &mut seen);
            for (i, u) in uids.iter().enumerate() {
                assert_eq!(seen[u], batch[i], "uid {u} with everything back");
            }
        }
    }

    #[test]
    fn epsilon_zero_removes_exact_copies_and_bad_inputs_are_refused() {
        let uids = [Uid::from_u128(5), Uid::from_u128(2)];
        let image = [0.6, 0.8, 0.6, 0.8];
        let input = SemDedupInput { dim: 2, uids: &uids, cluster: &[1, 1], centroid_sim: &[0.5, 0.5], image: &image };
        let v = semdedup(&input, 0.0, 1).unwrap();
        assert!(v[1].keep && !v[0].keep, "{v:?}"); // least uid ranks first on a tie
        assert!(semdedup(&input, -0.1, 1).is_err());
        let bad = SemDedupInput { dim: 2, uids: &uids, cluster: &[1], centroid_sim: &[0.5, 0.5], image: &image };
        assert!(semdedup(&bad, 0.1, 1).is_err());
        let same = [Uid::from_u128(5), Uid::from_u128(5)];
        let rep = SemDedupInput { dim: 2, uids: &same, cluster: &[1, 1], centroid_sim: &[0.5, 0.5], image: &image };
        assert!(semdedup(&rep, 0.1, 1).is_err());
    }
}
