//! Deduplication inside the curation graph: SemDeDup's near duplicates as `flyt curate` finds them incrementally
//! (any worker count, any arrival order, a deleted shard re-admitting what it had suppressed) equal
//! `flyt filter --method semdedup`'s batch computation over the same pool and centroids; exact content
//! duplicates of sidecar pools by DataComp's `sha256`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::{flyt, manifest, ok, spawn, subset};
use flyt::Uid;
use flyt::synth::SynthSidecars;

const EPS: &str = "0.01";

fn synth(shards: usize, seed: u64) -> SynthSidecars {
    SynthSidecars { shards, rows_per_shard: 200, dim: 16, near_duplicates: 0.2, seed, ..Default::default() }
}

fn pool(dir: &Path, shards: usize, seed: u64) {
    synth(shards, seed).write(dir).unwrap();
}

/// The batch computation: uid → similarity of every sample `flyt filter --method semdedup` drops.
fn batch(p: &Path, pool: &str) -> BTreeMap<Uid, u32> {
    let scores = p.join(format!("{pool}.scores.parquet"));
    ok(flyt(
        &[
            "filter",
            "--method",
            "semdedup",
            "--pool",
            pool,
            "--centroids",
            "c.npy",
            "--epsilon",
            EPS,
            "--out",
            &format!("{pool}.npy"),
            "--scores",
            scores.to_str().unwrap(),
        ],
        p,
    ));
    let t = flyt::read_score_table(&scores, &["semdedup_keep", "semdedup_sim"]).unwrap();
    let kept: BTreeSet<Uid> = flyt::read_subset(p.join(format!("{pool}.npy"))).unwrap().into_iter().collect();
    let mut out = BTreeMap::new();
    for (i, (u, _)) in t.ids.iter().enumerate() {
        assert_eq!(t.columns[0][i] > 0.5, kept.contains(u));
        if t.columns[0][i] < 0.5 {
            out.insert(*u, t.columns[1][i].to_bits());
        }
    }
    out
}

/// uid → (similarity bits) of the near duplicates a curation recorded.
fn recorded(out: &Path) -> BTreeMap<Uid, u32> {
    let t = flyt::read_score_table(out.join("duplicates.parquet"), &["similarity"]).unwrap();
    t.ids.iter().zip(&t.columns[0]).map(|((u, _), s)| (*u, s.to_bits())).collect()
}

fn deliver(from: &Path, stem: &str, dir: &Path) {
    for ext in ["npz", "parquet"] {
        let tmp = dir.join(format!(".{stem}.{ext}.tmp"));
        std::fs::copy(from.join(format!("{stem}.{ext}")), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(format!("{stem}.{ext}"))).unwrap();
    }
}

#[test]
fn semdedup_in_the_graph_equals_the_batch_filter_for_any_worker_count_and_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    pool(&p.join("pool"), 6, 4);
    ok(flyt(&["clusters", "--pool", "pool", "--k", "5", "--out", "c.npy"], p));
    let want = batch(p, "pool");
    assert!(want.len() > 100, "the pool plants near duplicates ({} found)", want.len());
    for w in ["1", "2", "3"] {
        let out = format!("out{w}");
        ok(flyt(
            &[
                "curate",
                "--shards",
                "pool",
                "--out",
                &out,
                "--workers",
                w,
                "--dedup-semantic",
                "c.npy",
                "--dedup-epsilon",
                EPS,
            ],
            p,
        ));
        assert_eq!(recorded(&p.join(&out)), want, "{w} workers: the near duplicates and their similarities");
        let m = manifest(&p.join(&out));
        assert_eq!(m["pool"]["uids"].as_u64().unwrap(), 1200 - want.len() as u64);
        assert_eq!(m["dedup"]["by_reason"]["near_duplicate"].as_u64().unwrap(), want.len() as u64);
        assert!(m["models"]["semdedup"]["centroids"].is_string());
        let s = subset(&p.join(&out));
        assert!(!s.is_empty() && s.keys().all(|u| !want.contains_key(u)), "a near duplicate was sampled");
    }

    // Following: shards arrive in another order, then one is deleted; what it suppressed comes back.
    let watched = p.join("watched");
    std::fs::create_dir_all(&watched).unwrap();
    let child = spawn(
        &[
            "curate",
            "--shards",
            "watched",
            "--out",
            "follow",
            "--follow",
            "--idle-exit",
            "4",
            "--poll-ms",
            "100",
            "--workers",
            "2",
            "--dedup-semantic",
            "c.npy",
            "--dedup-epsilon",
            EPS,
        ],
        p,
    );
    for stem in ["00000004", "00000001", "00000005", "00000000", "00000003", "00000002"] {
        deliver(&p.join("pool"), stem, &watched);
        std::thread::sleep(Duration::from_millis(250));
    }
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while manifest(&p.join("follow"))["shards"].as_array().map_or(0, |a| a.len()) < 6
        && std::time::Instant::now() < until
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(recorded(&p.join("follow")), want, "followed, in another order");
    for ext in ["npz", "parquet"] {
        std::fs::remove_file(watched.join(format!("00000000.{ext}"))).unwrap();
    }
    ok(child.wait_with_output().unwrap());
    let after = batch(p, "watched");
    assert_eq!(recorded(&p.join("follow")), after, "after a deletion");
    // the deleted shard held earlier-ranked members of some clusters: some suppressed samples are back
    let deleted: BTreeSet<Uid> = (0..200).map(|i| synth(6, 4).uid(0, i)).collect();
    let back = want.keys().filter(|u| !after.contains_key(*u) && !deleted.contains(*u)).count();
    assert!(back > 0, "nothing the deleted shard suppressed was re-admitted");
    let m = manifest(&p.join("follow"));
    assert_eq!(m["pool"]["uids"].as_u64().unwrap(), 1000 - after.len() as u64);
}

/// A DataComp sidecar pool whose metadata carries `sha256`: rows with the same digest (here every fifth row of
/// shard 1 repeats a row of shard 0's image) leave the pool but the least uid of each, in batch and following.
#[test]
fn exact_dedup_of_a_sidecar_pool_by_datacomp_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let s = SynthSidecars { shards: 3, rows_per_shard: 100, dim: 8, seed: 2, ..Default::default() };
    s.write(&p.join("pool")).unwrap();
    let digest = |tag: String| flyt::sha256_hex(tag.as_bytes());
    let mut want: BTreeMap<Uid, Uid> = BTreeMap::new();
    for shard in 0..3 {
        let path = p.join(format!("pool/{shard:08}.parquet"));
        let mut t = flyt::read_metadata(&path).unwrap();
        for (i, r) in t.rows.iter_mut().enumerate() {
            r.sha256 = Some(if shard == 1 && i % 5 == 0 {
                let (a, b) = (s.uid(0, i), r.uid);
                let (keep, drop) = if a < b { (a, b) } else { (b, a) };
                want.insert(drop, keep);
                digest(format!("0-{i}"))
            } else {
                digest(format!("{shard}-{i}"))
            });
        }
        flyt::write_metadata(&path, &t.rows).unwrap();
    }
    assert_eq!(want.len(), 20);
    ok(flyt(&["curate", "--shards", "pool", "--out", "out", "--workers", "2", "--dedup-exact"], p));
    let t = flyt::read_score_table(p.join("out/duplicates.parquet"), &[]).unwrap();
    let got: BTreeSet<Uid> = t.ids.iter().map(|(u, _)| *u).collect();
    assert_eq!(got, want.keys().copied().collect::<BTreeSet<_>>());
    let m = manifest(&p.join("out"));
    assert_eq!(m["pool"]["uids"].as_u64().unwrap(), 300 - 20);
    assert_eq!(m["dedup"]["by_reason"]["duplicate_content"].as_u64().unwrap(), 20);
    // the score tables carry the digests, so a restart (a replay, nothing re-read) finds the same
    ok(flyt(&["curate", "--shards", "pool", "--out", "out", "--workers", "1", "--dedup-exact"], p));
    let m = manifest(&p.join("out"));
    assert!(m["shards"].as_array().unwrap().iter().all(|s| s["replayed"] == true), "{m}");
    let t2 = flyt::read_score_table(p.join("out/duplicates.parquet"), &[]).unwrap();
    assert_eq!(t2.ids, t.ids);
}
