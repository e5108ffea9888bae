//! The counters a curation graph's operators add to (per process, shared by its workers), and the status line
//! made from them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::{EmbedCounters, ScsCounters};

/// Counters of one process: shards given out and done, rows, rejects, the embedder's and the sampler's
/// counters, and time per stage.
#[derive(Debug)]
pub struct Counters {
    /// When the run started.
    pub started: Instant,
    /// Shards given out (to be read, re-scored or replayed).
    pub given: AtomicU64,
    /// Shards committed or replayed.
    pub done: AtomicU64,
    /// Of those, replayed from an earlier run.
    pub replayed: AtomicU64,
    /// Shard failures (each failed attempt counts; see `failed_now`).
    pub failed: AtomicU64,
    /// Shards whose last attempt failed (the manifest's `failed` list): a retried shard that commits leaves it.
    pub failed_now: AtomicU64,
    /// Shards left unread because a stop was requested (the manifest's `interrupted` list).
    pub interrupted: AtomicU64,
    /// The shards the source's last scan found not arrived, by what they wait for.
    pub waiting: Mutex<BTreeMap<crate::Waiting, Vec<String>>>,
    /// Why the last publication of the subset failed (`None` after a successful one).
    pub publish_error: Mutex<Option<String>>,
    /// Rows (accepted samples) committed in this run.
    pub rows: AtomicU64,
    /// Shards in the pool now, as the manifest lists them (committed or replayed, less those replaced or
    /// deleted).
    pub pool_shards: AtomicU64,
    /// Rows of those shards, as the manifest's `pool.rows`.
    pub pool_rows: AtomicU64,
    /// Microseconds during which some shard job was given out and not done (the time the rate is over).
    pub busy_micros: AtomicU64,
    /// Rejects by reason, over shards committed in this run.
    pub rejects: Mutex<BTreeMap<String, u64>>,
    /// Embedding batches.
    pub embed: Arc<EmbedCounters>,
    /// The sampler.
    pub scs: Arc<ScsCounters>,
    /// SemDeDup's.
    pub semdedup: Arc<crate::SemDedupCounters>,
    /// Subset publications.
    pub published: AtomicU64,
    /// Microseconds spent committing shards (gathering, writing score tables, digests, records).
    pub commit_micros: AtomicU64,
    /// Microseconds spent reading sidecars and replaying committed shards.
    pub read_micros: AtomicU64,
    /// Microseconds spent publishing (subset + manifest).
    pub publish_micros: AtomicU64,
    /// Set when the run is over (stops the display).
    pub finished: AtomicBool,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            started: Instant::now(),
            given: AtomicU64::new(0),
            done: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            failed_now: AtomicU64::new(0),
            interrupted: AtomicU64::new(0),
            waiting: Mutex::new(BTreeMap::new()),
            publish_error: Mutex::new(None),
            rows: AtomicU64::new(0),
            pool_shards: AtomicU64::new(0),
            pool_rows: AtomicU64::new(0),
            busy_micros: AtomicU64::new(0),
            rejects: Mutex::new(BTreeMap::new()),
            embed: Default::default(),
            scs: Default::default(),
            semdedup: Default::default(),
            published: AtomicU64::new(0),
            commit_micros: AtomicU64::new(0),
            read_micros: AtomicU64::new(0),
            publish_micros: AtomicU64::new(0),
            finished: AtomicBool::new(false),
        }
    }
}

impl Counters {
    /// Shard jobs given out and not done yet.
    pub fn pending(&self) -> u64 {
        let (given, done, failures) = (
            self.given.load(Ordering::Relaxed),
            self.done.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        );
        given.saturating_sub(done + failures)
    }

    /// Adds `dt` to the busy time if some shard job is pending (called by the display every tick).
    pub fn tick(&self, dt: std::time::Duration) {
        if self.pending() > 0 {
            self.busy_micros.fetch_add(dt.as_micros() as u64, Ordering::Relaxed);
        }
    }

    /// One status line. Its shard and sample counts are the manifest's (the pool now: shards committed or
    /// replayed, less those replaced or deleted); the rate is samples read in this run over the time some
    /// shard was in work, so a following run's idle waits do not dilute it.
    pub fn line(&self) -> String {
        let busy = self.busy_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let secs = if busy > 0.0 { busy } else { self.started.elapsed().as_secs_f64().max(1e-9) };
        let failed = self.failed_now.load(Ordering::Relaxed);
        let interrupted = self.interrupted.load(Ordering::Relaxed);
        let rows = self.rows.load(Ordering::Relaxed);
        let rejects = self.rejects.lock().map(|r| r.clone()).unwrap_or_default();
        let total: u64 = rejects.values().sum();
        let top: Vec<String> = {
            let mut v: Vec<(&String, &u64)> = rejects.iter().collect();
            v.sort_by(|a, b| b.1.cmp(a.1));
            v.iter().take(3).map(|(k, n)| format!("{k} {n}")).collect()
        };
        let replayed = self.replayed.load(Ordering::Relaxed);
        let (pool_shards, pool_rows) =
            (self.pool_shards.load(Ordering::Relaxed), self.pool_rows.load(Ordering::Relaxed));
        let mut s = format!(
            "shards {pool_shards} in the pool{}, {} pending{}{} · {pool_rows} samples · read {rows} ({:.0}/s busy) · rejects {total}",
            if replayed > 0 { format!(" ({replayed} replayed)") } else { String::new() },
            self.pending(),
            if failed > 0 { format!(", {failed} failed") } else { String::new() },
            if interrupted > 0 { format!(", {interrupted} interrupted") } else { String::new() },
            rows as f64 / secs,
        );
        if !top.is_empty() {
            s.push_str(&format!(" ({})", top.join(", ")));
        }
        let waiting = self.waiting.lock().map(|w| w.clone()).unwrap_or_default();
        for (why, names) in &waiting {
            s.push_str(&format!(" · {} wait for {}", names.len(), why.key()));
        }
        let cap = self.embed.capacity.load(Ordering::Relaxed);
        if cap > 0 {
            s.push_str(&format!(
                " · batch fill {:.0}%",
                100.0 * self.embed.rows.load(Ordering::Relaxed) as f64 / cap as f64
            ));
        }
        s.push_str(&format!(
            " · pool {} · T {}",
            self.scs.pool.load(Ordering::Relaxed),
            self.scs.target.load(Ordering::Relaxed)
        ));
        s
    }

    /// Seconds per stage so far in this process (embedding batches, sidecar reads and replays, commits, the
    /// sampler, publication), summed over workers.
    pub fn stage_seconds(&self) -> Vec<(&'static str, f64)> {
        let s = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e6;
        vec![
            ("embed", s(&self.embed.micros)),
            ("read", s(&self.read_micros)),
            ("commit", s(&self.commit_micros)),
            ("scs", s(&self.scs.micros)),
            ("publish", s(&self.publish_micros)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The rate was samples over the whole run, so a following run that waited an hour for shards showed a
    /// rate near 0. It is samples over the time some shard was in work; the counts are the pool's.
    #[test]
    fn the_rate_counted_idle_time() {
        let c = Counters::default();
        c.given.store(1, Ordering::Relaxed);
        c.tick(Duration::from_secs(2)); // a shard in work
        c.rows.store(100, Ordering::Relaxed);
        c.done.store(1, Ordering::Relaxed);
        c.tick(Duration::from_secs(3600)); // idle: nothing pending
        c.pool_shards.store(1, Ordering::Relaxed);
        c.pool_rows.store(100, Ordering::Relaxed);
        let line = c.line();
        assert!(line.contains("read 100 (50/s busy)"), "{line}");
        assert!(line.starts_with("shards 1 in the pool, 0 pending · 100 samples"), "{line}");
    }
}
