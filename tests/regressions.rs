//! One test per bug that broke something, named after what broke.

use flyt::Uid;
use flyt::sampling::{IncrementalScs, Target, scs};

/// `IncrementalScs::remove` freed a slot for reuse while the heaps still held the removed example's firings;
/// an example inserted into that slot then passed the stale first firing off as its own, and the counts
/// drifted from the batch sampler (seen as `flyt curate` disagreeing with a batch run after a shard was
/// replaced).
#[test]
fn incremental_scs_reused_slot_took_a_stale_firing() {
    let score = |i: u128| ((i * 7919) % 101) as f64 / 20.0;
    let old: Vec<(Uid, f64)> = (0..3000u128).map(|i| (Uid::from_u128(i), score(i))).collect();
    let new: Vec<(Uid, f64)> = (10_000..10_800u128).map(|i| (Uid::from_u128(i), score(i * 3))).collect();
    let mut inc = IncrementalScs::new(0.15, Target::Ratio(1.0), 5).unwrap();
    inc.insert(&old).unwrap();
    let gone: Vec<Uid> = old[1000..1900].iter().map(|p| p.0).collect();
    assert_eq!(inc.remove(&gone), gone.len());
    inc.insert(&new).unwrap();
    let pool: Vec<(Uid, f64)> = old[..1000].iter().chain(&old[1900..]).chain(&new).copied().collect();
    let want = scs(&pool, 0.15, Target::Ratio(1.0).for_pool(pool.len()), 5).unwrap();
    let differ = pool.iter().zip(&want).filter(|((u, _), c)| inc.count(*u) != **c).count();
    assert_eq!(differ, 0, "{differ} of {} counts differ from the batch sampler", pool.len());
}
