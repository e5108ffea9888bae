//! Scoring methods against hand-computed values and numpy references; k-means determinism.

mod common;

use common::run_python;
use flyt::methods::{
    ImageClusters, KMeans, KMeansConfig, NegClipLossConfig, NormSimTarget, neg_clip_loss, neg_clip_loss_in_batches,
    norm_sim, random_batches,
};
use flyt::rng::SplitMix64;
use flyt::{NpyArray, NpyData, Uid};

fn gaussian(rng: &mut SplitMix64) -> f32 {
    // Box-Muller
    let (u1, u2) = (rng.unit().max(1e-12), rng.unit());
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

fn random_matrix(rows: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..rows * dim).map(|_| gaussian(&mut rng)).collect()
}

fn uids(n: usize) -> Vec<Uid> {
    (0..n as u64).map(|i| Uid::from_parts(i.wrapping_mul(0x9E37_79B9_7F4A_7C15), i)).collect()
}

fn save_matrix(dir: &std::path::Path, name: &str, data: &[f32], dim: usize) -> String {
    let a = NpyArray { shape: vec![data.len() / dim, dim], data: NpyData::F32(data.to_vec()) };
    let p = dir.join(name);
    std::fs::write(&p, flyt::npy_bytes(&a)).unwrap();
    p.to_string_lossy().into_owned()
}

fn parse_floats(s: &str) -> Vec<f32> {
    s.split_whitespace().map(|x| x.parse().unwrap()).collect()
}

#[test]
fn neg_clip_loss_by_hand() {
    // two orthogonal matched pairs, τ = 1, one batch: s = I, so both log-sums are ln(e + 1)
    // and negCLIPLoss = 1 − ½·2·ln(e + 1).
    let e = [1.0, 0.0, 0.0, 1.0];
    let cfg = NegClipLossConfig { batch_size: 2, repeats: 3, temperature: 1.0, seed: 7 };
    let s = neg_clip_loss(&uids(2), &e, &e, 2, &cfg, tch::Device::Cpu).unwrap();
    let want = 1.0 - (1f64.exp() + 1.0).ln();
    for x in s {
        assert!((x as f64 - want).abs() < 1e-6, "{x} vs {want}");
    }
    // a short batch is shifted by τ·log(B/|b|): one pair alone in a "batch of 2" scores 1 − (1 + ln 2)·1
    let s = neg_clip_loss_in_batches(&e, &e, 2, &[vec![vec![0], vec![1]]], 2, 1.0, tch::Device::Cpu).unwrap();
    assert!((s[0] as f64 - (1.0 - 1.0 - 2f64.ln())).abs() < 1e-6, "{s:?}");
}

#[test]
fn neg_clip_loss_matches_numpy_reference() {
    let (n, dim) = (300, 16);
    let img = random_matrix(n, dim, 1);
    let txt: Vec<f32> = img.iter().zip(random_matrix(n, dim, 2)).map(|(a, b)| a + 0.8 * b).collect();
    let ids = uids(n);
    let cfg = NegClipLossConfig { batch_size: 64, repeats: 3, temperature: 0.07, seed: 11 };
    let got = neg_clip_loss(&ids, &img, &txt, dim, &cfg, tch::Device::Cpu).unwrap();
    let parts = random_batches(&ids, 64, 3, 11);
    assert_eq!(parts.len(), 3);
    assert!(parts.iter().all(|p| p.len() == 5 && p.iter().all(|b| b.len() == 60)), "300 rows → 5 batches of 60");
    let dir = tempfile::tempdir().unwrap();
    let (pi, pt) = (save_matrix(dir.path(), "i.npy", &img, dim), save_matrix(dir.path(), "t.npy", &txt, dim));
    let pj = dir.path().join("parts.json");
    std::fs::write(&pj, serde_json::to_string(&parts).unwrap()).unwrap();
    let out = run_python(
        r#"
import sys, json, numpy as np
u = np.load(sys.argv[1]).astype(np.float64); v = np.load(sys.argv[2]).astype(np.float64)
u /= np.linalg.norm(u, axis=1, keepdims=True); v /= np.linalg.norm(v, axis=1, keepdims=True)
parts = json.load(open(sys.argv[3])); tau, B = 0.07, 64
def lse(a, axis):
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)
R = np.zeros(len(u))
for part in parts:
    for b in part:
        b = np.array(b); s = u[b] @ v[b].T / tau
        R[b] += tau / 2 * (lse(s, 1) + lse(s, 0)) + tau * np.log(B / len(b))
score = (u * v).sum(1) - R / len(parts)
print(" ".join(repr(float(x)) for x in score))
"#,
        &[&pi, &pt, pj.to_str().unwrap()],
    );
    let want = parse_floats(&out);
    assert_eq!(want.len(), n);
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-5, "max |rust − numpy| = {worst}");
    // the batches depend on the uids, not on the row order
    let mut perm: Vec<usize> = (0..n).collect();
    perm.reverse();
    let pick = |m: &[f32]| perm.iter().flat_map(|&i| m[i * dim..(i + 1) * dim].to_vec()).collect::<Vec<f32>>();
    let ids_r: Vec<Uid> = perm.iter().map(|&i| ids[i]).collect();
    let rev = neg_clip_loss(&ids_r, &pick(&img), &pick(&txt), dim, &cfg, tch::Device::Cpu).unwrap();
    for (j, &i) in perm.iter().enumerate() {
        assert!((rev[j] - got[i]).abs() < 1e-6);
    }
}

#[test]
fn norm_sim_matches_numpy_reference() {
    let (n, m, dim) = (200, 50, 16);
    let pool = random_matrix(n, dim, 3);
    let target = random_matrix(m, dim, 4);
    let t = NormSimTarget::new(&target, dim, tch::Device::Cpu).unwrap();
    assert_eq!(t.len(), m);
    let (p2, pinf) = norm_sim(&pool, dim, &t, 37).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (pp, pt) = (save_matrix(dir.path(), "p.npy", &pool, dim), save_matrix(dir.path(), "t.npy", &target, dim));
    let out = run_python(
        r#"
import sys, numpy as np
x = np.load(sys.argv[1]).astype(np.float64); t = np.load(sys.argv[2]).astype(np.float64)
x /= np.linalg.norm(x, axis=1, keepdims=True); t /= np.linalg.norm(t, axis=1, keepdims=True)
s = x @ t.T
print(" ".join(repr(float(a)) for a in np.linalg.norm(s, ord=2, axis=1)))
print(" ".join(repr(float(a)) for a in np.linalg.norm(s, ord=np.inf, axis=1)))
"#,
        &[&pp, &pt],
    );
    let mut lines = out.lines();
    let (w2, winf) = (parse_floats(lines.next().unwrap()), parse_floats(lines.next().unwrap()));
    for i in 0..n {
        assert!((p2[i] - w2[i]).abs() < 1e-5, "NormSim2 row {i}: {} vs {}", p2[i], w2[i]);
        assert!((pinf[i] - winf[i]).abs() < 1e-5, "NormSim∞ row {i}: {} vs {}", pinf[i], winf[i]);
    }
    assert!(norm_sim(&pool[..dim * 2], dim + 1, &t, 8).is_err());
}

/// Points around `centers` planted directions, noise `sigma`.
fn planted(centers: &[Vec<f32>], per: usize, sigma: f32, seed: u64) -> (Vec<f32>, Vec<usize>) {
    let mut rng = SplitMix64::new(seed);
    let (mut pts, mut label) = (Vec::new(), Vec::new());
    for i in 0..per * centers.len() {
        let c = i % centers.len();
        pts.extend(centers[c].iter().map(|&x| x + sigma * gaussian(&mut rng)));
        label.push(c);
    }
    (pts, label)
}

fn centers(k: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let m = random_matrix(k, dim, seed);
    m.chunks(dim).map(|r| r.to_vec()).collect()
}

#[test]
fn kmeans_is_deterministic_and_thread_count_free() {
    let dim = 32;
    let cs = centers(8, dim, 5);
    let (pts, _) = planted(&cs, 500, 0.9, 6);
    let cfg = KMeansConfig { k: 8, iterations: 15, seed: 42, max_points_per_centroid: 256, threads: 1 };
    let one = KMeans::fit(&pts, dim, &cfg).unwrap();
    let two = KMeans::fit(&pts, dim, &KMeansConfig { threads: 2, ..cfg.clone() }).unwrap();
    let again = KMeans::fit(&pts, dim, &cfg).unwrap();
    let bits = |k: &KMeans| k.centroids().iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    assert_eq!(bits(&one), bits(&two), "1 and 2 threads differ");
    assert_eq!(bits(&one), bits(&again), "same seed differs");
    assert_eq!(one.assign(&pts, 1), two.assign(&pts, 3));
    let other = KMeans::fit(&pts, dim, &KMeansConfig { seed: 43, ..cfg }).unwrap();
    assert_eq!(other.k(), 8);
}

#[test]
fn kmeans_recovers_planted_clusters() {
    let dim = 24;
    let cs = centers(6, dim, 9);
    let (pts, label) = planted(&cs, 200, 0.15, 10);
    let km = KMeans::fit(&pts, dim, &KMeansConfig { k: 6, iterations: 30, seed: 1, ..Default::default() }).unwrap();
    let a = km.assign(&pts, 2);
    // every planted cluster maps to one centroid, and different clusters to different centroids
    let mut map = [None; 6];
    for (i, &(c, sim)) in a.iter().enumerate() {
        assert!(sim > 0.9, "a point far from its centroid: {sim}");
        match map[label[i]] {
            None => map[label[i]] = Some(c),
            Some(m) => assert_eq!(m, c, "cluster {} split", label[i]),
        }
    }
    let mut used: Vec<u32> = map.iter().map(|m| m.unwrap()).collect();
    used.sort_unstable();
    used.dedup();
    assert_eq!(used.len(), 6);
    assert!(KMeans::fit(&pts, dim, &KMeansConfig { k: 0, ..Default::default() }).is_err());
    assert!(KMeans::fit(&pts[..dim * 3], dim, &KMeansConfig { k: 4, ..Default::default() }).is_err());
}

#[test]
fn image_based_keeps_the_clusters_the_downstream_set_lives_in() {
    let dim = 24;
    let cs = centers(6, dim, 12);
    let (pool, label) = planted(&cs, 100, 0.15, 13);
    // the downstream set sits in clusters 0 and 3
    let (down, _) = planted(&[cs[0].clone(), cs[3].clone()], 20, 0.15, 14);
    let km = KMeans::fit(&pool, dim, &KMeansConfig { k: 6, iterations: 30, seed: 2, ..Default::default() }).unwrap();
    let ic = ImageClusters::new(km, &down, 2).unwrap();
    assert_eq!(ic.target_count(), 2);
    let (inside, sim) = ic.score(&pool, 2);
    for i in 0..label.len() {
        assert_eq!(inside[i], label[i] == 0 || label[i] == 3, "row {i} of cluster {}", label[i]);
        if inside[i] {
            assert!(sim[i] > 0.9);
        }
    }
}
