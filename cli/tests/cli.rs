//! The `flyt` binary end to end: inspect's JSON, exit codes and messages, reshard, synth, the command list.

mod common;

use common::flyt;

use std::process::Output;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn inspect_json_reports_per_shard_and_total_counts() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let o = flyt(
        &[
            "synth",
            "--out",
            "pool",
            "--shards",
            "2",
            "--samples-per-shard",
            "50",
            "--image",
            "png",
            "--side",
            "8",
            "--dirt",
            "0.2",
            "--seed",
            "5",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = flyt(&["inspect", "--json", pool.to_str().unwrap()], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("one JSON object");
    let shards = v["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    let mut sum = [0u64; 5];
    for s in shards {
        assert!(s["path"].as_str().unwrap().ends_with(".tar"));
        let n: Vec<u64> =
            ["members", "samples", "accepted", "rejected"].iter().map(|k| s[k].as_u64().unwrap()).collect();
        assert_eq!(n[1], n[2] + n[3]);
        let by_reason: u64 = s["rejected_by_reason"].as_object().unwrap().values().map(|x| x.as_u64().unwrap()).sum();
        assert_eq!(by_reason, n[3]);
        for (i, x) in n.iter().enumerate() {
            sum[i] += x;
        }
        sum[4] += by_reason;
    }
    let t = &v["total"];
    assert_eq!(t["members"].as_u64().unwrap(), sum[0]);
    assert_eq!(t["accepted"].as_u64().unwrap(), sum[2]);
    assert_eq!(t["rejected"].as_u64().unwrap(), sum[3]);
    assert!(t["rejected"].as_u64().unwrap() > 0, "dirt 0.2 produces rejects");
    assert!(t.get("path").is_none());
    // The same read in human form names every reason.
    let o = flyt(&["inspect", "--rejects", pool.to_str().unwrap()], dir.path());
    assert!(o.status.success());
    for reason in t["rejected_by_reason"].as_object().unwrap().keys() {
        assert!(stdout(&o).contains(reason.as_str()));
    }
}

#[test]
fn infrastructure_errors_exit_non_zero_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let o = flyt(&["inspect", "/no/such/shard.tar"], dir.path());
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.starts_with("flyt: error: /no/such/shard.tar"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // Bad arguments: usage error, code 2.
    let o = flyt(&["inspect"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    let o = flyt(&["reshard", "--subset", "x.npy", "--out", "o", "--shard-size", "many", "a.tar"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    // A damaged shard is data, not an error: exit 0 with the reject in the stats.
    std::fs::write(dir.path().join("broken.tar"), b"this is not a tar file at all").unwrap();
    let o = flyt(&["inspect", "--json", "broken.tar"], dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["total"]["rejected"], 1);
    // A subset file that is not one: error naming the file.
    std::fs::write(dir.path().join("bad.npy"), b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'}").unwrap();
    let o = flyt(&["reshard", "--subset", "bad.npy", "--out", "o", "broken.tar"], dir.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("bad.npy"), "{}", stderr(&o));
}

#[test]
fn reshard_writes_copies_reports_missing_and_guards_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let shards =
        flyt::synth::SynthPool { shards: 2, samples_per_shard: 10, ..Default::default() }.write(&pool).unwrap();
    let mut uids = Vec::new();
    for s in &shards {
        for r in flyt::ShardReader::open(s, flyt::ReaderConfig::default()).unwrap() {
            if let flyt::Record::Sample(s) = r.unwrap() {
                uids.push(s.uid);
            }
        }
    }
    let mut subset = vec![uids[0], uids[0], uids[0], uids[13]];
    subset.push(flyt::Uid::from_u128(99));
    flyt::write_subset(dir.path().join("subset.npy"), &subset).unwrap();
    let args = ["reshard", "--subset", "subset.npy", "--out", "out", "--shard-size", "3", "--json", "pool"];
    let o = flyt(&args, dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["written_samples"], 4);
    assert_eq!(v["output_shards"], 2);
    assert_eq!(v["not_found"][0], flyt::Uid::from_u128(99).to_string());
    assert!(dir.path().join("out/00000000.tar").exists() && dir.path().join("out/00000001.tar").exists());
    let o = flyt(&args, dir.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--overwrite"));
    let mut with_overwrite = args.to_vec();
    with_overwrite.insert(1, "--overwrite");
    assert!(flyt(&with_overwrite, dir.path()).status.success());
}

#[test]
fn help_lists_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let o = flyt(&["--help"], dir.path());
    assert!(o.status.success());
    for c in ["inspect", "reshard", "synth", "demo", "eval", "report", "doctor"] {
        assert!(stdout(&o).contains(c));
    }
}

#[test]
fn embed_bench_runs_on_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let o = flyt(
        &["embed-bench", "--arch", "b32", "--device", "cpu", "--batch", "2", "--iters", "1", "--json"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v["img_per_s"].as_f64().unwrap() > 0.0);
}
