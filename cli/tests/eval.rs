//! The real-data evaluation end to end through the `flyt` binary: the reduced CI configuration
//! (`tests/data/eval-ci.toml`: the mini-DataComp from Fashion-MNIST, handwritten digits, Openclipart and web
//! alt-text at a small scale; no filter, CLIP score top-k, M-FLYT + SCS and the ceiling over three seeds, judged on
//! both domains), the margins of M-FLYT + SCS and of the ceiling over no filter, the ingest counts'
//! reconciliation, the subsets' composition, the table's per-task and paired columns, and the report loaded in
//! headless Chromium.

mod common;

use std::path::{Path, PathBuf};

use common::{flyt, ok, py, python};

/// Margins the reduced evaluation must show, each the mean over seeds 0, 1, 2 of zero-shot top-1 (the mean of
/// the two tasks, percentage points) over no filter. Measured on the 2-core machine (README, the evaluation's CI
/// paragraph) and set under the measured values: CLIP score top-k +8.92 (per seed +5.40, +10.02, +11.35), the
/// ceiling +16.07, M-FLYT + SCS +3.60 (+2.63, +2.74, +5.43). At this small scale M-FLYT + SCS still gains over no
/// filter; in the full evaluation it does not (README), so its bound guards the pipeline, not the claim.
const CLIP_TOP_PP: f64 = 5.0;
/// The ceiling (the clean samples only) over no filter: the room the benchmark leaves.
const ROOM_PP: f64 = 10.0;
/// M-FLYT + SCS over no filter.
const MARGIN_PP: f64 = 1.5;
/// M-FLYT + SCS's wrong-class share must stay under this multiple of the pool's (measured 0.141 against 0.151).
const WRONG_CLASS_RATIO: f64 = 0.97;
/// M-FLYT + SCS's clean share must exceed the pool's by this much (measured 0.543 against 0.528).
const CLEAN_GAIN: f64 = 0.005;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// The CI configuration with its data paths made absolute (the repository's `.venv/data`, `../shared/data`).
fn ci_config(dir: &Path) -> PathBuf {
    let root = repo();
    let text = std::fs::read_to_string(root.join("cli/tests/data/eval-ci.toml")).unwrap();
    let text = text
        .replace("\".venv/", &format!("\"{}/.venv/", root.display()))
        .replace("\"../shared/", &format!("\"{}/../shared/", root.display()));
    for needed in [
        ".venv/data/fashion-mnist/train-images-idx3-ubyte.gz",
        ".venv/data/openclipart/.complete",
        ".venv/data/digits/mnist_5k.csv.gz",
    ] {
        assert!(root.join(needed).exists(), "{needed} is missing: run ./x setup (./x test does)");
    }
    let path = dir.join("eval-ci.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn results(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap()
}

fn accuracies(r: &serde_json::Value, method: &str) -> Vec<f64> {
    r["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["method"] == method)
        .map(|x| x["accuracy"].as_f64().unwrap())
        .collect()
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Mean and standard error (sample standard deviation / sqrt n), as the report computes them.
fn mean_se(xs: &[f64]) -> (f64, f64) {
    let m = mean(xs);
    let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64;
    (m, var.sqrt() / (xs.len() as f64).sqrt())
}

fn run_of<'a>(r: &'a serde_json::Value, method: &str, seed: u64) -> &'a serde_json::Value {
    r["runs"].as_array().unwrap().iter().find(|x| x["method"] == method && x["seed"] == seed).unwrap()
}

#[test]
fn reduced_evaluation_keeps_its_margins_over_no_filter_and_the_report_renders() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let cfg = ci_config(p);
    let out = ok(flyt(&["eval", "--config", cfg.to_str().unwrap(), "--out", "ev", "--workers", "2"], p));
    for s in ["M-FLYT + SCS", "no filter", "CLIP score, top", "ceiling", "fashion-mnist", "digits", "report: "] {
        assert!(out.contains(s), "{s}: {out}");
    }
    let r = results(&p.join("ev"));

    // every run is judged on both tasks, and its headline is their mean
    let tasks: Vec<&str> =
        r["reference_tasks"].as_array().unwrap().iter().map(|t| t["task"].as_str().unwrap()).collect();
    assert_eq!(tasks, ["fashion-mnist", "digits"]);
    for run in r["runs"].as_array().unwrap() {
        let t = run["tasks"].as_array().unwrap();
        assert_eq!(t.len(), 2, "{run}");
        let m = (t[0]["accuracy"].as_f64().unwrap() + t[1]["accuracy"].as_f64().unwrap()) / 2.0;
        assert!((run["accuracy"].as_f64().unwrap() - m).abs() < 1e-12, "{run}");
        assert_eq!(t[1]["per_class"].as_array().unwrap().len(), 10, "ten digits");
    }

    // the comparison
    let none = accuracies(&r, "no-filter");
    let mflyt = accuracies(&r, "mflyt-scs");
    let ceiling = accuracies(&r, "ceiling");
    assert_eq!(
        (none.len(), mflyt.len(), ceiling.len(), accuracies(&r, "clip-top").len()),
        (3, 3, 3, 3),
        "three seeds each"
    );
    let clip = accuracies(&r, "clip-top");
    let gain = 100.0 * (mean(&mflyt) - mean(&none));
    let room = 100.0 * (mean(&ceiling) - mean(&none));
    let clip_gain = 100.0 * (mean(&clip) - mean(&none));
    eprintln!(
        "no filter {none:?}, CLIP top-k {clip:?}, M-FLYT + SCS {mflyt:?}, ceiling {ceiling:?}: \
         gains {clip_gain:.2}, {gain:.2}, {room:.2} pp"
    );
    assert!(clip_gain >= CLIP_TOP_PP, "CLIP score top-k beats no filter by {clip_gain:.2} pp, under {CLIP_TOP_PP}");
    assert!(
        gain >= MARGIN_PP,
        "M-FLYT + SCS beats no filter by {gain:.2} pp, less than the measured margin {MARGIN_PP}"
    );
    assert!(room >= ROOM_PP, "the ceiling beats no filter by {room:.2} pp, less than the measured {ROOM_PP}");
    for a in none.iter().chain(&mflyt) {
        assert!(*a > 0.15, "every model learned something (chance is 0.10 on both tasks): {a}");
    }

    // every ingested sample is accepted or rejected with its reason, and the counts reconcile with the build
    let kinds = &r["data"]["kinds"];
    let built: u64 = kinds.as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    let ingest = &r["ingest"];
    assert_eq!(ingest["accepted"].as_u64().unwrap() + ingest["rejected"].as_u64().unwrap(), built);
    let broken = kinds["broken"].as_u64().unwrap();
    let by_reason = ingest["rejected_by_reason"].as_object().unwrap();
    assert_eq!(ingest["rejected"].as_u64().unwrap(), broken, "exactly the broken samples are rejected");
    // each domain's broken samples alternate, cut in transit first, then no caption: so the two reasons differ by
    // at most one per domain
    let (missing, cut) =
        (by_reason["missing_caption"].as_u64().unwrap(), by_reason["unreadable_image"].as_u64().unwrap());
    assert_eq!(missing + cut, broken, "{by_reason:?}");
    assert!(cut >= missing && cut - missing <= 2, "{by_reason:?}");

    // what the subsets hold: no filter is the pool, top-k its fraction, SCS fills the budget, the ceiling is
    // exactly the clean samples; M-FLYT + SCS trains on a little less dirt than the pool
    let runs = r["runs"].as_array().unwrap();
    let budget = r["config"]["train"]["steps"].as_u64().unwrap() * r["config"]["train"]["batch"].as_u64().unwrap();
    let accepted = ingest["accepted"].as_u64().unwrap();
    let fraction = r["config"]["methods"]["fraction"].as_f64().unwrap();
    for run in runs {
        let sum: f64 = run["kinds"].as_object().unwrap().values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-6, "kind fractions add up to 1: {sum}");
        let samples = run["samples"].as_u64().unwrap();
        match run["method"].as_str().unwrap() {
            "no-filter" => assert_eq!(samples, accepted),
            "clip-top" => assert_eq!(samples, (fraction * accepted as f64).round() as u64, "{run}"),
            "ceiling" => {
                assert_eq!(samples, kinds["clean"].as_u64().unwrap());
                assert!((run["kinds"]["clean"].as_f64().unwrap() - 1.0).abs() < 1e-9, "{run}");
            }
            _ => assert_eq!(samples, budget, "SCS samples the whole budget"),
        }
    }
    // every row's training multiset is a DataComp subset file numpy reads: one uid per sample seen, repeats kept
    let counts = py(
        "import glob, numpy as np\nfor f in sorted(glob.glob('ev/subsets/*.npy')): print(f.split('/')[-1], len(np.load(f)))",
        p,
    );
    for run in runs {
        let name = format!("{}.seed{}.npy {}", run["method"].as_str().unwrap(), run["seed"], run["samples"]);
        assert!(counts.lines().any(|l| l == name), "{name} in {counts}");
    }
    let frac = |m: &str, k: &str| runs.iter().find(|x| x["method"] == m).unwrap()["kinds"][k].as_f64().unwrap_or(0.0);
    for k in ["clean", "wrong_class", "alt_text", "noise", "off_task", "duplicate"] {
        eprintln!("{k}: no filter {:.4}, M-FLYT + SCS {:.4}", frac("no-filter", k), frac("mflyt-scs", k));
    }
    assert!(frac("mflyt-scs", "wrong_class") < WRONG_CLASS_RATIO * frac("no-filter", "wrong_class"));
    assert!(frac("mflyt-scs", "clean") > frac("no-filter", "clean") + CLEAN_GAIN);

    // `flyt report` writes the same page from results.json
    ok(flyt(&["report", "--eval", "ev", "--out", "again.html"], p));
    let report = std::fs::read_to_string(p.join("ev/report.html")).unwrap();
    assert_eq!(report, std::fs::read_to_string(p.join("again.html")).unwrap());
    assert!(!report.contains("src=\"http") && !report.contains("<script src"), "self-contained");

    // the page in headless Chromium
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("eval-report.png");
    let o = std::process::Command::new(python())
        .arg(repo().join("scripts/py/check_report.py"))
        .arg(p.join("ev/report.html"))
        .arg(&shot)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    eprintln!("report screenshot: {}", shot.display());
    for k in ["console_errors", "page_errors", "failed_requests"] {
        assert_eq!(seen[k].as_array().unwrap().len(), 0, "{k}: {seen}");
    }
    assert_eq!(seen["table_visible"], true);
    let table = seen["table"].as_array().unwrap();
    let header: Vec<&str> = table[0].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    let col =
        |name: &str| header.iter().position(|h| h.starts_with(name)).unwrap_or_else(|| panic!("{name}: {header:?}"));
    let (t0, t1, paired, way) = (col("fashion-mnist"), col("digits"), col("paired difference"), col("of the way"));
    let labels: Vec<&str> = table[1..].iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(labels, ["no filter", "CLIP score, top k", "M-FLYT + SCS", "ceiling: clean on-task only"], "{seen}");
    let row = |label: &str| table[1..].iter().find(|r| r[0] == label).unwrap().as_array().unwrap();
    let cell = |label: &str, c: usize| row(label)[c].as_str().unwrap().to_string();
    // the table shows what results.json holds: per task, and the paired difference against CLIP score top-k
    let digits: Vec<f64> =
        (0..3).map(|s| run_of(&r, "mflyt-scs", s)["tasks"][1]["accuracy"].as_f64().unwrap()).collect();
    let (m, se) = mean_se(&digits);
    assert_eq!(cell("M-FLYT + SCS", t1), format!("{:.2} ± {:.2}", 100.0 * m, 100.0 * se));
    assert!(cell("no filter", t0).contains('±'));
    let d: Vec<f64> = (0..3)
        .map(|s| {
            run_of(&r, "mflyt-scs", s)["accuracy"].as_f64().unwrap()
                - run_of(&r, "clip-top", s)["accuracy"].as_f64().unwrap()
        })
        .collect();
    let (m, se) = mean_se(&d);
    assert_eq!(cell("M-FLYT + SCS", paired), format!("{:+.2} ± {:.2}", 100.0 * m, 100.0 * se));
    assert_eq!(cell("CLIP score, top k", paired), "—", "the baseline has no difference against itself");
    assert_eq!(cell("no filter", way), "0%");
    assert_eq!(cell("ceiling: clean on-task only", way), "100%");
    let w = (mean(&mflyt) - mean(&none)) / (mean(&ceiling) - mean(&none));
    assert_eq!(cell("M-FLYT + SCS", way), format!("{:.0}%", 100.0 * w));
    assert_eq!(seen["paired_charts"], 1, "the paired differences are drawn: {seen}");
    assert!(seen["ceiling_note"].as_str().unwrap().contains("clean on-task samples only"), "{seen}");
    assert_eq!(seen["broken_images"], 0);
    assert_eq!(seen["images"], 48, "24 top- and 24 bottom-scored thumbnails");
    assert!(seen["charts"].as_u64().unwrap() >= 7, "accuracy, paired, three histograms, SCS, rejects: {seen}");
    for h in [
        "Accuracy",
        "Accuracy per class: fashion-mnist",
        "Accuracy per class: digits",
        "Scores by pool kind",
        "Soft Cap Sampling",
        "Top-scored by M-FLYT",
        "Rejects by reason",
    ] {
        assert!(seen["headings"].as_array().unwrap().iter().any(|x| x == h), "{h}: {seen}");
    }
}

#[test]
fn eval_configuration_errors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let good = std::fs::read_to_string(repo().join("cli/tests/data/eval-ci.toml")).unwrap();
    let run = |name: &str, text: String| {
        std::fs::write(p.join(name), text).unwrap();
        let o = flyt(&["eval", "--config", name, "--out", "x"], p);
        assert_eq!(o.status.code(), Some(1), "{name}");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = run("unknown.toml", good.replace("[pool]\n", "[pool]\nsampels = 3\n"));
    assert!(e.contains("sampels"), "{e}");
    let e = run(
        "method.toml",
        good.replace("run = [\"no-filter\", \"clip-top\", \"mflyt-scs\", \"ceiling\"]", "run = [\"best\"]"),
    );
    assert!(e.contains("unknown method \"best\""), "{e}");
    let e = run("learn.toml", good.replace("[tasks]\n", "[tasks]\nlearn = [0, 2]\n"));
    assert!(e.contains("[tasks] learn = [0, 2]") && e.contains("distinct indices into downstream (0..2)"), "{e}");
    let e = run("dirt.toml", good.replace("wrong_class = 0.15", "wrong_class = 0.95"));
    assert!(e.contains("leave some clean data"), "{e}");
    let e = run("nodata.toml", good.replace(".venv/data/fashion-mnist", "missing/fmnist"));
    assert!(e.contains("missing/fmnist") && e.contains("./x setup"), "{e}");
    // the embedded configurations parse, and the demo prints its own
    let o = ok(flyt(&["demo", "--print-config"], p));
    assert_eq!(o, std::fs::read_to_string(repo().join("eval-demo.toml")).unwrap());
}
