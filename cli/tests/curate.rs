//! `flyt curate` against a from-scratch batch computation (the oracle): the subset is the same for any worker
//! count, any arrival order, two processes, a SIGKILL and restart, re-delivered, replaced and deleted shards, changed
//! scoring models and external scores that arrive late.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::{flyt, free_port, manifest, ok, spawn, subset};
use flyt::Uid;
use flyt::rng::SplitMix64;
use flyt::sampling::{Target, scs};
use flyt::synth::SynthSidecars;

/// The batch computation: every sidecar pair in the directory, one row per uid (the least (shard, key)),
/// CLIP score of the f16 embeddings, then SCS over the whole pool. `score` maps (uid, clip score) to the score
/// SCS samples by.
fn oracle(dir: &Path, alpha: f64, seed: u64, score: &dyn Fn(Uid, f32) -> Option<f64>) -> (BTreeMap<Uid, u32>, usize) {
    let (best, rows) = common::sidecar_rows(dir);
    let pool: Vec<(Uid, f64)> = best.iter().filter_map(|(u, (_, s))| score(*u, *s).map(|v| (*u, v))).collect();
    let t = Target::Ratio(1.0).for_pool(pool.len());
    let counts = scs(&pool, alpha, t, seed).unwrap();
    (pool.iter().zip(counts).filter(|(_, c)| *c > 0).map(|((u, _), c)| (*u, c)).collect(), rows)
}

/// Asserts two subsets are equal; on failure says how they differ (not the whole maps).
#[track_caller]
fn same(got: &BTreeMap<Uid, u32>, want: &BTreeMap<Uid, u32>, what: &str) {
    if got == want {
        return;
    }
    let diff: Vec<String> = want
        .keys()
        .chain(got.keys())
        .filter(|u| got.get(u) != want.get(u))
        .take(5)
        .map(|u| format!("{u}: got {:?} want {:?}", got.get(u), want.get(u)))
        .collect();
    panic!(
        "{what}: subsets differ: {} vs {} uids, Σ {} vs {}; e.g. {}",
        got.len(),
        want.len(),
        got.values().sum::<u32>(),
        want.values().sum::<u32>(),
        diff.join("; ")
    );
}

fn clip_only(_: Uid, s: f32) -> Option<f64> {
    Some(s as f64)
}

fn pool(dir: &Path, shards: usize, first: usize, seed: u64) {
    SynthSidecars {
        shards,
        rows_per_shard: 300,
        dim: 16,
        duplicates: 0.1,
        first_shard: first,
        seed,
        ..Default::default()
    }
    .write(dir)
    .unwrap();
}

/// Moves a shard's sidecars into `dir` the way a writer should: a temporary name, then a rename.
fn deliver(from: &Path, stem: &str, dir: &Path) {
    for ext in ["npz", "parquet"] {
        let tmp = dir.join(format!(".{stem}.{ext}.tmp"));
        std::fs::copy(from.join(format!("{stem}.{ext}")), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(format!("{stem}.{ext}"))).unwrap();
    }
}

fn stems(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn shuffled<T>(mut v: Vec<T>, seed: u64) -> Vec<T> {
    let mut rng = SplitMix64::new(seed);
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i as u64 + 1) as usize);
    }
    v
}

fn wait_ok(c: Child) -> String {
    ok(c.wait_with_output().unwrap())
}

#[test]
fn batch_runs_equal_the_oracle_for_any_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    pool(&p.join("pool"), 7, 0, 1);
    let (want, rows) = oracle(&p.join("pool"), 0.15, 3, &clip_only);
    assert!(want.values().any(|&c| c > 1), "the test wants repeats");
    for w in ["1", "2", "4"] {
        let out = format!("out{w}");
        ok(flyt(&["curate", "--shards", "pool", "--out", &out, "--workers", w, "--seed", "3"], p));
        same(&subset(&p.join(&out)), &want, &format!("{w} workers"));
        let m = manifest(&p.join(&out));
        assert_eq!(m["complete"], true);
        assert_eq!(m["pool"]["rows"].as_u64().unwrap() as usize, rows);
        assert_eq!(m["pool"]["uids"].as_u64().unwrap() as usize, m["pool"]["scored"].as_u64().unwrap() as usize);
        assert_eq!(m["shards"].as_array().unwrap().len(), 7);
        // counts reconcile: every sidecar row is accepted or rejected with a reason
        assert_eq!(m["ingest"]["samples"].as_u64().unwrap(), 7 * 300);
        assert_eq!(
            m["ingest"]["accepted"].as_u64().unwrap() + m["ingest"]["rejected"].as_u64().unwrap(),
            m["ingest"]["samples"].as_u64().unwrap()
        );
    }
}

#[test]
fn following_in_any_arrival_order_with_redelivery_and_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let (src, watched) = (p.join("src"), p.join("watched"));
    std::fs::create_dir_all(&watched).unwrap();
    pool(&src, 8, 0, 2);
    let child = spawn(
        &[
            "curate",
            "--shards",
            "watched",
            "--out",
            "out",
            "--follow",
            "--idle-exit",
            "5",
            "--poll-ms",
            "100",
            "--workers",
            "3",
            "--seed",
            "5",
        ],
        p,
    );
    let mut rng = SplitMix64::new(11);
    for stem in shuffled(stems(&src), 7) {
        deliver(&src, &stem, &watched);
        std::thread::sleep(Duration::from_millis(rng.below(300)));
    }
    // Let it commit everything, then re-deliver one shard with the same bytes and replace another.
    let until = Instant::now() + Duration::from_secs(60);
    while manifest_rows(&p.join("out")) < 8 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = subset(&p.join("out"));
    deliver(&src, "00000002", &watched);
    std::thread::sleep(Duration::from_millis(1500));
    same(&subset(&p.join("out")), &before, "a re-delivered shard changes nothing");
    let other = p.join("other");
    SynthSidecars { shards: 1, rows_per_shard: 250, dim: 16, first_shard: 5, seed: 99, ..Default::default() }
        .write(&other)
        .unwrap();
    deliver(&other, "00000005", &watched);
    // And one shard is deleted: its rows leave the pool.
    std::thread::sleep(Duration::from_millis(1500));
    for ext in ["npz", "parquet"] {
        std::fs::remove_file(watched.join(format!("00000007.{ext}"))).unwrap();
    }
    let stdout = wait_ok(child);
    assert!(stdout.contains("subset:"), "{stdout}");
    let (want, rows) = oracle(&watched, 0.15, 5, &clip_only);
    same(&subset(&p.join("out")), &want, "followed");
    assert_eq!(manifest(&p.join("out"))["pool"]["rows"].as_u64().unwrap() as usize, rows, "no shard counted twice");
}

fn manifest_rows(out: &Path) -> usize {
    std::fs::read(out.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|m| m["shards"].as_array().map(|a| a.len()))
        .unwrap_or(0)
}

#[test]
fn sigkill_at_a_random_point_then_restart_gives_the_same_subset() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let (src, watched) = (p.join("src"), p.join("watched"));
    std::fs::create_dir_all(&watched).unwrap();
    pool(&src, 12, 0, 3);
    let mut rng =
        SplitMix64::new(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    let kill_after = Duration::from_millis(300 + rng.below(1500));
    let mut child =
        spawn(&["curate", "--shards", "watched", "--out", "out", "--follow", "--workers", "2", "--poll-ms", "20"], p);
    let started = Instant::now();
    let order = shuffled(stems(&src), rng.next_u64());
    for stem in &order {
        deliver(&src, stem, &watched);
        std::thread::sleep(Duration::from_millis(120));
        if started.elapsed() >= kill_after {
            break;
        }
    }
    while started.elapsed() < kill_after {
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let committed_before = std::fs::read_dir(p.join("out/shards"))
        .map(|d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "json")).count())
        .unwrap_or(0);
    for stem in &order {
        deliver(&src, stem, &watched);
    }
    let stdout = ok(flyt(&["curate", "--shards", "watched", "--out", "out", "--workers", "2"], p));
    let (want, rows) = oracle(&watched, 0.15, 0, &clip_only);
    same(&subset(&p.join("out")), &want, &format!("killed after {kill_after:?}: {stdout}"));
    let m = manifest(&p.join("out"));
    assert_eq!(m["pool"]["rows"].as_u64().unwrap() as usize, rows, "no shard counted twice");
    let replayed = m["shards"].as_array().unwrap().iter().filter(|s| s["replayed"] == true).count();
    assert!(
        replayed >= committed_before.min(12) && replayed <= 12,
        "{replayed} replayed, {committed_before} committed before"
    );
}

#[test]
fn two_processes_on_localhost_equal_the_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    pool(&p.join("pool"), 6, 0, 4);
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    std::fs::write(p.join("hosts"), format!("127.0.0.1:{}\n127.0.0.1:{}\n", ports[0], ports[1])).unwrap();
    let run = |i: &str| {
        spawn(
            &[
                "curate", "--shards", "pool", "--out", "out", "-w", "2", "-n", "2", "-p", i, "-h", "hosts", "--seed",
                "8",
            ],
            p,
        )
    };
    let (a, b) = (run("0"), run("1"));
    let (sa, _) = (wait_ok(a), wait_ok(b));
    assert!(sa.contains("subset:"), "{sa}");
    let (want, rows) = oracle(&p.join("pool"), 0.15, 8, &clip_only);
    same(&subset(&p.join("out")), &want, "2 processes");
    assert_eq!(manifest(&p.join("out"))["pool"]["rows"].as_u64().unwrap() as usize, rows);
}

#[test]
fn the_example_config_runs_and_bad_configs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    pool(&p.join("pool"), 2, 0, 9);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/examples/pipeline.toml");
    let example = example.to_str().unwrap();
    ok(flyt(&["curate", "--config", example, "--shards", "pool", "--out", "out", "--target", "100"], p));
    let m = manifest(&p.join("out"));
    assert_eq!(m["subset"]["samples"], 100);
    assert_eq!(m["config"]["sample"]["alpha"], 0.15);

    std::fs::write(p.join("bad.toml"), "[sample]\nalpah = 0.2\n").unwrap();
    let o = flyt(&["curate", "--config", "bad.toml", "--shards", "pool", "--out", "out2"], p);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("bad.toml") && err.contains("alpah"), "{err}");
    let o = flyt(&["curate", "--shards", "pool", "--out", "out3", "--alpha=-1"], p);
    assert!(String::from_utf8_lossy(&o.stderr).contains("alpha"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = flyt(&["curate", "--out", "out4"], p);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no shards"));
    // A damaged sidecar fails its shard (named, with the file and reason) and the rest is curated.
    std::fs::write(p.join("pool/00000001.npz"), b"not a zip").unwrap();
    let o = flyt(&["curate", "--shards", "pool", "--out", "out5"], p);
    assert_eq!(o.status.code(), Some(1));
    let m = manifest(&p.join("out5"));
    assert_eq!(m["shards"].as_array().unwrap().len(), 1);
    let failed = &m["failed"][0];
    assert_eq!(failed["name"], "00000001");
    assert!(failed["error"].as_str().unwrap().contains("00000001.npz"), "{failed}");
}

/// A restart re-read and re-embedded every shard when `--shards` was spelled another way (`pool`, then
/// `/abs/.../pool`) although the files were the same: a shard is its file name and its content.
#[test]
fn resume_depended_on_how_the_shard_path_was_spelled() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    pool(&p.join("pool"), 3, 0, 9);
    ok(flyt(&["curate", "--shards", "pool", "--out", "out"], p));
    let want = subset(&p.join("out"));
    let abs = p.join("pool").canonicalize().unwrap();
    for spelled in [abs.to_str().unwrap(), "./pool/"] {
        ok(flyt(&["curate", "--shards", spelled, "--out", "out"], p));
        let m = manifest(&p.join("out"));
        let shards = m["shards"].as_array().unwrap();
        assert_eq!(shards.len(), 3);
        assert!(shards.iter().all(|s| s["replayed"] == true), "{spelled}: {shards:?}");
        same(&subset(&p.join("out")), &want, spelled);
    }
}

/// `flyt curate --shards /does/not/exist` (or an `s3://` address) exited 0 with an empty subset; it is an
/// error naming the path.
#[test]
fn a_missing_shard_path_exited_0_with_an_empty_subset() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    for (path, says) in [("does/not/exist", "No such file or directory"), ("s3://bucket/prefix/", "not supported")] {
        let o = flyt(&["curate", "--shards", path, "--out", "out"], p);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{path}: exited 0");
        assert!(err.contains(path) && err.contains(says), "{path}: {err}");
        assert!(!p.join("out/subset.npy").exists(), "{path}: no subset is published");
    }
}

/// Logs written to a file or a pipe carried ANSI colour codes; colour is only for a terminal.
#[test]
fn logs_carried_colour_codes_into_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    pool(&p.join("pool"), 2, 0, 10);
    // Something to warn about: a device under a shard's name is left out of the input.
    std::os::unix::fs::symlink("/dev/zero", p.join("pool/z.tar")).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_flyt"))
        .args(["curate", "--shards", "pool", "--out", "out"])
        .env("FLYT_LOG", "warn")
        .current_dir(p)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("WARN") && err.contains("character device"), "the warning is written: {err}");
    assert!(!err.contains('\u{1b}'), "no escape codes in a pipe: {err}");
}
