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
# a task the pool's embedding space cannot do: its images are unrelated to its class prompts
r2 = np.random.default_rng(9)
np.savez("task_blind.npz", image=norm(r2.normal(size=(M, d))).astype(np.float32), labels=lab.astype(np.int64),
         prompts=prompts.astype(np.float32))
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
fn a_downstream_task_the_reference_cannot_do_is_named_in_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    py(PLANTED, d);
    let run = |task: &str, out: &str| {
        let mut args = vec!["train", "flyt", "--pool", "pool", "--downstream", task, "--out", out];
        args.extend(TRAIN);
        args[9] = "20"; // --steps 20: the check runs before the first step
        let o = flyt(&args, d);
        ok(&o);
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let seen = |out: &str| -> Vec<f64> {
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join(out).join("checkpoint.json")).unwrap()).unwrap();
        meta["meta"]["downstream_zero_shot"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    let out = run("task.npz", "a");
    assert!(!out.contains("warning"), "{out}");
    let z = seen("a");
    assert!(z.len() == 1 && z[0] > 0.9, "the planted task is easy for the frozen embeddings: {z:?}");
    let out = run("task_blind.npz", "b");
    assert!(out.contains("warning: downstream task task_blind.npz") && out.contains("(chance 25.0 %)"), "{out}");
    let z = seen("b");
    assert!(z.len() == 1 && z[0] < 0.375, "{z:?}");
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

/// Initial weights under the official code's names: a head whose output layer is zero with bias 0.5 (every
/// example scores 0.5), projections from numpy, a reference logit scale of 3 and ρ = 1.5.
const INIT: &str = r#"
import numpy as np
from safetensors.numpy import save_file
rng = np.random.default_rng(9)
d = 16
t = {f"glu_model.layers.0.{w}.weight": rng.uniform(-0.1, 0.1, (2 * d, 2 * d)).astype(np.float32) for w in ["w1", "w3"]}
t.update({f"glu_model.layers.0.{w}.bias": rng.uniform(-0.1, 0.1, 2 * d).astype(np.float32) for w in ["w1", "w3"]})
t["glu_model.layers.0.w2.weight"] = np.zeros((1, 2 * d), np.float32)
t["glu_model.layers.0.w2.bias"] = np.array([0.5], np.float32)
t["w_img"] = (np.eye(d) + 0.05 * rng.normal(size=(d, d))).astype(np.float32)
t["w_txt"] = (np.eye(d) + 0.05 * rng.normal(size=(d, d))).astype(np.float32)
t["logit_scale"] = np.array(3.0, np.float32)
t["downstream_logit_scale"] = np.array(1.5, np.float32)
save_file(t, "init.safetensors")
bad = dict(t); bad["glu_model.layers.0.w9.weight"] = t["glu_model.layers.0.w2.weight"]
save_file(bad, "bad_init.safetensors")
del t["downstream_logit_scale"]
save_file(t, "init_no_rho.safetensors")
"#;

/// Reads a trace step with the safetensors package, as another implementation would, and prints what the test
/// checks: the scores' spread, ∂J/∂s against w ⊙ (G − ⟨w, G⟩), the counter, ρ, and θ's logit scale.
const READ_TRACE: &str = r#"
import sys, numpy as np
from safetensors.numpy import load_file
t = load_file(sys.argv[1])
w, G, ds = t["weights"], t["G"], t["dJ_ds"]
print(float(t["scores"].min()), float(t["scores"].max()), bool(np.allclose(ds, w * (G - (w * G).sum()), atol=1e-9)),
      int(t["t"]), float(t["rho"]), float(t["theta.logit_scale"]), float(np.abs(t["theta.w_img"] - t["theta_next.w_img"]).max()),
      t["dJ_ds"].dtype, len(t["batch.upstream"]), len(t["batch.task0.templates"]))
"#;

fn trace_line(d: &Path, file: &str) -> Vec<String> {
    py_args_in(READ_TRACE, d, file).split_whitespace().map(String::from).collect()
}

fn py_args_in(script: &str, cwd: &Path, arg: &str) -> String {
    let o =
        std::process::Command::new(common::python()).arg("-c").arg(script).arg(arg).current_dir(cwd).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn train_from_official_names_with_traced_and_replayed_steps() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    py(PLANTED, d);
    py(INIT, d);
    let run = |out: &str, init: &str, extra: &[&str]| {
        let mut args = vec!["train", "flyt", "--pool", "pool", "--downstream", "task.npz", "--out", out];
        args.extend(TRAIN.iter().skip(2));
        args.extend(["--steps", "3", "--init", init, "--trace-steps", "0,1,2"]);
        args.extend(extra);
        flyt(&args, d)
    };
    ok(run("a", "init.safetensors", &["--trace", "ta", "--dtype", "f64"]));
    // the head as initialised: every score 0.5; θ′ one small AdamW step from the given logit scale 3
    let t0 = trace_line(d, "ta/step000000.safetensors");
    assert_eq!((t0[0].as_str(), t0[1].as_str(), t0[2].as_str()), ("0.5", "0.5", "True"), "{t0:?}");
    assert_eq!((t0[3].as_str(), t0[7].as_str(), t0[8].as_str(), t0[9].as_str()), ("1", "float64", "64", "4"));
    let rho: f64 = t0[4].parse().unwrap();
    let ls: f64 = t0[5].parse().unwrap();
    assert!((rho - 1.5).abs() < 5e-3 && rho != 1.5, "ρ starts at the init's 1.5 and is learned: {rho}");
    assert!((ls - 3.0).abs() < 5e-3, "the reference's logit scale starts at the init's 3: {ls}");
    assert_eq!(t0[6], "0.0", "θ after the step is θ′");
    // the same batches replayed under another seed: the same trace, byte for byte
    ok(run("b", "init.safetensors", &["--trace", "tb", "--dtype", "f64", "--batches", "ta", "--seed", "77"]));
    for s in 0..3 {
        let f = format!("step{s:06}.safetensors");
        let (a, b) = (std::fs::read(d.join("ta").join(&f)).unwrap(), std::fs::read(d.join("tb").join(&f)).unwrap());
        assert!(a == b, "step {s}: the replayed trace differs");
    }
    // while the seed alone draws other batches
    ok(run("c", "init.safetensors", &["--trace", "tc", "--dtype", "f64", "--seed", "77"]));
    assert_ne!(
        std::fs::read(d.join("ta/step000000.safetensors")).unwrap(),
        std::fs::read(d.join("tc/step000000.safetensors")).unwrap()
    );
    // the official multitask loop: one counter, advanced by the task and by ρ
    ok(run("e", "init.safetensors", &["--trace", "te", "--multitask", "official"]));
    assert_eq!(trace_line(d, "te/step000000.safetensors")[3], "2");
    // frozen, without a downstream logit scale: θ stays at the init, ρ at 0
    let o = run("f", "init.safetensors", &["--freeze-reference", "--downstream-logit-scale", "none"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("downstream_logit_scale") && err.contains("none"), "{err}");
    ok(run(
        "f",
        "init_no_rho.safetensors",
        &["--trace", "tf", "--freeze-reference", "--downstream-logit-scale", "none"],
    ));
    let tf = trace_line(d, "tf/step000002.safetensors");
    assert_eq!((tf[4].as_str(), tf[5].as_str()), ("0.0", "3.0"), "{tf:?}");
    assert_ne!(tf[6], "0.0", "θ′ is computed, not committed");
    // the settings are recorded with the checkpoint
    let side = std::fs::read_to_string(d.join("f/checkpoint.json")).unwrap();
    assert!(side.contains("\"update_reference\": false") && side.contains("init_no_rho.safetensors"), "{side}");
    // a name the models do not have is refused, naming it
    let o = flyt(
        &[
            "train",
            "flyt",
            "--pool",
            "pool",
            "--downstream",
            "task.npz",
            "--out",
            "g",
            "--init",
            "bad_init.safetensors",
            "--device",
            "cpu",
        ],
        d,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("bad_init.safetensors") && err.contains("w9"), "{err}");
    // a plan that does not fit the pool is refused before any step
    let o = flyt(
        &[
            "train",
            "flyt",
            "--pool",
            "pool",
            "--downstream",
            "task.npz",
            "--out",
            "h",
            "--batches",
            "init.safetensors",
            "--device",
            "cpu",
        ],
        d,
    );
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("init.safetensors"));
}

#[test]
fn train_mflyt_with_zscored_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    py(PLANTED, d);
    let mut args = vec!["train", "mflyt", "--pool", "pool", "--downstream", "task.npz", "--scores", "inputs.parquet"];
    args.extend(["--columns", "good,noise,neg", "--out", "z", "--mixer-inputs", "zscore"]);
    args.extend(TRAIN);
    ok(flyt(&args, d));
    let side = std::fs::read_to_string(d.join("z/checkpoint.json")).unwrap();
    assert!(side.contains("\"mixer_inputs\": \"zscore\""), "{side}");
    ok(flyt(
        &[
            "score",
            "--model",
            "z/checkpoint.safetensors",
            "--pool",
            "pool",
            "--scores",
            "inputs.parquet",
            "--out",
            "zs",
            "--device",
            "cpu",
        ],
        d,
    ));
    let m: Vec<f64> =
        py(&MEANS.replace("sys.argv[1]", "'zs'"), d).split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert!(m[0] > m[1] && m[1] > m[2], "M-FLYT (z-scored) mean scores by kind: {m:?}");
}

#[test]
fn embedding_mode_reads_b32_first_and_starts_at_the_frozen_clips_logit_scale() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    py(PLANTED, d);
    // the same pool with DataComp's two pairs: b32 (16-d, the task's width) and l14 (24-d); a frozen CLIP folder
    // whose logit scale is 3.9
    py(
        r#"
import os, numpy as np, pyarrow.parquet as pq
from safetensors.numpy import save_file
os.makedirs("pool2", exist_ok=True)
for part in "ab":
    z = np.load(f"pool/{part}.npz")
    n = len(z["emb_img"])
    np.savez(f"pool2/{part}.npz", b32_img=z["emb_img"], b32_txt=z["emb_txt"],
             l14_img=np.ones((n, 24), np.float16), l14_txt=np.ones((n, 24), np.float16))
    pq.write_table(pq.read_table(f"pool/{part}.parquet"), f"pool2/{part}.parquet")
os.makedirs("clip", exist_ok=True)
save_file({"logit_scale": np.array(3.9, np.float32), "text_projection.weight": np.zeros((4, 4), np.float32)},
          "clip/model.safetensors")
"#,
        d,
    );
    let train = |out: &str, extra: &[&str]| {
        let mut args = vec!["train", "flyt", "--pool", "pool2", "--downstream", "task.npz", "--out", out];
        args.extend(TRAIN.iter().skip(2));
        args.extend(["--steps", "2"]);
        args.extend(extra);
        let o = ok(flyt(&args, d));
        let side: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join(out).join("checkpoint.json")).unwrap()).unwrap();
        (side["meta"].clone(), o)
    };
    let (meta, _) = train("a", &[]);
    assert_eq!((meta["embeddings"].as_str(), meta["dim"].as_u64()), (Some("b32"), Some(16)), "{meta}");
    let near = |m: &serde_json::Value, x: f32| (m["ref_logit_scale"].as_f64().unwrap() - x as f64).abs() < 1e-9;
    assert!(near(&meta, 100f32.ln()), "OpenAI CLIP's ln 100 without a named CLIP: {meta}");
    let (meta, _) = train("b", &["--clip", "clip"]);
    assert!(near(&meta, 3.9), "the frozen CLIP's own: {meta}");
    let (meta, _) = train("c", &["--clip", "clip", "--ref-logit-scale", "3.3"]);
    assert!(near(&meta, 3.3), "{meta}");
    // --embeddings still chooses: l14 is 24-d, which the 16-d task cannot match
    let mut args = vec!["train", "flyt", "--pool", "pool2", "--downstream", "task.npz", "--out", "e"];
    args.extend(["--embeddings", "l14", "--device", "cpu", "--steps", "1"]);
    let o = flyt(&args, d);
    assert!(!o.status.success(), "a 24-d pool against a 16-d task");
}

/// Embedding mode held the whole pool in memory (262 GB at DataComp medium). `--stream-pool` leaves it on disk
/// and reads each step's rows in place: the same rows in the same order, so the loss curve and the trained
/// head are the in-memory run's, for FLYT and M-FLYT. A compressed `.npz`, which cannot be read in place, is
/// an error naming the file and the array.
#[test]
fn streaming_the_pool_gives_the_in_memory_loss_curve() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    py(PLANTED, d);
    let mut steps = TRAIN.to_vec();
    steps[1] = "40";
    for (kind, extra) in
        [("flyt", vec![]), ("mflyt", vec!["--scores", "inputs.parquet", "--columns", "good,noise,neg"])]
    {
        let mut curves = Vec::new();
        for stream in [false, true] {
            let out = format!("{kind}_{stream}");
            let mut args = vec!["train", kind, "--pool", "pool", "--downstream", "task.npz", "--out", &out];
            args.extend(&extra);
            args.extend(&steps);
            if stream {
                args.push("--stream-pool");
            }
            ok(flyt(&args, d));
            curves.push((
                std::fs::read_to_string(d.join(&out).join("losses.csv")).unwrap(),
                std::fs::read(d.join(&out).join("checkpoint.safetensors")).unwrap(),
            ));
        }
        assert_eq!(curves[0].0.lines().count(), 41);
        assert_eq!(curves[0].0, curves[1].0, "{kind}: the streamed loss curve differs");
        assert_eq!(curves[0].1, curves[1].1, "{kind}: the streamed head differs");
    }
    py(
        r#"
import numpy as np, os
os.makedirs("zpool", exist_ok=True)
import shutil; shutil.copy("pool/a.parquet", "zpool/a.parquet")
z = np.load("pool/a.npz"); np.savez_compressed("zpool/a.npz", emb_img=z["emb_img"], emb_txt=z["emb_txt"])
"#,
        d,
    );
    let mut args = vec!["train", "flyt", "--pool", "zpool", "--downstream", "task.npz", "--out", "z", "--stream-pool"];
    args.extend(&steps);
    let o = flyt(&args, d);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("zpool/a.npz") && err.contains("emb_img") && err.contains("stored"),
        "{err}"
    );
}
