//! Scoring-method throughput: scores per second for each embedding-based method, with the CLIP score (one
//! dot product per example) as the baseline measured in the same run.
//!
//! `cargo bench --bench methods -- [N] [DIM]`   default N = 1,000,000, DIM = 512
//!
//! Settings (cost per example in brackets): negCLIPLoss with B = 1024, K = 1 [B·d]; NormSim against a
//! 1,000-example downstream set [1000·d]; image-based with k = 256 centroids fitted on 256·k points, then
//! assigned [k·d]. negCLIPLoss's cost grows as B·K (the paper's B = 32768, K = 10 is 320× this setting) and
//! NormSim∞'s as the target size; both run through libtorch (any device), k-means in deterministic Rust.
//! Under `cargo test` (no `--bench`) it runs once at N = 4,000 as a smoke test.

use std::time::Instant;

use flyt::Uid;
use flyt::methods::{
    ImageClusters, KMeans, KMeansConfig, NegClipLossConfig, NormSimTarget, clip_score, neg_clip_loss, norm_sim,
};
use flyt::rng::SplitMix64;

fn matrix(rows: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..rows * dim).map(|_| (r.unit() * 2.0 - 1.0) as f32).collect()
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed().as_secs_f64())
}

fn main() {
    flyt::init_torch_runtime();
    let bench = std::env::args().any(|a| a == "--bench");
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let n: usize = if bench { args.first().and_then(|s| s.parse().ok()).unwrap_or(1_000_000) } else { 4_000 };
    let dim: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(512);
    let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1);
    let dev = tch::Device::Cpu;
    println!(
        "N = {n}, dim = {dim}, threads = {threads}, libtorch threads = {}, device {dev:?}",
        tch::get_num_threads()
    );
    let image = matrix(n, dim, 1);
    let text: Vec<f32> = image.iter().zip(matrix(n, dim, 2)).map(|(a, b)| a + b).collect();
    let uids: Vec<Uid> = (0..n as u64).map(|i| Uid::from_parts(i, i.wrapping_mul(31))).collect();
    let target = matrix(1000, dim, 3);

    let (_, t_clip) = timed(|| clip_score(&image, &text, dim).unwrap());
    let rate = |t: f64| n as f64 / t;
    let report = |name: &str, t: f64| {
        println!("{name:<28} {:>12.0} scores/s  ({t:>7.2} s)  {:>8.1}× the CLIP-score time", rate(t), t / t_clip)
    };
    report("clip_score (baseline)", t_clip);
    let cfg = NegClipLossConfig { batch_size: 1024, repeats: 1, temperature: 0.01, seed: 0 };
    let (_, t) = timed(|| neg_clip_loss(&uids, &image, &text, dim, &cfg, dev).unwrap());
    report("neg_clip_loss B=1024 K=1", t);
    let (_, t) = timed(|| {
        let tgt = NormSimTarget::new(&target, dim, dev).unwrap();
        norm_sim(&image, dim, &tgt, 8192).unwrap()
    });
    report("norm_sim 2 and inf, 1000 tgt", t);
    let k = 256;
    let (km, t_fit) =
        timed(|| KMeans::fit(&image, dim, &KMeansConfig { k, iterations: 10, seed: 0, ..Default::default() }).unwrap());
    println!("k-means fit k = {k} on {} points, 10 iterations: {t_fit:.2} s", (k * 256).min(n));
    let ic = ImageClusters::new(km, &target, 0).unwrap();
    let (_, t) = timed(|| ic.score(&image, 0));
    report("image_based k=256 (assign)", t);
}
