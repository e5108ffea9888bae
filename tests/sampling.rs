//! The samplers, tested statistically (fixed seeds, stated tolerances) and for exact invariances.
#![allow(clippy::needless_range_loop)]

use flyt::Uid;
use flyt::rng::SplitMix64;
use flyt::sampling::{IncrementalScs, Target, hcs, scs, scs_rounds, scs_threads, topk};

fn uniform_pool(n: u64, scale: f64, seed: u64) -> Vec<(Uid, f64)> {
    let mut r = SplitMix64::new(seed);
    (0..n).map(|_| (Uid::from_parts(r.next_u64(), r.next_u64()), (r.unit() - 0.5) * scale)).collect()
}

fn normal_pool(n: u64, sigma: f64, seed: u64) -> Vec<(Uid, f64)> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let (u1, u2) = (1.0 - r.unit(), r.unit());
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            (Uid::from_parts(r.next_u64(), r.next_u64()), sigma * z)
        })
        .collect()
}

fn total(c: &[u32]) -> u64 {
    c.iter().map(|&x| x as u64).sum()
}

fn softmax(p: &[(Uid, f64)]) -> Vec<f64> {
    let m = p.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = p.iter().map(|x| (x.1 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

/// α = 0 makes every draw independent: counts ~ Multinomial(T, softmax(s)). Mean counts over 300 seeds are
/// within 5 standard errors (√(T p (1−p) / runs)) of T·p for every example, for scs and for scs_rounds at b = 1.
#[test]
fn alpha_zero_is_multinomial() {
    let p = uniform_pool(15, 4.0, 1);
    let probs = softmax(&p);
    let (t, runs) = (60u64, 300u64);
    for method in ["scs", "rounds"] {
        let mut sums = vec![0.0f64; p.len()];
        for seed in 0..runs {
            let c =
                if method == "scs" { scs(&p, 0.0, t, seed).unwrap() } else { scs_rounds(&p, 0.0, 1, t, seed).unwrap() };
            assert_eq!(total(&c), t);
            sums.iter_mut().zip(&c).for_each(|(s, &x)| *s += x as f64);
        }
        for (i, &pi) in probs.iter().enumerate() {
            let mean = sums[i] / runs as f64;
            let se = (t as f64 * pi * (1.0 - pi) / runs as f64).sqrt();
            assert!(
                (mean - t as f64 * pi).abs() <= 5.0 * se + 1e-9,
                "{method} example {i}: {mean} vs {}",
                t as f64 * pi
            );
        }
    }
}

/// A very large α allows no repeats: weighted sampling without replacement. Inclusion frequencies of scs and
/// scs_rounds (b = 1) agree within 5 standard errors.
#[test]
fn huge_alpha_samples_without_replacement() {
    let p = uniform_pool(20, 5.0, 2);
    let runs = 300u64;
    let mut freq = [vec![0.0f64; p.len()], vec![0.0f64; p.len()]];
    for seed in 0..runs {
        for (k, alpha) in [1e6, f64::INFINITY].into_iter().enumerate() {
            let a = scs(&p, alpha, 8, seed).unwrap();
            let b = scs_rounds(&p, alpha, 1, 8, seed + 77).unwrap();
            for c in [&a, &b] {
                assert!(c.iter().all(|&x| x <= 1));
                assert_eq!(total(c), 8);
            }
            if k == 0 {
                freq[0].iter_mut().zip(&a).for_each(|(f, &x)| *f += x as f64);
                freq[1].iter_mut().zip(&b).for_each(|(f, &x)| *f += x as f64);
            }
        }
    }
    for i in 0..p.len() {
        let (fa, fb) = (freq[0][i] / runs as f64, freq[1][i] / runs as f64);
        let se = ((fa * (1.0 - fa) + fb * (1.0 - fb)) / runs as f64).sqrt();
        assert!((fa - fb).abs() <= 5.0 * se + 0.01, "example {i}: {fa} vs {fb}");
    }
}

#[test]
fn sizes_are_exact_and_rounds_draw_distinct_examples() {
    let p = uniform_pool(1000, 8.0, 3);
    for (alpha, t) in [(0.0, 1), (0.15, 999), (0.15, 1000), (0.5, 4321), (3.0, 10)] {
        assert_eq!(total(&scs(&p, alpha, t, 9).unwrap()), t);
        assert_eq!(total(&scs_rounds(&p, alpha, 100, t, 9).unwrap()), t);
    }
    // One round of b draws is b distinct examples, even with α = 0.
    let c = scs_rounds(&p, 0.0, 500, 500, 4).unwrap();
    assert!(c.iter().all(|&x| x <= 1));
    assert_eq!(total(&c), 500);
    // Two rounds: at most 2 each.
    let c = scs_rounds(&p, 0.0, 500, 1000, 4).unwrap();
    assert!(c.iter().all(|&x| x <= 2));
}

/// The mean-field law E[c_i] ≈ (1/α)·ln(1 + αK·e^{s_i}), K fixed by Σ E[c_i] = T: the 20 top-scored examples'
/// mean counts over 5 seeds are within 4 % of it on average (N = T = 20,000, α = 0.15, scores ~ N(0, 2.5²)).
#[test]
fn top_counts_follow_the_mean_field_law() {
    let p = normal_pool(20_000, 2.5, 5);
    let (alpha, t) = (0.15, 20_000u64);
    let law = |k: f64, s: f64| (alpha * k * s.exp()).ln_1p() / alpha;
    let (mut lo, mut hi) = (-60.0f64, 60.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        let sum: f64 = p.iter().map(|x| law(mid.exp(), x.1)).sum();
        if sum > t as f64 { hi = mid } else { lo = mid }
    }
    let k = lo.exp();
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].1.total_cmp(&p[a].1));
    let mut mean = [0.0f64; 20];
    for seed in 0..5 {
        let c = scs(&p, alpha, t, seed).unwrap();
        for (j, &i) in order[..20].iter().enumerate() {
            mean[j] += c[i] as f64 / 5.0;
        }
    }
    let rel: f64 =
        order[..20].iter().enumerate().map(|(j, &i)| (mean[j] / law(k, p[i].1) - 1.0).abs()).sum::<f64>() / 20.0;
    assert!(rel < 0.04, "mean relative deviation from the mean-field law: {rel}");
}

#[test]
fn shifting_permuting_and_threads_change_nothing() {
    let p = normal_pool(20_000, 2.0, 6);
    let base = scs(&p, 0.15, 15_000, 42).unwrap();
    let shifted: Vec<(Uid, f64)> = p.iter().map(|&(u, s)| (u, s + 3.25)).collect();
    assert_eq!(scs(&shifted, 0.15, 15_000, 42).unwrap(), base);
    let mut perm: Vec<usize> = (0..p.len()).collect();
    let mut r = SplitMix64::new(1);
    for i in (1..perm.len()).rev() {
        perm.swap(i, r.below(i as u64 + 1) as usize);
    }
    let permuted: Vec<(Uid, f64)> = perm.iter().map(|&i| p[i]).collect();
    let c = scs(&permuted, 0.15, 15_000, 42).unwrap();
    assert!(perm.iter().zip(&c).all(|(&i, &x)| base[i] == x));
    for threads in [1, 2, 4] {
        assert_eq!(scs_threads(&p, 0.15, 15_000, 42, threads).unwrap(), base);
    }
    // The reference samplers are order-independent too.
    let r1 = scs_rounds(&p[..2000], 0.15, 100, 2000, 3).unwrap();
    let rp: Vec<(Uid, f64)> = p[..2000].iter().rev().copied().collect();
    let r2 = scs_rounds(&rp, 0.15, 100, 2000, 3).unwrap();
    assert!(r1.iter().zip(r2.iter().rev()).all(|(a, b)| a == b));
}

/// Inserting shard by shard in 1, 2 or 4 parts, in any order, gives exactly the batch result; removing gives
/// exactly the batch result over what is left; the reported changes add up to the counts.
#[test]
fn incremental_equals_batch() {
    let p = normal_pool(12_000, 2.5, 7);
    let batch = scs(&p, 0.15, 9_000, 5).unwrap();
    for parts in [1usize, 2, 4] {
        let mut inc = IncrementalScs::new(0.15, Target::Fixed(9_000), 5).unwrap();
        let size = p.len().div_ceil(parts);
        let chunks: Vec<&[(Uid, f64)]> = p.chunks(size).collect();
        let mut acc: std::collections::HashMap<Uid, i64> = Default::default();
        for chunk in chunks.iter().rev() {
            inc.insert(chunk).unwrap();
            for (u, d) in inc.changes() {
                *acc.entry(u).or_default() += d;
            }
        }
        assert!(p.iter().zip(&batch).all(|(x, &c)| inc.count(x.0) == c), "{parts} parts");
        acc.retain(|_, v| *v != 0);
        assert_eq!(acc.len(), batch.iter().filter(|&&c| c > 0).count());
        assert!(p.iter().zip(&batch).all(|(x, &c)| acc.get(&x.0).copied().unwrap_or(0) == c as i64));
        assert!(inc.changes().is_empty());
    }
    // Starting from a batch-initialised sampler, then adding the rest, is the same again.
    let mut inc = IncrementalScs::with_pool(0.15, Target::Fixed(9_000), 5, &p[..7000]).unwrap();
    assert_eq!(inc.changes().len(), inc.counts().len());
    inc.insert(&p[7000..]).unwrap();
    assert!(p.iter().zip(&batch).all(|(x, &c)| inc.count(x.0) == c));
    // Removal.
    let mut inc = IncrementalScs::new(0.15, Target::Ratio(0.75), 5).unwrap();
    inc.insert(&p).unwrap();
    assert!(p.iter().zip(&batch).all(|(x, &c)| inc.count(x.0) == c));
    let gone: Vec<Uid> = p.iter().step_by(3).map(|x| x.0).collect();
    inc.changes();
    assert_eq!(inc.remove(&gone), gone.len());
    let rest: Vec<(Uid, f64)> = p.iter().enumerate().filter(|(i, _)| i % 3 != 0).map(|(_, x)| *x).collect();
    let t = (0.75 * rest.len() as f64).floor() as u64;
    let again = scs(&rest, 0.15, t, 5).unwrap();
    assert!(rest.iter().zip(&again).all(|(x, &c)| inc.count(x.0) == c));
    assert!(gone.iter().all(|u| inc.count(*u) == 0));
    let changes = inc.changes();
    assert!(changes.iter().any(|(_, d)| *d < 0));
    assert_eq!(inc.counts().iter().map(|x| x.1 as u64).sum::<u64>(), t);
    // A duplicate uid or a NaN score rejects the batch and changes nothing.
    let before = inc.counts();
    assert!(inc.insert(&[rest[0]]).unwrap_err().to_string().contains("already in the pool"));
    assert!(inc.insert(&[(Uid::from_u128(1), f64::NAN)]).unwrap_err().to_string().contains("row 0"));
    assert_eq!(inc.counts(), before);
}

/// The notes' demo configuration: 128k scores ~ N(0, 2.5²), α = 0.15, b = 100, T = N gives about 29 % unique
/// and a max count near 40 (notebook: 37,487 unique = 29.3 %, max 44). Tolerances: unique within 27–32 %, max
/// count within 30–60, for scs_rounds (b = 100) and scs (b = 1).
#[test]
fn notebook_demo_configuration() {
    let p = normal_pool(128_000, 2.5, 8);
    for (name, c) in
        [("rounds", scs_rounds(&p, 0.15, 100, 128_000, 1).unwrap()), ("scs", scs(&p, 0.15, 128_000, 1).unwrap())]
    {
        let unique = c.iter().filter(|&&x| x > 0).count() as f64 / p.len() as f64;
        let max = *c.iter().max().unwrap();
        assert!((0.27..0.32).contains(&unique), "{name}: unique fraction {unique}");
        assert!((30..=60).contains(&max), "{name}: max count {max}");
    }
}

#[test]
fn hcs_respects_the_cap_and_topk_the_fraction() {
    // Scores uniform in [-10, 10]: the top examples' softmax mass alone would give them ~20 draws each.
    let p = uniform_pool(1000, 20.0, 9);
    let c = hcs(&p, 15, 100, 1000, 1).unwrap();
    assert!(c.iter().all(|&x| x <= 15));
    assert_eq!(total(&c), 1000);
    assert!(c.iter().filter(|&&x| x == 15).count() >= 3, "high scores should reach the cap");
    for f in [0.0, 0.3, 0.2, 1.0] {
        let c = topk(&p, f).unwrap();
        assert_eq!(total(&c), (f * 1000.0_f64).floor() as u64);
        let min_in = p.iter().zip(&c).filter(|x| *x.1 == 1).map(|x| x.0.1).fold(f64::INFINITY, f64::min);
        let max_out = p.iter().zip(&c).filter(|x| *x.1 == 0).map(|x| x.0.1).fold(f64::NEG_INFINITY, f64::max);
        assert!(c.iter().all(|&x| x <= 1) && (f == 0.0 || f == 1.0 || min_in >= max_out));
    }
    assert!(hcs(&p, 1, 10, 1001, 1).is_err());
}
