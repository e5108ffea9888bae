//! `flyt sample` end to end, with score files written by pyarrow / numpy and the subset read back by numpy.

mod common;

use common::{flyt, py};

#[test]
fn sample_from_parquet_writes_a_subset_numpy_reads() {
    let dir = tempfile::tempdir().unwrap();
    py(
        r#"
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
rng = np.random.default_rng(0)
n = 5000
uids = [f"{int(x) * 7 + 1:032x}" for x in rng.choice(2**62, n, replace=False)]
pq.write_table(pa.table({"uid": uids, "flyt": rng.normal(0, 2.5, n).astype(np.float32)}), "scores.parquet")
"#,
        dir.path(),
    );
    for method in ["scs", "scs-rounds", "hcs", "topk"] {
        let o = flyt(
            &[
                "sample",
                "--scores",
                "scores.parquet",
                "--score-column",
                "flyt",
                "--method",
                method,
                "--round",
                "500",
                "--seed",
                "3",
                "--out",
                "subset.npy",
                "--counts",
                "counts.parquet",
                "--json",
            ],
            dir.path(),
        );
        assert!(o.status.success(), "{method}: {}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let expect_drawn = if method == "topk" { 1000 } else { 5000 };
        assert_eq!(v["drawn"], expect_drawn, "{method}");
        assert_eq!(v["pool"], 5000);
        let check = py(
            r#"
import numpy as np, pyarrow.parquet as pq, collections
a = np.load("subset.npy")
assert a.dtype == np.dtype([("f0", "<u8"), ("f1", "<u8")])
assert (np.sort(a, order=["f0", "f1"]) == a).all()
c = collections.Counter(f"{int(r['f0']):016x}{int(r['f1']):016x}" for r in a)
t = pq.read_table("counts.parquet").to_pydict()
assert dict(zip(t["uid"], t["count"])) == dict(c)
print(len(a), len(c), max(c.values()))
"#,
            dir.path(),
        );
        let parts: Vec<u64> = check.split_whitespace().map(|x| x.parse().unwrap()).collect();
        assert_eq!(parts[0], expect_drawn);
        assert_eq!(parts[1], v["unique"].as_u64().unwrap());
        assert_eq!(parts[2], v["max_count"].as_u64().unwrap());
        if method == "hcs" {
            assert!(parts[2] <= 15);
        }
    }
    // Same seed, same subset; --target-ratio.
    let run = |seed: &str| {
        assert!(
            flyt(
                &[
                    "sample",
                    "--scores",
                    "scores.parquet",
                    "--score-column",
                    "flyt",
                    "--seed",
                    seed,
                    "--target-ratio",
                    "0.5",
                    "--out",
                    "s.npy"
                ],
                dir.path()
            )
            .status
            .success()
        );
        std::fs::read(dir.path().join("s.npy")).unwrap()
    };
    let a = run("1");
    assert_eq!(a, run("1"));
    assert_ne!(a, run("2"));
    assert_eq!(flyt::read_subset(dir.path().join("s.npy")).unwrap().len(), 2500);
}

#[test]
fn sample_from_npy_pair_and_clear_errors_naming_rows() {
    let dir = tempfile::tempdir().unwrap();
    py(
        r#"
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
u = np.array([(1, 2), (3, 4), (5, 6)], dtype=[("f0", "<u8"), ("f1", "<u8")])
np.save("uids.npy", u)
np.save("values.npy", np.array([0.5, 1.0, -2.0]))
np.save("short.npy", np.array([0.5, 1.0]))
good = "0" * 31 + "1"
pq.write_table(pa.table({"uid": [good, "0" * 31 + "2", "xyz"], "score": [1.0, 2.0, 3.0]}), "baduid.parquet")
pq.write_table(pa.table({"uid": [good, "0" * 31 + "2"], "score": [1.0, float("nan")]}), "nan.parquet")
pq.write_table(pa.table({"uid": ["0" * 31 + "2", good, good], "score": [1.0, 2.0, 3.0]}), "dup.parquet")
"#,
        dir.path(),
    );
    let o = flyt(
        &["sample", "--scores", "uids.npy", "--values", "values.npy", "--seed", "0", "--target", "6", "--out", "o.npy"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(flyt::read_subset(dir.path().join("o.npy")).unwrap().len(), 6);
    for (args, needle) in [
        (vec!["--scores", "uids.npy", "--values", "short.npy"], "2 scores for 3 uids"),
        (vec!["--scores", "uids.npy"], "--values"),
        (vec!["--scores", "baduid.parquet"], "row 2"),
        (vec!["--scores", "nan.parquet"], "row 1"),
        (vec!["--scores", "dup.parquet"], "rows 1 and 2"),
        (vec!["--scores", "baduid.parquet", "--score-column", "flyt"], "no such column"),
    ] {
        let mut full = vec!["sample"];
        full.extend(args.iter());
        full.extend(["--seed", "0", "--out", "o2.npy"]);
        let o = flyt(&full, dir.path());
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
