//! Soft Cap Sampling benchmarks. Each prints figures and a ratio against a baseline run in the same process.
//!
//! `cargo bench --bench scs -- compare [N]`      scs vs scs_rounds (b = 100,000) at N = T (default 1e6)
//! `cargo bench --bench scs -- scale N`          scs at N = T: seconds and peak memory (run one size per process)
//! `cargo bench --bench scs -- incremental [N]`  one added 10k-sample shard at pool N (default 1e7) vs a recompute
//!
//! Scores are N(0, 2.5²) (the paper notebook's demo distribution), α = 0.15. Under `cargo test` (no `--bench`)
//! each mode runs once at a tiny size as a smoke test.

mod peak_rss;
use peak_rss::peak_rss_mb;

use std::time::Instant;

use flyt::Uid;
use flyt::rng::SplitMix64;
use flyt::sampling::{IncrementalScs, Target, scs, scs_rounds};

fn pool(n: usize, seed: u64) -> Vec<(Uid, f64)> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let (u1, u2) = (1.0 - r.unit(), r.unit());
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            (Uid::from_parts(r.next_u64(), r.next_u64()), 2.5 * z)
        })
        .collect()
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed().as_secs_f64())
}

fn parse(s: Option<&String>, default: usize) -> usize {
    s.and_then(|x| x.parse::<f64>().ok()).map_or(default, |x| x as usize)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let modes: Vec<&str> = match args.first().map(String::as_str) {
        Some(m) => vec![m],
        None => vec!["compare", "scale", "incremental"],
    };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("threads: {threads}");
    for mode in modes {
        match mode {
            "compare" => {
                let n = if bench { parse(args.get(1), 1_000_000) } else { 20_000 };
                let p = pool(n, 1);
                let (a, t_scs) = timed(|| scs(&p, 0.15, n as u64, 7).unwrap());
                let (b, t_rounds) = timed(|| scs_rounds(&p, 0.15, 100_000.min(n), n as u64, 7).unwrap());
                let uniq = |c: &[u32]| c.iter().filter(|&&x| x > 0).count() as f64 / n as f64;
                println!(
                    "compare N = T = {n}: scs {t_scs:.3} s, scs_rounds (b = 100000) {t_rounds:.3} s, speed-up {:.1}×",
                    t_rounds / t_scs
                );
                println!("  unique fraction: scs {:.4}, scs_rounds {:.4}", uniq(&a), uniq(&b));
            }
            "scale" => {
                let n = if bench { parse(args.get(1), 10_000_000) } else { 20_000 };
                let (p, t_gen) = timed(|| pool(n, 2));
                let base = peak_rss_mb();
                let (c, t) = timed(|| scs(&p, 0.15, n as u64, 7).unwrap());
                let max = c.iter().max().copied().unwrap_or(0);
                println!(
                    "scale N = T = {n}: scs {t:.2} s (pool generation {t_gen:.2} s); peak RSS {:.0} MB ({:.0} MB before sampling); max count {max}",
                    peak_rss_mb(),
                    base
                );
            }
            "incremental" => {
                let n = if bench { parse(args.get(1), 10_000_000) } else { 20_000 };
                let p = pool(n + 10_000, 3);
                let (mut inc, t_init) =
                    timed(|| IncrementalScs::with_pool(0.15, Target::Ratio(1.0), 7, &p[..n]).unwrap());
                inc.changes();
                let (_, t_add) = timed(|| inc.insert(&p[n..]).unwrap());
                let changed = inc.changes().len();
                let (full, t_full) = timed(|| scs(&p, 0.15, (n + 10_000) as u64, 7).unwrap());
                assert!(p.iter().zip(&full).all(|(x, &c)| inc.count(x.0) == c), "incremental differs from batch");
                println!(
                    "incremental at N = {n} (T = N): add a 10k shard {:.1} ms ({changed} uids changed) vs full recompute {t_full:.2} s: {:.0}× faster (initial build {t_init:.2} s)",
                    t_add * 1e3,
                    t_full / t_add
                );
            }
            m => panic!("unknown mode {m}: compare | scale | incremental"),
        }
    }
}
