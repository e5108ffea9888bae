//! The paper's reference samplers, written to be obviously right: SCS in rounds, HCS, top-k.

use super::{open_unit, validate};
use crate::rng::SplitMix64;
use crate::{Error, Result, Uid};

/// Soft Cap Sampling exactly as the paper's procedure (notes §4.1): rounds of `min(round, T − |S|)` distinct
/// draws from softmax(z) by successive sampling without replacement (Gumbel-top-k: the k largest `z_i + G_i`),
/// then `z_i −= alpha` for each drawn example, until `target` draws. Returns the count of each input pair.
///
/// O(N) per round, so O(N·T/round) in all: the reference semantics, not the production sampler ([`super::scs`]).
///
/// ```
/// use flyt::{sampling::scs_rounds, Uid};
/// let pool: Vec<(Uid, f64)> = (0..100).map(|i| (Uid::from_u128(i), i as f64 / 10.0)).collect();
/// let counts = scs_rounds(&pool, 0.15, 10, 100, 7).unwrap();
/// assert_eq!(counts.iter().map(|&c| c as u64).sum::<u64>(), 100);
/// assert!(counts[99] >= counts[0]);
/// ```
pub fn scs_rounds(pool: &[(Uid, f64)], alpha: f64, round: usize, target: u64, seed: u64) -> Result<Vec<u32>> {
    let order = validate(pool)?;
    if alpha.is_nan() || alpha < 0.0 || round == 0 {
        return Err(Error::Config(format!("scs-rounds needs alpha ≥ 0 and round ≥ 1 (got {alpha}, {round})")));
    }
    if alpha.is_infinite() && target > pool.len() as u64 {
        return Err(Error::Config("alpha = ∞ samples without replacement: target must not exceed the pool".into()));
    }
    if pool.is_empty() && target > 0 {
        return Err(Error::Config("cannot sample from an empty pool".into()));
    }
    let mut z: Vec<f64> = order.iter().map(|&i| pool[i].1).collect();
    let mut counts = vec![0u32; z.len()];
    let mut rng = SplitMix64::new(seed);
    let mut drawn = 0u64;
    let mut keys: Vec<(f64, usize)> = Vec::with_capacity(z.len());
    while drawn < target {
        let k = (round as u64).min(target - drawn) as usize;
        keys.clear();
        keys.extend(z.iter().enumerate().filter(|(_, zi)| zi.is_finite()).map(|(i, &zi)| {
            let gumbel = -(-open_unit(&mut rng).ln()).ln();
            (zi + gumbel, i)
        }));
        if keys.len() < k {
            return Err(Error::Config("fewer examples left than a round needs (alpha = ∞ with a round > pool)".into()));
        }
        keys.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
        for &(_, i) in &keys[..k] {
            counts[i] += 1;
            z[i] -= alpha;
        }
        drawn += k as u64;
    }
    let mut out = vec![0u32; pool.len()];
    for (pos, &i) in order.iter().enumerate() {
        out[i] = counts[pos];
    }
    Ok(out)
}

/// Hard Cap Sampling (notes §4.2): p = softmax(scores) fixed; repeatedly renormalise p over the examples whose
/// count is below `cap`, draw a batch of `batch` with replacement, and accept draws in order while the drawn
/// example's count is below `cap` and fewer than `target` are accepted.
pub fn hcs(pool: &[(Uid, f64)], cap: u32, batch: usize, target: u64, seed: u64) -> Result<Vec<u32>> {
    let order = validate(pool)?;
    if cap == 0 || batch == 0 {
        return Err(Error::Config("hcs needs cap ≥ 1 and batch ≥ 1".into()));
    }
    if target > pool.len() as u64 * cap as u64 {
        return Err(Error::Config(format!("target {target} exceeds pool × cap = {}", pool.len() as u64 * cap as u64)));
    }
    let s: Vec<f64> = order.iter().map(|&i| pool[i].1).collect();
    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = s.iter().map(|&x| (x - max).exp()).collect();
    let mut counts = vec![0u32; s.len()];
    let mut rng = SplitMix64::new(seed);
    let mut accepted = 0u64;
    let mut cum = Vec::with_capacity(s.len());
    while accepted < target {
        cum.clear();
        let mut acc = 0.0;
        for (i, &wi) in w.iter().enumerate() {
            if counts[i] < cap {
                acc += wi;
            }
            cum.push(acc);
        }
        if acc <= 0.0 {
            // Every example with weight left is capped, but the target is not reached: the remaining ones
            // underflowed to zero weight. Fall back to uniform over the uncapped.
            for (i, c) in cum.iter_mut().enumerate() {
                *c = (0..=i).filter(|&j| counts[j] < cap).count() as f64;
            }
            acc = *cum.last().unwrap_or(&0.0);
        }
        for _ in 0..batch {
            let u = rng.unit() * acc;
            let i = cum.partition_point(|&c| c <= u).min(s.len() - 1);
            if counts[i] < cap {
                counts[i] += 1;
                accepted += 1;
                if accepted == target {
                    break;
                }
            }
        }
    }
    let mut out = vec![0u32; pool.len()];
    for (pos, &i) in order.iter().enumerate() {
        out[i] = counts[pos];
    }
    Ok(out)
}

/// Top-k: the ⌊fraction·N⌋ highest-scored examples once each (ties broken by uid, smaller first).
pub fn topk(pool: &[(Uid, f64)], fraction: f64) -> Result<Vec<u32>> {
    validate(pool)?;
    if !(0.0..=1.0).contains(&fraction) {
        return Err(Error::Config(format!("fraction must be in [0, 1], got {fraction}")));
    }
    let k = (fraction * pool.len() as f64).floor() as usize;
    let mut idx: Vec<usize> = (0..pool.len()).collect();
    idx.sort_unstable_by(|&a, &b| pool[b].1.total_cmp(&pool[a].1).then(pool[a].0.cmp(&pool[b].0)));
    let mut out = vec![0u32; pool.len()];
    for &i in &idx[..k] {
        out[i] = 1;
    }
    Ok(out)
}
