//! The real-data evaluation end to end through the `flyt` binary: the reduced CI configuration
//! (`tests/data/eval-ci.toml`: the mini-DataComp from Fashion-MNIST, Openclipart and web alt-text at a small
//! scale; no filter and M-FLYT + SCS over three seeds), the margin of M-FLYT + SCS over no filter, the ingest
//! counts' reconciliation, the subsets' composition, and the report loaded in headless Chromium.

mod common;

use std::path::{Path, PathBuf};

use common::{flyt, ok, python};

/// The least mean gain in zero-shot accuracy (percentage points) of M-FLYT + SCS over no filter that the reduced
/// evaluation must show. Measured on the 2-core CI machine over seeds 0, 1, 2 (see the README's evaluation
/// section): set well under the measured gain, well above zero.
const MARGIN_PP: f64 = 10.0;

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
    for needed in [".venv/data/fashion-mnist/train-images-idx3-ubyte.gz", ".venv/data/openclipart/.complete"] {
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

#[test]
fn reduced_evaluation_mflyt_scs_beats_no_filter_and_the_report_renders() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let cfg = ci_config(p);
    let out = ok(flyt(&["eval", "--config", cfg.to_str().unwrap(), "--out", "ev", "--workers", "2"], p));
    assert!(out.contains("M-FLYT + SCS") && out.contains("no filter") && out.contains("report: "), "{out}");
    let r = results(&p.join("ev"));

    // the comparison
    let none = accuracies(&r, "no-filter");
    let mflyt = accuracies(&r, "mflyt-scs");
    assert_eq!((none.len(), mflyt.len()), (3, 3), "three seeds per method");
    let gain = 100.0 * (mean(&mflyt) - mean(&none));
    eprintln!("no filter {none:?}, M-FLYT + SCS {mflyt:?}: gain {gain:.2} pp");
    assert!(
        gain >= MARGIN_PP,
        "M-FLYT + SCS beats no filter by {gain:.2} pp, less than the measured margin {MARGIN_PP}"
    );
    for a in none.iter().chain(&mflyt) {
        assert!(*a > 0.15, "every model learned something (chance is 0.10): {a}");
    }

    // every ingested sample is accepted or rejected with its reason, and the counts reconcile with the build
    let kinds = &r["data"]["kinds"];
    let built: u64 = kinds.as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    let ingest = &r["ingest"];
    assert_eq!(ingest["accepted"].as_u64().unwrap() + ingest["rejected"].as_u64().unwrap(), built);
    let broken = kinds["broken"].as_u64().unwrap();
    let by_reason = ingest["rejected_by_reason"].as_object().unwrap();
    assert_eq!(ingest["rejected"].as_u64().unwrap(), broken, "exactly the broken samples are rejected");
    assert_eq!(by_reason["missing_caption"].as_u64().unwrap(), broken / 2, "{by_reason:?}");
    assert_eq!(by_reason["unreadable_image"].as_u64().unwrap(), broken - broken / 2, "{by_reason:?}");

    // what the subsets hold: no filter is the pool; M-FLYT + SCS fills the budget and trains on far less dirt
    let runs = r["runs"].as_array().unwrap();
    let budget = r["config"]["train"]["steps"].as_u64().unwrap() * r["config"]["train"]["batch"].as_u64().unwrap();
    for run in runs {
        let sum: f64 = run["kinds"].as_object().unwrap().values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-6, "kind fractions add up to 1: {sum}");
        match run["method"].as_str().unwrap() {
            "no-filter" => assert_eq!(run["samples"], ingest["accepted"]),
            _ => assert_eq!(run["samples"].as_u64().unwrap(), budget, "SCS samples the whole budget"),
        }
    }
    let frac = |m: &str, k: &str| runs.iter().find(|x| x["method"] == m).unwrap()["kinds"][k].as_f64().unwrap_or(0.0);
    for k in ["clean", "wrong_class", "alt_text", "noise", "off_task", "duplicate"] {
        eprintln!("{k}: no filter {:.4}, M-FLYT + SCS {:.4}", frac("no-filter", k), frac("mflyt-scs", k));
    }
    // measured with the official mixer (raw inputs, PyTorch's init; 150 steps): wrong-class 0.118 against the
    // pool's 0.151, clean 0.597 against 0.528 (the z-scored mixer: clean 0.743); the bounds keep a margin
    assert!(frac("mflyt-scs", "wrong_class") < 0.9 * frac("no-filter", "wrong_class"));
    assert!(frac("mflyt-scs", "clean") > frac("no-filter", "clean") + 0.03);

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
    assert_eq!(table.len(), 3, "a header and two methods: {seen}");
    assert_eq!(table[1][0], "no filter");
    assert_eq!(table[2][0], "M-FLYT + SCS");
    assert!(table[2][1].as_str().unwrap().contains('±'));
    assert_eq!(seen["broken_images"], 0);
    assert_eq!(seen["images"], 48, "24 top- and 24 bottom-scored thumbnails");
    assert!(seen["charts"].as_u64().unwrap() >= 6, "accuracy, three histograms, SCS, rejects: {seen}");
    for h in ["Accuracy", "Scores by pool kind", "Soft Cap Sampling", "Top-scored by M-FLYT", "Rejects by reason"] {
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
    let e = run("method.toml", good.replace("run = [\"no-filter\", \"mflyt-scs\"]", "run = [\"best\"]"));
    assert!(e.contains("unknown method \"best\""), "{e}");
    let e = run("dirt.toml", good.replace("wrong_class = 0.15", "wrong_class = 0.95"));
    assert!(e.contains("leave some clean data"), "{e}");
    let e = run("nodata.toml", good.replace(".venv/data/fashion-mnist", "missing/fmnist"));
    assert!(e.contains("missing/fmnist") && e.contains("./x setup"), "{e}");
    // the embedded configurations parse, and the demo prints its own
    let o = ok(flyt(&["demo", "--print-config"], p));
    assert_eq!(o, std::fs::read_to_string(repo().join("eval-demo.toml")).unwrap());
}
