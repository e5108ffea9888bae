//! Subset samplers over a scored pool (paper notes §4): the paper's Soft Cap Sampling loop ([`scs_rounds`]),
//! Hard Cap Sampling ([`hcs`]), plain top-k ([`topk`]) and the exact, order-independent SCS with a penalty after
//! every draw ([`scs`]). Each takes `(uid, score)` pairs and returns one count per pair, in input order.
//!
//! Every sampler is a pure function of the set of `(uid, score)` pairs, its parameters and the seed: the pairs
//! are put in uid order before any randomness is drawn, so input order never changes a result.

mod clocks;
mod partition;
mod rounds;

pub use clocks::{IncrementalScs, Target, scs, scs_threads};
pub use partition::{ScsAsk, ScsCoordinator, ScsPart, ScsReply, settle_parts};
pub use rounds::{hcs, scs_rounds, topk};

use crate::{Error, Result, Uid};

/// Checks a pool: finite scores, distinct uids. Returns the permutation that sorts it by uid.
pub(crate) fn validate(pool: &[(Uid, f64)]) -> Result<Vec<usize>> {
    if let Some((i, (uid, s))) = pool.iter().enumerate().find(|(_, (_, s))| !s.is_finite()) {
        return Err(Error::Config(format!("score of uid {uid} (row {i}) is {s}, not a finite number")));
    }
    let mut order: Vec<usize> = (0..pool.len()).collect();
    order.sort_unstable_by_key(|&i| pool[i].0);
    if let Some(w) = order.windows(2).find(|w| pool[w[0]].0 == pool[w[1]].0) {
        return Err(Error::Config(format!("uid {} appears twice (rows {} and {})", pool[w[0]].0, w[0], w[1])));
    }
    Ok(order)
}

/// Uniform in (0, 1].
pub(crate) fn open_unit(r: &mut crate::rng::SplitMix64) -> f64 {
    ((r.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
}
