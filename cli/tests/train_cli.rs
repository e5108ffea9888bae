//! `flyt train flyt|mflyt` and `flyt score` end to end on a planted pool written by numpy/pyarrow.

mod common;

use common::{flyt, ok, py};

use std::path::Path;

/// A pool of duplicated downstream pairs, clean but weaker pairs and caption-shuffled pairs over a synthetic
/// "pretrained" embedding space (class text directions near image directions), a downstream task, and an
/// M-FLYT input table [good, noise, −good].
const PLANTED: &str = r#"
import os, numpy as np, pyarrow as pa, pyarrow.parquet as pq
rng = np.random.default_rng(4)
d, C = 16, 4
norm = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
a = norm(rng.normal(size=(C, d))); b = norm(a + 0.15 * rng.normal(size=(C, d)))
M = 160
lab = np.arange(M) % C
dimg = norm(a[lab] + 0.15 * rng.normal(size=(M, d)))
prompts = norm(b[:, None, :] + 0.1 * rng.normal(size=(C, 3, d)))
np.savez("task.npz", image=dimg.astype(np.float32), labels=lab.astype(np.int64), prompts=prompts.astype(np.float32))
caps = norm(b[lab] + 0.1 * rng.normal(size=(M, d)))
np.savez("task_cap.npz", image=dimg.astype(np.float32), labels=lab.astype(np.int64), prompts=prompts.astype(np.float32),
         captions=caps.astype(np.float32))
np.savez("task_badcap.npz", image=dimg.astype(np.float32), labels=lab.astype(np.int64), prompts=prompts.astype(np.float32),
         captions=caps[:10].astype(np.float32))
nd, nc, ns = 40, 100, 100
cl = rng.integers(0, C, nc); sl = rng.integers(0, C, ns); other = (sl + rng.integers(1, C, ns)) % C
img = np.concatenate([dimg[:nd], norm(0.6 * a[cl] + 0.8 * norm(rng.normal(size=(nc, d)))), norm(a[sl] + 0.15 * rng.normal(size=(ns, d)))])
txt = np.concatenate([prompts[lab[:nd], 0], norm(0.6 * b[cl] + 0.8 * norm(rng.normal(size=(nc, d)))), norm(b[other] + 0.15 * rng.normal(size=(ns, d)))])
kind = np.array([0] * nd + [1] * nc + [2] * ns)
n = len(kind)
uids = [f"{i * 7919 + 3:032x}" for i in range(n)]
os.makedirs("pool", exist_ok=True)
for part, sl_ in [("a", slice(0, 120)), ("b", slice(120, n))]:
    pq.write_table(pa.table({"uid": uids[sl_], "text": ["x"] * len(uids[sl_])}), f"pool/{part}.parquet")
    np.savez(f"pool/{part}.npz", emb_img=img[sl_].astype(np.float16), emb_txt=txt[sl_].astype(np.float16))
good = (2.0 - kind) + 0.3 * rng.normal(size=n)
noise = rng.normal(size=n)
pq.write_table(pa.table({"uid": uids, "good": good, "noise": noise, "neg": -good}), "inputs.parquet")
pq.write_table(pa.table({"uid": uids[:-1], "good": good[:-1], "noise": noise[:-1], "neg": -good[:-1]}), "short.parquet")
np.save("kind.npy", kind)
"#;

const MEANS: &str = r#"
import sys, numpy as np, pyarrow.parquet as pq
kind = np.load("kind.npy")
s = np.concatenate([pq.read_table(f"{sys.argv[1]}/{p}_scores.parquet").column("score").to_numpy() for p in "ab"])
print(" ".join(repr(float(s[kind == k].mean())) for k in range(3)))
"#;

const TRAIN: [&str; 14] = [
    "--steps",
    "120",
    "--batch",
    "64",
    "--down-batch",
    "64",
    "--ref-lr",
    "0.02",
    "--score-lr",
    "0.01",
    "--warmup",
    "10",
    "--device",
    "cpu",
];

#[test]
fn train_flyt_resume_and_score() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    py(PLANTED, d);
    let base = ["train", "flyt", "--pool", "pool", "--downstream", "task.npz"];
    // straight through
    let mut args: Vec<&str> = base.to_vec();
    args.extend(TRAIN);
    args.extend(["--out", "a", "--checkpoint-every", "50"]);
    let out = ok(flyt(&args, d));
    assert!(out.contains("trained 120 steps"), "{out}");
    let csv = std::fs::read_to_string(d.join("a/losses.csv")).unwrap();
    assert_eq!(csv.lines().count(), 121, "a header and one row per step");
    assert!(csv.starts_with("step,up_loss,down_loss,"));
    // a PNG when a TrueType font is there to draw the text with (Debian's fonts-dejavu-core), else an SVG
    if Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists() {
        let png = std::fs::read(d.join("a/loss.png")).expect("the loss curve");
        assert!(png.starts_with(b"\x89PNG") && png.len() > 5000, "{} bytes", png.len());
    } else {
        let svg = std::fs::read_to_string(d.join("a/loss.svg")).expect("the loss curve");
        assert!(svg.contains("<svg") && svg.contains("downstream"));
    }
    // the same run stopped at 70, then resumed
    let mut args: Vec<&str> = base.to_vec();
    args.extend(TRAIN);
    args.extend(["--out", "b", "--checkpoint-every", "50", "--stop-after", "70"]);
    ok(flyt(&args, d));
    let side = std::fs::read_to_string(d.join("b/checkpoint.json")).unwrap();
    assert!(side.contains("\"step\": 70"), "{side}");
    assert!(side.contains("\"inputs\"") && side.contains("task.npz") && side.contains("\"bytes\""), "{side}");
    let refused = flyt(&args, d);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("--resume"));
    args.push("--resume");
    ok(flyt(&args, d));
    assert_eq!(std::fs::read_to_string(d.join("b/losses.csv")).unwrap(), csv, "resumed losses differ");
    for run in ["a", "b"] {
        ok(flyt(
            &[
                "score",
                "--model",
                &format!("{run}/checkpoint.safetensors"),
                "--pool",
                "pool",
                "--out",
                &format!("{run}_scores"),
                "--device",
                "cpu",
            ],
            d,
        ));
    }
    let (ma, mb) =
        (py(&MEANS.replace("sys.argv[1]", "'a_scores'"), d), py(&MEANS.replace("sys.argv[1]", "'b_scores'"), d));
    assert_eq!(ma, mb, "scores of the resumed run differ");
    let m: Vec<f64> = ma.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert!(m[0] > m[1] && m[1] > m[2], "mean scores duplicates/clean/shuffled: {m:?}");
}

#[test]
fn train_mflyt_and_missing_scores() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    py(PLANTED, d);
    let mut args = vec!["train", "mflyt", "--pool", "pool", "--downstream", "task.npz", "--scores", "inputs.parquet"];
    args.extend(["--columns", "good,noise,neg", "--out", "m"]);
    args.extend(TRAIN);
    ok(flyt(&args, d));
    ok(flyt(
        &[
            "score",
            "--model",
            "m/checkpoint.safetensors",
            "--pool",
            "pool",
            "--scores",
            "inputs.parquet",
            "--out",
            "ms",
            "--device",
            "cpu",
        ],
        d,
    ));
    let m: Vec<f64> =
        py(&MEANS.replace("sys.argv[1]", "'ms'"), d).split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert!(m[0] > m[1] && m[1] > m[2], "M-FLYT mean scores by kind: {m:?}");
    // a uid without a score is an error, not a zero
    let mut bad = vec!["train", "mflyt", "--pool", "pool", "--downstream", "task.npz", "--scores", "short.parquet"];
    bad.extend(["--columns", "good,noise,neg", "--out", "m2"]);
    bad.extend(TRAIN);
    let o = flyt(&bad, d);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("have no \"good\" score") && err.contains("not zero-filled"), "{err}");
    let o = flyt(
        &[
            "train",
            "mflyt",
            "--pool",
            "pool",
            "--downstream",
            "task.npz",
            "--scores",
            "inputs.parquet",
            "--columns",
            "nope",
            "--out",
            "m3",
        ],
        d,
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("\"nope\" is in none"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn train_with_the_downstream_clip_loss() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    py(PLANTED, d);
    let mut args = vec!["train", "flyt", "--pool", "pool", "--downstream", "task_cap.npz", "--downstream", "task.npz"];
    args.extend(["--out", "c"]);
    args.extend(TRAIN);
    let out = ok(flyt(&args, d));
    assert!(out.contains("trained 120 steps"), "{out}");
    let mut bad = vec!["train", "flyt", "--pool", "pool", "--downstream", "task_badcap.npz", "--out", "c2"];
    bad.extend(TRAIN);
    let o = flyt(&bad, d);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("captions must be M × d"), "{err}");
}
