//! Exact Soft Cap Sampling over a pool split across workers (by uid) that never gathers the pool: each worker
//! keeps the clocks of its own uids in an [`ScsPart`]; one [`ScsCoordinator`] finds the global threshold τ (the
//! T-th earliest firing over all clocks, see [`super::scs`]) by asking the parts questions whose answers are
//! numbers or a bounded list of firing times; every part then selects its firings at or before τ.
//!
//! The result is the batch sampler's, bit for bit, for any split of the pool: a clock's firings depend only on
//! (seed, uid, score), and τ is a property of the union of all firings.

use serde::{Deserialize, Serialize};

use super::Target;
use super::clocks::{Clocks, check_alpha};
use crate::{Error, Result, Uid};

/// A question the coordinator asks every part (one round of the protocol).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum ScsAsk {
    /// How many firings are at or before this log-time? At −∞ (the search's first round): what is the
    /// log-sum-exp of the scores? Answered with [`ScsReply::Count`].
    Count(f64),
    /// Select up to this many more firings (the earliest after the threshold) for now, and say when they fire.
    /// Answered with [`ScsReply::Times`]; always followed by a [`ScsAsk::Set`].
    Earliest(u64),
    /// Unselect up to this many firings (the latest selected) for now, and say when they fire. Answered with
    /// [`ScsReply::Times`]; always followed by a [`ScsAsk::Set`].
    Latest(u64),
    /// When do the firings in (lo, hi] fire? Answered with [`ScsReply::Times`].
    Between(f64, f64),
    /// Select exactly the firings at or before τ (`bulk`: in one pass over the part, for a move across many
    /// firings). Answered with [`ScsReply::State`].
    Set {
        /// The new threshold (a log firing time, or −∞ for none).
        tau: f64,
        /// Recount every clock rather than move firings one by one.
        bulk: bool,
    },
}

/// A part's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ScsReply {
    /// The part's selected firings and live examples (after a change of its pool, or a [`ScsAsk::Set`]).
    State {
        /// Which part.
        part: usize,
        /// Firings selected (at or before its threshold).
        selected: u64,
        /// Live examples.
        len: u64,
    },
    /// The answer to [`ScsAsk::Count`].
    Count {
        /// Firings at or before the asked time.
        count: u64,
        /// ln Σ e^score over the part when asked at −∞ (−∞ when empty, and when asked at another time).
        log_sum: f64,
    },
    /// Firing times.
    Times(Vec<f64>),
}

/// One worker's share of a partitioned SCS pool: its examples' clocks, with exactly the firings at or before a
/// threshold τ selected (τ is set by the [`ScsCoordinator`]; −∞ at first). Memory is O(its examples).
pub struct ScsPart {
    clocks: Clocks,
    tau: f64,
}

impl ScsPart {
    /// An empty part.
    pub fn new(alpha: f64, seed: u64) -> Result<Self> {
        check_alpha(alpha)?;
        Ok(ScsPart { clocks: Clocks::new(alpha, seed), tau: f64::NEG_INFINITY })
    }

    /// Live examples.
    pub fn len(&self) -> usize {
        self.clocks.alive
    }
    /// Whether the part is empty.
    pub fn is_empty(&self) -> bool {
        self.clocks.alive == 0
    }
    /// The count of `uid` (0 when absent).
    pub fn count(&self, uid: Uid) -> u32 {
        self.clocks.count(uid)
    }
    /// Whether `uid` is in the part.
    pub fn contains(&self, uid: Uid) -> bool {
        self.clocks.contains(uid)
    }

    /// Its state, as reported to the coordinator.
    pub fn state(&self, part: usize) -> ScsReply {
        ScsReply::State { part, selected: self.clocks.selected, len: self.clocks.alive as u64 }
    }

    /// Adds examples, selecting their firings at or before the current threshold. A uid already in the part, a
    /// repeated uid or a non-finite score rejects the whole batch (nothing changes) with an error naming the row.
    pub fn insert(&mut self, batch: &[(Uid, f64)]) -> Result<()> {
        self.clocks.insert(batch)?;
        self.settle();
        Ok(())
    }

    /// Removes examples (uids not in the part are ignored); returns how many were removed.
    pub fn remove(&mut self, uids: &[Uid]) -> usize {
        let removed = self.clocks.remove(uids);
        self.clocks.tidy();
        removed
    }

    /// Selects exactly the firings at or before the threshold, one firing at a time.
    fn settle(&mut self) {
        let tau = self.tau;
        let c = &mut self.clocks;
        while c.peek_next().is_some_and(|(t, _)| t <= tau) {
            c.take_next();
        }
        while c.peek_last().is_some_and(|(t, _)| t > tau) {
            c.drop_last();
        }
        c.tidy();
    }

    /// Answers a question of the coordinator.
    pub fn answer(&mut self, part: usize, ask: ScsAsk) -> ScsReply {
        let c = &mut self.clocks;
        match ask {
            ScsAsk::Count(x) => {
                if x == f64::NEG_INFINITY {
                    let max = c.slots.iter().filter(|s| s.alive()).map(|s| s.score).fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = c.slots.iter().filter(|s| s.alive()).map(|s| (s.score - max).exp()).sum();
                    let log_sum = if c.alive == 0 { f64::NEG_INFINITY } else { max + sum.ln() };
                    return ScsReply::Count { count: 0, log_sum };
                }
                // (Most clocks stop at their first firing, after x.)
                let count = (0..c.slots.len())
                    .filter(|&i| c.slots[i].alive())
                    .map(|i| c.firings(i).count_until(x) as u64)
                    .sum();
                ScsReply::Count { count, log_sum: f64::NEG_INFINITY }
            }
            ScsAsk::Earliest(k) => ScsReply::Times((0..k).map_while(|_| c.take_next()).collect()),
            ScsAsk::Latest(k) => ScsReply::Times((0..k).map_while(|_| c.drop_last()).collect()),
            ScsAsk::Between(lo, hi) => {
                let mut times = Vec::new();
                for i in (0..c.slots.len()).filter(|&i| c.slots[i].alive()) {
                    times.extend(c.firings(i).take_while(|&t| t <= hi).filter(|&t| t > lo));
                }
                ScsReply::Times(times)
            }
            ScsAsk::Set { tau, bulk } => {
                self.tau = tau;
                if bulk {
                    self.clocks.rebuild(tau);
                } else {
                    self.settle();
                }
                self.state(part)
            }
        }
    }

    /// (uid, count) for every selected example, in uid order.
    pub fn counts(&self) -> Vec<(Uid, u32)> {
        self.clocks.counts()
    }

    /// (uid, count change) for every uid whose count changed since the last call, in uid order. Read it after
    /// a change of the pool and after a [`ScsAsk::Set`], never between an [`ScsAsk::Earliest`] or
    /// [`ScsAsk::Latest`] and its `Set`: their selections are provisional.
    pub fn changes(&mut self) -> Vec<(Uid, i64)> {
        self.clocks.changes()
    }
}

/// A running bracket search for τ (the batch sampler's regula falsi, one count per round).
#[derive(Clone, Debug)]
struct Search {
    lo: f64,
    c_lo: u64,
    hi: f64,
    c_hi: u64,
    /// The last probe, for the secant step while the bracket is open.
    prev: Option<(f64, u64)>,
    iter: u32,
    /// The time asked in the round now answered (None: the first round, which only learns the log-sum).
    asked: Option<f64>,
}

#[derive(Clone, Debug)]
enum Phase {
    Idle,
    Earliest(u64),
    Latest(u64),
    Search(Search),
    Between { c_lo: u64 },
    Set,
}

/// Finds the global threshold τ of a partitioned SCS pool by rounds of questions to every [`ScsPart`], so that
/// the parts together select the same firings as [`super::scs`] over the whole pool.
///
/// After the pool changes, the parts that changed report their [`ScsReply::State`]; the coordinator sums the
/// selected firings C at the current τ and the pool size N, and with T = target(N):
/// - C = T: nothing to do;
/// - |C − T| ≤ a window (2¹⁶): each part provisionally selects (or unselects) its |C − T| next (or |C − T| + 1
///   latest) firings and sends their times; the coordinator picks the new τ among them — one round, at most
///   parts × window times sent;
/// - larger changes (a first batch, a big shard): rounds of counts at probe times narrow a bracket around τ until
///   it holds at most the window's firings, whose times are then gathered and τ selected among them.
///
/// Then every part is told τ and selects its firings at or before it.
pub struct ScsCoordinator {
    target: Target,
    /// α = ∞ samples without replacement: T is capped at the pool.
    without_replacement: bool,
    tau: f64,
    parts: Vec<(u64, u64)>,
    phase: Phase,
    window: u64,
}

impl ScsCoordinator {
    /// A coordinator of `parts` empty parts sampling with penalty `alpha`.
    pub fn new(alpha: f64, target: Target, parts: usize) -> Result<Self> {
        check_alpha(alpha)?;
        target.check()?;
        Ok(ScsCoordinator {
            target,
            without_replacement: alpha.is_infinite(),
            tau: f64::NEG_INFINITY,
            parts: vec![(0, 0); parts],
            phase: Phase::Idle,
            window: 1 << 16,
        })
    }

    /// With another least gather window (default 2¹⁶; the window is the larger of it and T / 256). Tests use a
    /// small one to exercise the bracket search on small pools.
    pub fn with_window(mut self, window: u64) -> Self {
        self.window = window.max(1);
        self
    }

    /// The live examples over all parts (as last reported).
    pub fn pool(&self) -> u64 {
        self.parts.iter().map(|p| p.1).sum()
    }
    /// The current T (with α = ∞, at most the pool: the batch sampler refuses more, a stream takes every example
    /// once).
    pub fn target(&self) -> u64 {
        let t = self.target.for_pool(self.pool() as usize);
        if self.without_replacement { t.min(self.pool()) } else { t }
    }

    /// The most firings gathered in one round from each part, and the bracket's width at which the search
    /// gathers (the batch sampler's window).
    fn window(&self) -> u64 {
        self.window.max(self.target() / 256)
    }
    /// The current threshold.
    pub fn tau(&self) -> f64 {
        self.tau
    }

    /// Takes a round's replies (the parts' states after a change, or the answers to the last question) and
    /// returns the next question for every part, or `None` when the parts' selection is the sample.
    pub fn step(&mut self, replies: &[ScsReply]) -> Result<Option<ScsAsk>> {
        // An error leaves the coordinator idle: the next change starts afresh from the parts' states.
        let phase = std::mem::replace(&mut self.phase, Phase::Idle);
        let mut times: Vec<f64> = Vec::new();
        let (mut count, mut log_sum, mut counted) = (0u64, f64::NEG_INFINITY, false);
        for r in replies {
            match r {
                ScsReply::State { part, selected, len } => {
                    let n = self.parts.len();
                    let slot = self
                        .parts
                        .get_mut(*part)
                        .ok_or_else(|| Error::Config(format!("scs: a reply from part {part} of {n}")))?;
                    *slot = (*selected, *len);
                }
                ScsReply::Count { count: c, log_sum: l } => {
                    count += c;
                    log_sum = log_add(log_sum, *l);
                    counted = true;
                }
                ScsReply::Times(t) => times.extend_from_slice(t),
            }
        }
        let target = self.target();
        let selected: u64 = self.parts.iter().map(|p| p.0).sum();
        match phase {
            Phase::Set => {
                if selected != target {
                    // Only equal firing times (of probability 0) can make the count at τ differ from T.
                    tracing::debug!(selected, target, "scs: the count at τ is not T (tied firing times)");
                }
                Ok(None)
            }
            Phase::Idle => Ok(self.decide(selected, target)),
            Phase::Earliest(k) => {
                // The k-th earliest of the parts' next firings is the new τ (all of them, if the pool has fewer:
                // α = ∞ with T above the pool).
                times.sort_unstable_by(f64::total_cmp);
                let tau = match times.get(k as usize - 1) {
                    Some(&t) => t,
                    None => {
                        tracing::warn!(wanted = k, found = times.len(), "scs: fewer firings than the target");
                        times.last().copied().unwrap_or(self.tau)
                    }
                };
                Ok(Some(self.set(tau, false)))
            }
            Phase::Latest(k) => {
                // Each part sent its k + 1 latest; the (k + 1)-th latest of all stays and is the new τ.
                times.sort_unstable_by(|a, b| b.total_cmp(a));
                let tau = times.get(k as usize).copied().unwrap_or(f64::NEG_INFINITY);
                Ok(Some(self.set(tau, false)))
            }
            Phase::Search(mut s) => {
                if !counted {
                    return Err(Error::Config("scs: a count round got no counts".into()));
                }
                match s.asked {
                    None => {
                        // The first round: x₀ = ln T − ln Σ e^s, where α = 0 would fire about T times.
                        let x = (target as f64).ln() - log_sum;
                        Ok(Some(self.probe(s, x)))
                    }
                    Some(x) => {
                        if count >= target {
                            if x < s.hi {
                                (s.hi, s.c_hi) = (x, count);
                            }
                        } else if x > s.lo {
                            (s.lo, s.c_lo) = (x, count);
                        }
                        self.search(s, x, count, target)
                    }
                }
            }
            Phase::Between { c_lo } => {
                let m = (target - c_lo) as usize;
                if m == 0 || times.len() < m {
                    return Err(Error::Config(format!(
                        "scs: inconsistent firing counts ({} firings in the bracket, {m} wanted)",
                        times.len()
                    )));
                }
                times.select_nth_unstable_by(m - 1, f64::total_cmp);
                Ok(Some(self.set(times[m - 1], true)))
            }
        }
    }

    fn set(&mut self, tau: f64, bulk: bool) -> ScsAsk {
        self.tau = tau;
        self.phase = Phase::Set;
        ScsAsk::Set { tau, bulk }
    }

    fn decide(&mut self, selected: u64, target: u64) -> Option<ScsAsk> {
        if selected == target {
            return None;
        }
        let window = self.window();
        if target == 0 || self.pool() == 0 {
            return (selected > 0).then(|| self.set(f64::NEG_INFINITY, selected > window));
        }
        let k = selected.abs_diff(target);
        if k <= window {
            if selected < target {
                self.phase = Phase::Earliest(k);
                return Some(ScsAsk::Earliest(k));
            }
            self.phase = Phase::Latest(k);
            return Some(ScsAsk::Latest(k + 1));
        }
        let mut s = Search {
            lo: f64::NEG_INFINITY,
            c_lo: 0,
            hi: f64::INFINITY,
            c_hi: u64::MAX,
            prev: None,
            iter: 0,
            asked: None,
        };
        if selected < target {
            (s.lo, s.c_lo) = (self.tau, selected);
        } else {
            (s.hi, s.c_hi) = (self.tau, selected);
        }
        self.phase = Phase::Search(s);
        Some(ScsAsk::Count(f64::NEG_INFINITY))
    }

    fn probe(&mut self, mut s: Search, x: f64) -> ScsAsk {
        s.asked = Some(x);
        self.phase = Phase::Search(s);
        ScsAsk::Count(x)
    }

    /// The next probe of the search, or the gather of the bracket's firings once it holds few.
    fn search(&mut self, mut s: Search, x: f64, c: u64, target: u64) -> Result<Option<ScsAsk>> {
        let g = |c: u64| (c as f64 + 1.0).ln() - (target as f64 + 1.0).ln();
        if s.lo.is_finite() && s.hi.is_finite() {
            if s.c_hi - s.c_lo <= self.window() || s.hi - s.lo <= 1e-12 * (s.hi.abs() + 1.0) {
                self.phase = Phase::Between { c_lo: s.c_lo };
                return Ok(Some(ScsAsk::Between(s.lo, s.hi)));
            }
            let frac = if s.iter % 3 == 2 { 0.5 } else { (-g(s.c_lo) / (g(s.c_hi) - g(s.c_lo))).clamp(0.02, 0.98) };
            s.iter += 1;
            let mid = s.lo + (s.hi - s.lo) * frac;
            return Ok(Some(self.probe(s, mid)));
        }
        // Open bracket: step towards the target by the secant through the last two probes (overshooting a
        // little, so the next one likely brackets), or by one unit without history.
        let dir = if c < target { 1.0 } else { -1.0 };
        let step = match s.prev {
            Some((px, pc)) if g(c) != g(pc) => (-g(c) * (x - px) / (g(c) - g(pc))).abs() * 1.2,
            _ => 1.0,
        };
        s.prev = Some((x, c));
        s.iter += 1;
        let next = x + dir * step.clamp(0.01, 64.0);
        if !next.is_finite() || next.abs() > 1e6 {
            return Err(Error::Config("scs cannot reach the target: scores too spread for f64 times".into()));
        }
        Ok(Some(self.probe(s, next)))
    }
}

fn log_add(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    if b == f64::NEG_INFINITY {
        return a;
    }
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    hi + (lo - hi).exp().ln_1p()
}

/// Runs the protocol to the end over parts held in one thread: the parts' states go in, and questions and
/// answers go round until the coordinator is done. (A dataflow runs the same rounds with the parts on
/// different workers.)
pub fn settle_parts(coordinator: &mut ScsCoordinator, parts: &mut [ScsPart]) -> Result<()> {
    let mut replies: Vec<ScsReply> = parts.iter().enumerate().map(|(i, p)| p.state(i)).collect();
    let mut rounds = 0;
    while let Some(ask) = coordinator.step(&replies)? {
        replies = parts.iter_mut().enumerate().map(|(i, p)| p.answer(i, ask)).collect();
        rounds += 1;
        if rounds > 10_000 {
            return Err(Error::Config("scs: the partitioned search did not converge".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::scs;

    fn pool(n: u128, scale: f64, seed: u64) -> Vec<(Uid, f64)> {
        let mut r = crate::rng::SplitMix64::new(seed);
        (0..n).map(|i| (Uid::from_u128(i * 7919 + 3), (r.unit() - 0.5) * scale)).collect()
    }

    fn part_of(uid: Uid, parts: usize) -> usize {
        (uid.low().wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % parts
    }

    /// The union of the parts' counts against the batch sampler over the live pool.
    fn check(parts: &[ScsPart], live: &[(Uid, f64)], alpha: f64, target: u64, seed: u64, what: &str) {
        let want = scs(live, alpha, target, seed).unwrap();
        let mut got: Vec<(Uid, u32)> = parts.iter().flat_map(|p| p.counts()).collect();
        got.sort_unstable();
        let mut want: Vec<(Uid, u32)> =
            live.iter().zip(&want).filter(|(_, c)| **c > 0).map(|(p, c)| (p.0, *c)).collect();
        want.sort_unstable();
        let differ = got.iter().filter(|g| want.binary_search(g).is_err()).count();
        assert!(got == want, "{what}: {differ} of {} selected uids differ", got.len());
    }

    /// Shards arrive (and some leave) in a random order over W parts; after every change the parts' union
    /// equals the batch sampler over the live pool, for both the gather and the bracket search, and the
    /// change lists add up to the counts.
    #[test]
    fn partitioned_equals_the_batch_sampler_at_every_step() {
        let all = pool(6000, 8.0, 5);
        for (w, window, target, alpha) in [
            (1usize, 1u64 << 16, Target::Fixed(3000), 0.15),
            (2, 1 << 16, Target::Ratio(0.7), 0.15),
            (3, 50, Target::Ratio(1.5), 0.3),
            (4, 7, Target::Fixed(5000), 0.15),
            (4, 1 << 16, Target::Ratio(0.5), f64::INFINITY),
            // α = ∞ with T above the pool: every example once (T capped at the pool).
            (3, 7, Target::Ratio(1.5), f64::INFINITY),
            (2, 1 << 16, Target::Fixed(5000), f64::INFINITY),
            (2, 20, Target::Ratio(0.3), 0.0),
        ] {
            let seed = 11 + w as u64;
            let mut parts: Vec<ScsPart> = (0..w).map(|_| ScsPart::new(alpha, seed).unwrap()).collect();
            let mut coord = ScsCoordinator::new(alpha, target, w).unwrap().with_window(window);
            let mut shards: Vec<&[(Uid, f64)]> = all.chunks(500).collect();
            let mut r = crate::rng::SplitMix64::new(w as u64);
            for i in (1..shards.len()).rev() {
                shards.swap(i, r.below(i as u64 + 1) as usize);
            }
            let mut live: Vec<(Uid, f64)> = Vec::new();
            let mut sums: std::collections::HashMap<Uid, i64> = Default::default();
            for (step, shard) in shards.iter().enumerate() {
                // Every third step also takes an earlier shard away.
                let gone: Vec<Uid> = if step % 3 == 2 { live.drain(..300).map(|p| p.0).collect() } else { vec![] };
                for p in parts.iter_mut().enumerate() {
                    let mine: Vec<Uid> = gone.iter().copied().filter(|u| part_of(*u, w) == p.0).collect();
                    p.1.remove(&mine);
                    let add: Vec<(Uid, f64)> = shard.iter().copied().filter(|q| part_of(q.0, w) == p.0).collect();
                    p.1.insert(&add).unwrap();
                }
                live.extend_from_slice(shard);
                settle_parts(&mut coord, &mut parts).unwrap();
                let what = format!("{w} parts, window {window}, {target:?}, α {alpha}, step {step}");
                let t = target.for_pool(live.len());
                let t = if alpha.is_infinite() { t.min(live.len() as u64) } else { t };
                check(&parts, &live, alpha, t, seed, &what);
                for p in parts.iter_mut() {
                    for (u, d) in p.changes() {
                        *sums.entry(u).or_default() += d;
                    }
                }
                sums.retain(|_, c| *c != 0);
                let counts: std::collections::HashMap<Uid, i64> =
                    parts.iter().flat_map(|p| p.counts()).map(|(u, c)| (u, c as i64)).collect();
                assert_eq!(sums, counts, "{what}: changes");
            }
        }
    }

    #[test]
    fn a_reply_from_an_unknown_part_is_an_error() {
        let mut coord = ScsCoordinator::new(0.15, Target::Fixed(3), 2).unwrap();
        let err = coord.step(&[ScsReply::State { part: 2, selected: 0, len: 1 }]).unwrap_err();
        assert!(err.to_string().contains("part 2 of 2"), "{err}");
    }
}
