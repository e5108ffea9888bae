//! Spherical k-means over image embeddings, and DataComp's image-based clustering filter built on it.

use super::{dot, normalized, rows_of};
use crate::rng::SplitMix64;
use crate::{Error, Result};

/// k-means settings.
#[derive(Clone, Debug, PartialEq)]
pub struct KMeansConfig {
    /// Number of centroids.
    pub k: usize,
    /// Lloyd iterations at most (it stops early when no assignment changes).
    pub iterations: usize,
    /// Seed for the fitting sample and the initial centroids.
    pub seed: u64,
    /// Fit on at most this many points per centroid, a seeded random sample (faiss's default is 256).
    pub max_points_per_centroid: usize,
    /// Worker threads (0: all cores). The result does not depend on it.
    pub threads: usize,
}

impl Default for KMeansConfig {
    fn default() -> Self {
        Self { k: 100, iterations: 20, seed: 0, max_points_per_centroid: 256, threads: 0 }
    }
}

/// Fitted centroids (unit vectors); points are assigned to the centroid of largest inner product, as DataComp's
/// `get_centroid_ids_gpu` does.
///
/// Seeding is k-means++ (spherical distance) up to k = 1024, random sample points above. Determinism: every dot product has a fixed summation order, assignment runs in parallel per row and the
/// centroid sums are accumulated in row order in `f64`, so the centroids are the same bits for any thread count.
///
/// ```
/// use flyt::methods::{KMeans, KMeansConfig};
/// // two tight groups on the unit circle
/// let pts = [1.0, 0.0, 0.99, 0.14, 0.0, 1.0, 0.14, 0.99];
/// let km = KMeans::fit(&pts, 2, &KMeansConfig { k: 2, ..Default::default() }).unwrap();
/// let a = km.assign(&pts, 1);
/// assert_eq!(a[0].0, a[1].0);
/// assert_eq!(a[2].0, a[3].0);
/// assert_ne!(a[0].0, a[2].0);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct KMeans {
    dim: usize,
    centroids: Vec<f32>,
}

fn threads_or_all(threads: usize) -> usize {
    if threads > 0 { threads } else { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) }
}

/// Runs `f(row_index) -> T` over `rows` rows on `threads` threads (contiguous ranges); results in row order.
fn par_rows<T: Send + Default + Clone>(rows: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let mut out = vec![T::default(); rows];
    let threads = threads.clamp(1, rows.max(1));
    let per = rows.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (t, part) in out.chunks_mut(per).enumerate() {
            let f = &f;
            s.spawn(move || {
                for (j, slot) in part.iter_mut().enumerate() {
                    *slot = f(t * per + j);
                }
            });
        }
    });
    out
}

/// Index and inner product of the best of `centroids` (`k × dim`) for `x`; ties go to the lower index.
fn nearest(x: &[f32], centroids: &[f32], dim: usize) -> (u32, f32) {
    let mut best = (0u32, f32::NEG_INFINITY);
    for (c, row) in centroids.chunks_exact(dim).enumerate() {
        let s = dot(x, row);
        if s > best.1 {
            best = (c as u32, s);
        }
    }
    best
}

/// Above this k the initial centroids are random sample points (k-means++ costs k passes over the sample).
const PLUS_PLUS_MAX_K: usize = 1024;

/// k-means++ seeding with the spherical distance 1 − cos: each next centroid is drawn with probability
/// proportional to the squared distance to the nearest centroid so far.
fn plus_plus(pts: &[f32], dim: usize, k: usize, rng: &mut SplitMix64, threads: usize) -> Vec<f32> {
    let n = pts.len() / dim;
    let first = rng.below(n as u64) as usize;
    let mut centroids = pts[first * dim..(first + 1) * dim].to_vec();
    let dist = |r: usize, c: &[f32]| {
        let d = 1.0 - dot(&pts[r * dim..(r + 1) * dim], c) as f64;
        d.max(0.0) * d.max(0.0)
    };
    let mut d2 = par_rows(n, threads, |r| dist(r, &centroids[..dim]));
    for _ in 1..k {
        let total: f64 = d2.iter().sum();
        let pick = if total > 0.0 {
            let mut x = rng.unit() * total;
            let mut chosen = n - 1;
            for (r, &w) in d2.iter().enumerate() {
                if x < w {
                    chosen = r;
                    break;
                }
                x -= w;
            }
            chosen
        } else {
            rng.below(n as u64) as usize
        };
        let c = pts[pick * dim..(pick + 1) * dim].to_vec();
        let nd = par_rows(n, threads, |r| dist(r, &c));
        d2.iter_mut().zip(nd).for_each(|(a, b)| *a = a.min(b));
        centroids.extend(c);
    }
    centroids
}

impl KMeans {
    /// Fits `config.k` centroids to the `rows × dim` points (normalised first).
    pub fn fit(data: &[f32], dim: usize, config: &KMeansConfig) -> Result<Self> {
        let n = rows_of("k-means points", data, dim)?;
        let k = config.k;
        if k == 0 || k > n {
            return Err(Error::Config(format!("k-means: k = {k} needs 1 ≤ k ≤ the number of points ({n})")));
        }
        let threads = threads_or_all(config.threads);
        let mut rng = SplitMix64::new(config.seed ^ 0x6b6d_6561_6e73);
        // the fitting sample: a seeded partial shuffle of the row indices, then sorted (row order)
        let want = n.min(k.saturating_mul(config.max_points_per_centroid.max(1)));
        let mut idx: Vec<usize> = (0..n).collect();
        for i in 0..want {
            let j = i + rng.below((n - i) as u64) as usize;
            idx.swap(i, j);
        }
        let mut sample_idx = idx[..want].to_vec();
        sample_idx.sort_unstable();
        let mut pts = Vec::with_capacity(want * dim);
        for &i in &sample_idx {
            pts.extend_from_slice(&data[i * dim..(i + 1) * dim]);
        }
        let pts = normalized(&pts, dim);
        let centroids = if k <= PLUS_PLUS_MAX_K {
            plus_plus(&pts, dim, k, &mut rng, threads)
        } else {
            // initial centroids: k distinct sample points, seeded (faiss's default)
            let mut order: Vec<usize> = (0..want).collect();
            for i in 0..k {
                let j = i + rng.below((want - i) as u64) as usize;
                order.swap(i, j);
            }
            order[..k].iter().flat_map(|&i| pts[i * dim..(i + 1) * dim].to_vec()).collect()
        };
        let mut centroids = centroids;
        let mut assign: Vec<(u32, f32)> = vec![(u32::MAX, 0.0); want];
        for _ in 0..config.iterations.max(1) {
            let next = par_rows(want, threads, |r| nearest(&pts[r * dim..(r + 1) * dim], &centroids, dim));
            let changed = next.iter().zip(&assign).any(|(a, b)| a.0 != b.0);
            assign = next;
            if !changed {
                break;
            }
            // new centroids: normalised sums, accumulated in row order
            let mut sums = vec![0f64; k * dim];
            let mut counts = vec![0usize; k];
            for (r, &(c, _)) in assign.iter().enumerate() {
                counts[c as usize] += 1;
                let acc = &mut sums[c as usize * dim..(c as usize + 1) * dim];
                for (a, &x) in acc.iter_mut().zip(&pts[r * dim..(r + 1) * dim]) {
                    *a += x as f64;
                }
            }
            // an empty cluster takes the worst-fitting point not already taken (ties: the lower row)
            let mut worst: Vec<usize> = (0..want).collect();
            worst.sort_by(|&a, &b| assign[a].1.total_cmp(&assign[b].1).then(a.cmp(&b)));
            let mut spare = worst.into_iter();
            for c in 0..k {
                let row = &mut centroids[c * dim..(c + 1) * dim];
                if counts[c] == 0 {
                    if let Some(r) = spare.next() {
                        row.copy_from_slice(&pts[r * dim..(r + 1) * dim]);
                    }
                    continue;
                }
                let s = &sums[c * dim..(c + 1) * dim];
                let norm = s.iter().map(|x| x * x).sum::<f64>().sqrt();
                if norm > 0.0 {
                    for (o, x) in row.iter_mut().zip(s) {
                        *o = (x / norm) as f32;
                    }
                }
            }
        }
        Ok(Self { dim, centroids })
    }

    /// Centroids from a `k × dim` matrix (normalised), e.g. saved from an earlier fit.
    pub fn from_centroids(centroids: &[f32], dim: usize) -> Result<Self> {
        let k = rows_of("centroids", centroids, dim)?;
        if k == 0 {
            return Err(Error::Config("k-means: no centroids".into()));
        }
        Ok(Self { dim, centroids: normalized(centroids, dim) })
    }

    /// Number of centroids.
    pub fn k(&self) -> usize {
        self.centroids.len() / self.dim
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The `k × dim` unit centroids.
    pub fn centroids(&self) -> &[f32] {
        &self.centroids
    }

    /// For each row of `data` (normalised first): its nearest centroid and the cosine to it.
    pub fn assign(&self, data: &[f32], threads: usize) -> Vec<(u32, f32)> {
        let dim = self.dim;
        let n = data.len() / dim;
        par_rows(n, threads_or_all(threads), |r| {
            let x = &data[r * dim..(r + 1) * dim];
            let norm = dot(x, x).sqrt();
            let (c, s) = nearest(x, &self.centroids, dim);
            (c, if norm > 0.0 { s / norm } else { 0.0 })
        })
    }
}

/// DataComp's image-based filter: the centroids nearest to a downstream set's image embeddings are the target
/// centroids; a pool example is in when its own nearest centroid is one of them.
#[derive(Clone, Debug)]
pub struct ImageClusters {
    kmeans: KMeans,
    target: Vec<bool>,
    target_centroids: Vec<f32>,
}

impl ImageClusters {
    /// Target centroids from the downstream embeddings (`rows × dim`).
    ///
    /// ```
    /// use flyt::methods::{ImageClusters, KMeans};
    /// let km = KMeans::from_centroids(&[1.0, 0.0, 0.0, 1.0, -1.0, 0.0], 2).unwrap();
    /// let ic = ImageClusters::new(km, &[0.9, 0.1, 0.8, -0.1], 1).unwrap(); // downstream sits at centroid 0
    /// let (inside, sim) = ic.score(&[1.0, 0.2, 0.1, 1.0], 1);
    /// assert_eq!(inside, vec![true, false]);
    /// assert!(sim[0] > sim[1]);
    /// ```
    pub fn new(kmeans: KMeans, downstream: &[f32], threads: usize) -> Result<Self> {
        let m = rows_of("downstream embeddings", downstream, kmeans.dim)?;
        if m == 0 {
            return Err(Error::Config("image-based filter: the downstream set is empty".into()));
        }
        let mut target = vec![false; kmeans.k()];
        for (c, _) in kmeans.assign(downstream, threads) {
            target[c as usize] = true;
        }
        let dim = kmeans.dim;
        let mut target_centroids = Vec::new();
        for (c, row) in kmeans.centroids.chunks_exact(dim).enumerate() {
            if target[c] {
                target_centroids.extend_from_slice(row);
            }
        }
        Ok(Self { kmeans, target, target_centroids })
    }

    /// The fitted k-means.
    pub fn kmeans(&self) -> &KMeans {
        &self.kmeans
    }

    /// Number of target centroids.
    pub fn target_count(&self) -> usize {
        self.target.iter().filter(|&&t| t).count()
    }

    /// For each row: whether its nearest centroid is a target centroid (`image_based`), and its cosine to the
    /// nearest target centroid (`image_based_sim`: how close it comes to the downstream clusters).
    pub fn score(&self, data: &[f32], threads: usize) -> (Vec<bool>, Vec<f32>) {
        let dim = self.kmeans.dim;
        let both = par_rows(data.len() / dim, threads_or_all(threads), |r| {
            let x = &data[r * dim..(r + 1) * dim];
            let norm = dot(x, x).sqrt();
            let (c, _) = nearest(x, &self.kmeans.centroids, dim);
            let (_, s) = nearest(x, &self.target_centroids, dim);
            (self.target[c as usize], if norm > 0.0 { s / norm } else { 0.0 })
        });
        both.into_iter().unzip()
    }
}
