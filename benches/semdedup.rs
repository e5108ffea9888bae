//! SemDeDup throughput: cosines compared per second and total time of the batch computation
//! ([`flyt::methods::semdedup`]: earlier-ranked pairs only, clusters spread over the threads) against the
//! brute-force within-cluster computation (every ordered pair, one thread, as the authors' code forms each
//! cluster's full matrix) over the same pool in the same run; and the incremental state
//! ([`flyt::methods::IncrementalSemDedup`]) fed the first tenth of the pool one member at a time, and in ten
//! shards whose members are inserted grouped by cluster (as the curation graph does), against the batch
//! computation over that tenth. Verdicts are checked equal.
//!
//! `cargo bench --bench semdedup -- [N] [DIM] [CLUSTERS] [EPSILON]`   default 1,000,000 × 512, 1,000 clusters,
//! ε = 0.05. Points are drawn around random centroids, a tenth of them near-copies of an earlier point.
//! Under `cargo test` (no `--bench`) it runs once at N = 3,000, DIM = 32, 20 clusters as a smoke test.

use std::time::Instant;

use flyt::Uid;
use flyt::methods::{IncrementalSemDedup, KMeans, SemDedupInput, normalize, semdedup, semdedup_brute_force};
use flyt::rng::SplitMix64;

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed().as_secs_f64())
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let get = |i: usize, full: usize, smoke: usize| {
        if bench { args.get(i).and_then(|s| s.parse().ok()).unwrap_or(full) } else { smoke }
    };
    let (n, dim, k) = (get(0, 1_000_000, 3_000), get(1, 512, 32), get(2, 1_000, 20));
    let eps: f32 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(0.05);
    let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1);
    println!("N = {n}, dim = {dim}, clusters = {k}, ε = {eps}, threads = {threads}");
    let mut rng = SplitMix64::new(5);
    let mut centroids: Vec<f32> = Vec::with_capacity(k * dim);
    for _ in 0..k {
        let mut c: Vec<f32> = (0..dim).map(|_| rng.unit() as f32 - 0.5).collect();
        normalize(&mut c);
        centroids.extend(c);
    }
    let mut image: Vec<f32> = Vec::with_capacity(n * dim);
    let spread = 1.5 / (dim as f32).sqrt();
    for i in 0..n {
        let mut v: Vec<f32> = if i > 0 && rng.unit() < 0.1 {
            let j = rng.below(i as u64) as usize;
            image[j * dim..(j + 1) * dim].iter().map(|x| x + 0.01 * spread * (rng.unit() as f32 - 0.5)).collect()
        } else {
            let c = rng.below(k as u64) as usize;
            centroids[c * dim..(c + 1) * dim].iter().map(|x| x + spread * (rng.unit() as f32 - 0.5)).collect()
        };
        normalize(&mut v);
        image.extend(v);
    }
    let uids: Vec<Uid> = (0..n as u64).map(|i| Uid::from_parts(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), i)).collect();
    let km = KMeans::from_centroids(&centroids, dim).unwrap();
    let (assigned, t_assign) = timed(|| km.assign(&image, 0));
    let cluster: Vec<u32> = assigned.iter().map(|a| a.0).collect();
    let sims: Vec<f32> = assigned.iter().map(|a| a.1).collect();
    let mut sizes = vec![0u64; k];
    for c in &cluster {
        sizes[*c as usize] += 1;
    }
    let all_pairs: u64 = sizes.iter().map(|s| s * s).sum();
    let half_pairs: u64 = sizes.iter().map(|s| s * s.saturating_sub(1) / 2).sum();
    println!(
        "assignment to the nearest of {k} centroids: {t_assign:.2} s; cluster sizes {} to {}",
        sizes.iter().min().unwrap(),
        sizes.iter().max().unwrap()
    );
    let input = SemDedupInput { dim, uids: &uids, cluster: &cluster, centroid_sim: &sims, image: &image };
    let (fast, t_fast) = timed(|| semdedup(&input, eps, 0).unwrap());
    let (brute, t_brute) = timed(|| semdedup_brute_force(&input, eps).unwrap());
    assert_eq!(fast, brute, "the batch and brute-force verdicts differ");
    let removed = fast.iter().filter(|v| !v.keep).count();
    println!(
        "brute force (every ordered pair, 1 thread)  {:>14.0} pairs/s  {t_brute:>8.2} s  ({all_pairs} pairs)",
        all_pairs as f64 / t_brute
    );
    println!(
        "semdedup (earlier pairs, {threads} threads)        {:>14.0} pairs/s  {t_fast:>8.2} s  ({half_pairs} pairs)  {:.2}× faster",
        half_pairs as f64 / t_fast,
        t_brute / t_fast
    );
    println!("removed {removed} of {n} ({:.1} %); verdicts equal", 100.0 * removed as f64 / n as f64);

    let m = (n / 10).max(1);
    let part = SemDedupInput {
        dim,
        uids: &uids[..m],
        cluster: &cluster[..m],
        centroid_sim: &sims[..m],
        image: &image[..m * dim],
    };
    let (want, t_part) = timed(|| semdedup(&part, eps, 0).unwrap());
    let (inc, t_inc) = timed(|| {
        let mut inc = IncrementalSemDedup::new(dim, eps).unwrap();
        for i in 0..m {
            inc.insert(uids[i], cluster[i], sims[i], image[i * dim..(i + 1) * dim].to_vec()).unwrap();
        }
        inc
    });
    for (i, w) in want.iter().enumerate() {
        assert_eq!(inc.verdict(uids[i]).as_ref(), Some(w), "incremental verdict of row {i}");
    }
    println!(
        "incremental, {m} members one at a time     {:>14.0} pairs/s  {t_inc:>8.2} s  ({:.2}× the batch time over the same {m}: {t_part:.2} s); verdicts equal",
        inc.pairs() as f64 / t_inc,
        t_inc / t_part
    );
    // As the curation graph feeds it: a shard's members at once, grouped by cluster (so each cluster's arena is
    // read once per shard, not once per member).
    let shard = (m / 10).max(1);
    let (inc, t_shards) = timed(|| {
        let mut inc = IncrementalSemDedup::new(dim, eps).unwrap();
        for start in (0..m).step_by(shard) {
            let mut rows: Vec<usize> = (start..(start + shard).min(m)).collect();
            rows.sort_by_key(|&i| cluster[i]);
            for i in rows {
                inc.insert(uids[i], cluster[i], sims[i], image[i * dim..(i + 1) * dim].to_vec()).unwrap();
            }
        }
        inc
    });
    for (i, w) in want.iter().enumerate() {
        assert_eq!(inc.verdict(uids[i]).as_ref(), Some(w), "incremental verdict of row {i}");
    }
    println!(
        "incremental, {m} members in shards of {shard} {:>14.0} pairs/s  {t_shards:>8.2} s  ({:.2}× the batch time); verdicts equal",
        inc.pairs() as f64 / t_shards,
        t_shards / t_part
    );
}
