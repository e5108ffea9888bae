//! `flyt filter` and `flyt scores` on a DataComp-layout pool written by pyarrow and numpy (float16 `.npz`),
//! with the expected selections computed independently in python.

mod common;

use common::{flyt, ok, py};

use std::collections::BTreeSet;
use std::path::Path;

fn subset(path: &Path) -> BTreeSet<String> {
    flyt::read_subset(path).unwrap().into_iter().map(|u| u.to_string()).collect()
}

#[track_caller]
fn same(got: &BTreeSet<String>, want: &BTreeSet<String>, what: &str) {
    let extra: Vec<&String> = got.difference(want).take(3).collect();
    let missing: Vec<&String> = want.difference(got).take(3).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{what}: got {} want {}; {} extra (e.g. {extra:?}), {} missing (e.g. {missing:?})",
        got.len(),
        want.len(),
        got.difference(want).count(),
        want.difference(got).count()
    );
}

fn expected(dir: &Path, name: &str) -> BTreeSet<String> {
    std::fs::read_to_string(dir.join(name)).unwrap().split_whitespace().map(String::from).collect()
}

/// Two parquet + npz pairs, 6 planted image clusters, a downstream set in clusters 0 and 3, class names, and
/// the expected selections.
const POOL: &str = r#"
import os, numpy as np, pyarrow as pa, pyarrow.parquet as pq
rng = np.random.default_rng(1)
n, d, k = 1200, 32, 6
os.makedirs("pool", exist_ok=True)
centers = rng.normal(size=(k, d)); centers /= np.linalg.norm(centers, axis=1, keepdims=True)
lab = np.arange(n) % k
img = centers[lab] + 0.05 * rng.normal(size=(n, d)); img /= np.linalg.norm(img, axis=1, keepdims=True)
txt = img + rng.uniform(0.2, 2.0, size=(n, 1)) * rng.normal(size=(n, d)); txt /= np.linalg.norm(txt, axis=1, keepdims=True)
img16, txt16 = img.astype(np.float16), txt.astype(np.float16)
names = ["sandal", "ankle boot", "pullover", "dress", "bag", "coat"]
english = ["a photo of a NAME on a white table", "the best sandals for summer walks",
           "cheap red bags and coats for sale", "free shipping on all orders today"]
other = ["une photo d'une robe rouge sur une table blanche", "ein Foto von einem roten Kleid auf dem Tisch"]
caps, en, w, h = [], [], [], []
for i in range(n):
    if i % 7 == 3:
        caps.append(other[i % 2]); en.append(False)
    elif i % 11 == 5:
        caps.append("sandal pic"); en.append(None)  # two words: fails basic whatever its language
    else:
        caps.append(english[i % 4].replace("NAME", names[lab[i]])); en.append(True)
    w.append(int(rng.choice([150, 256, 640, 1024]))); h.append(int(rng.choice([190, 300, 640, 2000])))
uids = [f"{(i * 2654435761 + 17) % 2**127:032x}" for i in range(n)]
for part, sl in [("0000", slice(0, 700)), ("0001", slice(700, n))]:
    pq.write_table(pa.table({"uid": uids[sl], "text": caps[sl], "original_width": np.array(w[sl], np.int64),
                             "original_height": np.array(h[sl], np.int64)}), f"pool/{part}.parquet")
    np.savez(f"pool/{part}.npz", b32_img=img16[sl], b32_txt=txt16[sl])
down = centers[[0, 3]][np.arange(40) % 2] + 0.05 * rng.normal(size=(40, d))
np.save("down.npy", down.astype(np.float32))
open("classnames.txt", "w").write("\n".join(["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]) + "\n")
u32, t32 = img16.astype(np.float32), txt16.astype(np.float32)
cs = (u32 * t32).sum(1) / np.linalg.norm(u32, axis=1) / np.linalg.norm(t32, axis=1)
top = np.argsort(-cs, kind="stable")[: int(0.3 * n)]
open("clip30.txt", "w").write(" ".join(uids[i] for i in top))
mn, mx = np.minimum(w, h), np.maximum(w, h)
basic = [en[i] is True and len(caps[i].split()) > 2 and len(caps[i]) > 5 and mn[i] >= 200 and mx[i] / mn[i] <= 3 for i in range(n)]
open("basic.txt", "w").write(" ".join(uids[i] for i in range(n) if basic[i]))
inside = [lab[i] in (0, 3) and en[i] is True for i in range(n)]
open("image.txt", "w").write(" ".join(uids[i] for i in range(n) if inside[i]))
topset = set(top.tolist())
open("image_clip.txt", "w").write(" ".join(uids[i] for i in range(n) if inside[i] and i in topset))
words = {"sandal", "sandals", "boot", "pullover", "dress", "bag", "bags", "coat", "coats"}
text_based = [en[i] is True and any(t.strip(".,") in words for t in caps[i].lower().split()) for i in range(n)]
open("text.txt", "w").write(" ".join(uids[i] for i in range(n) if text_based[i]))
"#;

#[test]
fn datacomp_baselines_select_what_python_expects() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    py(POOL, d);
    let run = |method: &str, extra: &[&str]| {
        let out = d.join(format!("{method}.npy"));
        let mut args = vec!["filter", "--method", method, "--pool", "pool", "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        ok(flyt(&args, d));
        subset(&out)
    };
    let all = run("no-filter", &[]);
    assert_eq!(all.len(), 1200);
    let clip = run("clip-score", &["--fraction", "0.3", "--scores", "clip_scores.parquet"]);
    assert_eq!(clip.len(), 360, "⌊0.3·1200⌋");
    same(&clip, &expected(d, "clip30.txt"), "clip-score");
    let odd = run("clip-score", &["--fraction", "0.3337"]);
    assert_eq!(odd.len(), 400, "⌊0.3337·1200⌋ = 400");
    same(&run("basic", &[]), &expected(d, "basic.txt"), "basic");
    same(&run("text-based", &["--classnames", "classnames.txt"]), &expected(d, "text.txt"), "text-based");
    let img = run("image-based", &["--downstream", "down.npy", "--clusters", "6", "--seed", "3"]);
    same(&img, &expected(d, "image.txt"), "image-based");
    let both = run("image-based-and-clip-score", &["--downstream", "down.npy", "--clusters", "6", "--fraction", "0.3"]);
    same(&both, &expected(d, "image_clip.txt"), "image-based ∩ clip-score");
    let ns = run("norm-sim-inf", &["--downstream", "down.npy", "--fraction", "0.2"]);
    assert_eq!(ns.len(), 240);
    assert!(ns.is_subset(&expected(d, "image.txt").union(&all).cloned().collect()));
    let ncl = run("neg-clip-loss", &["--fraction", "0.5", "--ncl-batch", "256", "--ncl-repeats", "2"]);
    assert_eq!(ncl.len(), 600);
    // the score table pyarrow reads back
    let cols = py(
        "import pyarrow.parquet as pq; t = pq.read_table('clip_scores.parquet'); print(t.num_rows, t.column_names)",
        d,
    );
    assert!(cols.starts_with("1200 ") && cols.contains("clip_score"), "{cols}");
}

#[test]
fn scores_writes_every_column_and_bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    py(POOL, d);
    let o = flyt(
        &[
            "scores",
            "--pool",
            "pool",
            "--downstream",
            "down.npy",
            "--classnames",
            "classnames.txt",
            "--clusters",
            "6",
            "--ncl-batch",
            "300",
            "--out",
            "all.parquet",
        ],
        d,
    );
    ok(&o);
    let cols = py(
        r#"
import pyarrow.parquet as pq, numpy as np
t = pq.read_table("all.parquet")
c = lambda n: t.column(n).to_numpy()
print(t.num_rows, sorted(n for n in t.column_names if n not in ("uid", "key")))
print(int(c("basic").sum()), float(np.corrcoef(c("clip_score"), c("neg_clip_loss"))[0, 1]) > 0.5)
"#,
        d,
    );
    let mut lines = cols.lines();
    assert_eq!(
        lines.next().unwrap(),
        "1200 ['basic', 'caption_chars', 'caption_words', 'clip_score', 'english', 'image_aspect', 'image_based', \
         'image_based_sim', 'image_min_side', 'neg_clip_loss', 'norm_sim_2', 'norm_sim_inf', 'text_based']"
    );
    let second = lines.next().unwrap();
    assert_eq!(second, format!("{} True", expected(d, "basic.txt").len()));
    // usage errors name what is wrong
    let e = flyt(&["filter", "--method", "basic", "--fraction", "0.3", "--pool", "pool", "--out", "x.npy"], d);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("yes/no filter"));
    let e = flyt(&["filter", "--method", "image-based", "--pool", "pool", "--out", "x.npy"], d);
    assert!(String::from_utf8_lossy(&e.stderr).contains("--downstream"));
    std::fs::write(d.join("pool/0001.npz"), b"not a zip").unwrap();
    let e = flyt(&["filter", "--method", "clip-score", "--pool", "pool", "--out", "x.npy"], d);
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(err.contains("0001.npz") && err.contains("not a zip"), "{err}");
    assert!(!d.join("x.npy").exists());
}
