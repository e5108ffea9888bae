//! `flyt report`: one self-contained HTML page (inline SVG charts drawn with plotters, inline PNG thumbnails)
//! from an evaluation's output directory: the accuracy table (mean of the judge's tasks and each task, ± standard
//! error), the paired differences against CLIP-score top-k with error bars, how far each method comes toward the
//! ceiling, accuracy per class, the subsets' class and domain balance and composition, score histograms per pool
//! kind, SCS's count against score, the top- and bottom-scored images with their captions, rejects by reason.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use flyt::{Ingest, ReaderConfig, Record, Uid};
use plotters::prelude::*;

use super::{BASELINE, EvalResults, METHODS, mean_se};

const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing: {e}")
}

/// HTML-escapes text.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 { T[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if c.len() > 2 { T[n as usize & 63] as char } else { '=' });
    }
    out
}

/// Overlaid histograms (fraction of each series per bin) as SVG.
fn histogram_svg(title: &str, x_label: &str, series: &[(String, Vec<f32>)], bins: usize) -> anyhow::Result<String> {
    let all = series.iter().flat_map(|s| s.1.iter()).copied().filter(|x| x.is_finite());
    let (lo, hi) = all.fold((f32::MAX, f32::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (lo, hi) = if lo > hi { (0.0, 1.0) } else { (lo as f64, (hi as f64).max(lo as f64 + 1e-6)) };
    let w = (hi - lo) / bins as f64;
    let curves: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|s| !s.1.is_empty())
        .map(|(name, xs)| {
            let mut h = vec![0f64; bins];
            for &x in xs.iter().filter(|x| x.is_finite()) {
                h[(((x as f64 - lo) / w) as usize).min(bins - 1)] += 1.0 / xs.len() as f64;
            }
            (
                format!("{name} ({})", xs.len()),
                h.iter().enumerate().map(|(i, &y)| (lo + (i as f64 + 0.5) * w, y)).collect(),
            )
        })
        .collect();
    let ymax = curves.iter().flat_map(|c| c.1.iter().map(|p| p.1)).fold(0.0, f64::max).max(1e-6) * 1.08;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(lo..hi, 0.0..ymax)
            .map_err(err)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_desc(x_label)
            .y_desc("fraction of the kind")
            .draw()
            .map_err(err)?;
        for (i, (name, pts)) in curves.iter().enumerate() {
            let c = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
                .map_err(err)?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// SCS: each uid's count against its score (a sample of points), with the mean count per score bin.
fn scs_svg(points: &[(f64, u32)]) -> anyhow::Result<String> {
    let (lo, hi) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (lo, hi) = if lo > hi { (0.0, 1.0) } else { (lo, hi.max(lo + 1e-6)) };
    let ymax = points.iter().map(|p| p.1).max().unwrap_or(1).max(1) as f64 + 0.5;
    let bins = 30;
    let w = (hi - lo) / bins as f64;
    let mut sum = vec![(0.0, 0usize); bins];
    for &(x, c) in points {
        let b = (((x - lo) / w) as usize).min(bins - 1);
        sum[b].0 += c as f64;
        sum[b].1 += 1;
    }
    let mean: Vec<(f64, f64)> = sum
        .iter()
        .enumerate()
        .filter(|(_, s)| s.1 > 0)
        .map(|(i, s)| (lo + (i as f64 + 0.5) * w, s.0 / s.1 as f64))
        .collect();
    let step = (points.len() / 4000).max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("SCS: times sampled against the M-FLYT score", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d(lo..hi, -0.2..ymax)
            .map_err(err)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_desc("M-FLYT score")
            .y_desc("count in the subset")
            .draw()
            .map_err(err)?;
        chart
            .draw_series(
                points.iter().step_by(step).map(|&(x, c)| Circle::new((x, c as f64), 2, COLOURS[0].mix(0.35).filled())),
            )
            .map_err(err)?
            .label("one uid")
            .legend(|(x, y)| Circle::new((x + 8, y), 3, COLOURS[0].filled()));
        chart
            .draw_series(LineSeries::new(mean.iter().copied(), COLOURS[1].stroke_width(3)))
            .map_err(err)?
            .label("mean count per score bin")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], COLOURS[1].stroke_width(3)));
        chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Per method: mean bars with ± one standard error whiskers and each seed as a dot, from `lo` (0 for accuracies;
/// below the least value for differences), with a horizontal line at `line` (the reference, or 0).
fn accuracy_svg(
    title: &str,
    y_desc: &str,
    rows: &[(String, Vec<f64>)],
    line: (&str, f64),
    differences: bool,
) -> anyhow::Result<String> {
    let values = rows.iter().flat_map(|r| r.1.iter()).copied();
    let (vmin, vmax) = values.fold((line.1, line.1), |(a, b), x| (a.min(x), b.max(x)));
    let (ylo, yhi) = if differences {
        let pad = (vmax - vmin).max(0.005) * 100.0 * 0.15;
        (vmin * 100.0 - pad, vmax * 100.0 + pad)
    } else {
        (0.0, vmax.max(0.01) * 100.0 * 1.25)
    };
    let n = rows.len().max(1);
    // horizontal bars, the first row on top: ten method names stay readable
    let y_of = |i: usize| (n - 1 - i) as f64;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 90 + 34 * n as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(190)
            .build_cartesian_2d(ylo..yhi, -0.5..(n as f64 - 0.5))
            .map_err(err)?;
        let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(WHITE)
            .y_labels(n)
            .y_label_formatter(&|y| {
                let i = y.round();
                if (y - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                    names.get(n - 1 - i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_label_style(("sans-serif", 12))
            .x_desc(y_desc)
            .draw()
            .map_err(err)?;
        let base = if differences { 0.0 } else { ylo };
        for (i, (_, acc)) in rows.iter().enumerate() {
            let (m, s) = mean_se(acc);
            let (m, s) = (100.0 * m, 100.0 * s);
            let y = y_of(i);
            let c = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(std::iter::once(Rectangle::new([(base, y - 0.3), (m, y + 0.3)], c.mix(0.6).filled())))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(PathElement::new(vec![(m - s, y), (m + s, y)], BLACK.stroke_width(2))))
                .map_err(err)?;
            for x in [m - s, m + s] {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(x, y - 0.12), (x, y + 0.12)],
                        BLACK.stroke_width(2),
                    )))
                    .map_err(err)?;
            }
            chart
                .draw_series(acc.iter().map(|&a| Circle::new((100.0 * a, y - 0.18), 3, BLACK.filled())))
                .map_err(err)?;
        }
        chart
            .draw_series(LineSeries::new(
                [(100.0 * line.1, -0.5), (100.0 * line.1, n as f64 - 0.5)],
                COLOURS[7].stroke_width(1),
            ))
            .map_err(err)?
            .label(line.0)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], COLOURS[7].stroke_width(1)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Horizontal bars of counts.
fn bars_svg(title: &str, items: &[(String, u64)]) -> anyhow::Result<String> {
    let n = items.len().max(1);
    let max = items.iter().map(|i| i.1).max().unwrap_or(1).max(1) as f64 * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 60 + 34 * n as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let names: Vec<String> = items.iter().map(|i| i.0.clone()).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(200)
            .build_cartesian_2d(0.0..max, -0.5..(n as f64 - 0.5))
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(WHITE)
            .y_label_style(("sans-serif", 14))
            .y_labels(n)
            .y_label_formatter(&|y| {
                let i = y.round();
                if (y - i).abs() < 1e-6 && i >= 0.0 {
                    names.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(err)?;
        chart
            .draw_series(items.iter().enumerate().map(|(i, it)| {
                Rectangle::new([(0.0, i as f64 - 0.35), (it.1 as f64, i as f64 + 0.35)], COLOURS[1].mix(0.7).filled())
            }))
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// The scores of the evaluation in `out`: uid → [clip_score, flyt, M-FLYT score], from the curation's score
/// tables (every method's column is there); the M-FLYT score is the mixer's arithmetic over its columns,
/// exactly as the dataflow mixes them. A uid in several shards takes the least shard's row, as the dataflow does.
pub(crate) fn read_scores(out: &Path) -> anyhow::Result<BTreeMap<Uid, [f32; 3]>> {
    let mix = flyt::train::MixWeights::load(&out.join("mflyt/mixer/checkpoint.safetensors"))?;
    let mut names: Vec<&str> = vec!["clip_score", "flyt"];
    for c in &mix.columns {
        if !names.contains(&c.as_str()) {
            names.push(c);
        }
    }
    let at: Vec<usize> = mix.columns.iter().map(|c| names.iter().position(|n| n == c).unwrap_or(0)).collect();
    let dir = out.join("curate/shards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".scores.parquet"))
        .collect();
    files.sort();
    let mut scores = BTreeMap::new();
    for f in files.iter().rev() {
        let t = flyt::read_score_table(f, &names)?;
        for (i, (u, _)) in t.ids.iter().enumerate() {
            let values: Vec<f64> = at.iter().map(|&j| t.columns[j][i] as f64).collect();
            scores.insert(*u, [t.columns[0][i], t.columns[1][i], mix.mix(&values) as f32]);
        }
    }
    Ok(scores)
}

/// Writes the report for the evaluation in `out` (its `results.json` and artefacts) to `path`.
pub fn write(out: &Path, path: &Path) -> anyhow::Result<PathBuf> {
    if !flyt_pipelines::font_ready() {
        anyhow::bail!("no TrueType font to lay out the charts' text: install fonts-dejavu-core or set FLYT_FONT");
    }
    let results_path = out.join("results.json");
    let results: EvalResults = serde_json::from_slice(
        &std::fs::read(&results_path)
            .with_context(|| format!("reading {} (run flyt eval first)", results_path.display()))?,
    )
    .with_context(|| format!("parsing {}", results_path.display()))?;
    let truth = super::data::read_truth(&out.join("data/truth.csv"))?;
    let scores = read_scores(out)?;
    let kind_of = |u: &Uid| truth.get(u).map(|t| t.kind.as_str()).unwrap_or("unknown");
    let kinds: Vec<&str> = super::data::KINDS.iter().copied().filter(|k| *k != "broken").collect();

    let mut html = String::new();
    let title = "flyt evaluation: a mini-DataComp from Fashion-MNIST, handwritten digits, Openclipart and web alt-text";
    write!(
        html,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>\
         body{{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}\
         th{{background:#f3f3f3}}td:first-child,th:first-child{{text-align:left}}\
         .grid{{display:flex;flex-wrap:wrap;gap:8px}}figure{{width:132px;margin:0;font-size:11px}}\
         figure img{{width:84px;height:84px;image-rendering:pixelated;border:1px solid #ddd}}\
         .charts{{display:flex;flex-wrap:wrap;gap:10px}}.note{{color:#555;font-size:14px}}</style></head><body>\n<h1>{}</h1>\n",
        esc(title),
        esc(title)
    )?;
    let cfg = &results.config;
    let kinds_line: Vec<String> = results.data.kinds.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    let task_names = results.task_names();
    let reference_line: Vec<String> =
        results.reference_tasks.iter().map(|t| format!("{} {:.2}%", esc(&t.task), 100.0 * t.accuracy)).collect();
    writeln!(
        html,
        "<p class=\"note\">Pool: {} samples ({}). Each method's subset trains a fresh CLIP ({} layers, width {}, {}px, \
         patch {}) for {} steps × batch {} = {} samples seen; the judge measures zero-shot top-1 on {} held-out images \
         of {} task(s) ({}), and the headline is their mean; seeds {:?}; ± is the standard error over seeds. The \
         reference CLIP (trained on a web-like slice mixed as the pool is) reaches {:.2}% ({}).</p>",
        results.data.kinds.values().sum::<usize>(),
        esc(&kinds_line.join(", ")),
        cfg.model.layers,
        cfg.model.width,
        cfg.model.image_size,
        cfg.model.patch,
        cfg.train.steps,
        cfg.train.batch,
        cfg.train.steps * cfg.train.batch,
        results.data.eval,
        task_names.len(),
        esc(&task_names.join(", ")),
        cfg.train.seeds,
        100.0 * results.reference_accuracy,
        reference_line.join(", ")
    )?;

    // accuracy
    let ran: Vec<(&str, &str)> = METHODS.iter().copied().filter(|(m, _)| !results.accuracies(m).is_empty()).collect();
    let pm = |xs: &[f64]| {
        let (m, se) = mean_se(xs);
        format!("{:.2} ± {:.2}", 100.0 * m, 100.0 * se)
    };
    let ceiling = mean_se(&results.accuracies("ceiling")).0;
    let floor = mean_se(&results.accuracies("no-filter")).0;
    let baseline_label = METHODS.iter().find(|(m, _)| *m == BASELINE).map(|(_, l)| *l).unwrap_or(BASELINE);
    html.push_str("<h2 id=\"accuracy\">Accuracy</h2>\n<table id=\"accuracy-table\"><tr><th>method</th><th>zero-shot top-1, mean of tasks (± s.e.)</th>");
    for t in &task_names {
        write!(html, "<th>{}</th>", esc(t))?;
    }
    writeln!(
        html,
        "<th>paired difference vs {} (± s.e.)</th><th>of the way from no filter to the ceiling</th><th>seeds</th>\
         <th>per seed</th><th>unique uids</th><th>samples</th></tr>",
        esc(baseline_label)
    )?;
    for (m, label) in &ran {
        let runs: Vec<_> = results.runs.iter().filter(|r| r.method == *m).collect();
        let acc: Vec<f64> = runs.iter().map(|r| r.accuracy).collect();
        write!(html, "<tr><td>{}</td><td>{}</td>", esc(label), pm(&acc))?;
        for i in 0..task_names.len() {
            write!(html, "<td>{}</td>", pm(&results.task_accuracies(m, i)))?;
        }
        let d = results.paired(m);
        let diff = if *m == BASELINE || d.is_empty() {
            "—".to_string()
        } else {
            let (dm, se) = mean_se(&d);
            format!("{:+.2} ± {:.2}", 100.0 * dm, 100.0 * se)
        };
        let mean = mean_se(&acc).0;
        let way = if ceiling.is_finite() && floor.is_finite() && (ceiling - floor).abs() > 1e-9 {
            format!("{:.0}%", 100.0 * (mean - floor) / (ceiling - floor))
        } else {
            "—".to_string()
        };
        let per: Vec<String> = runs.iter().map(|r| format!("{:.2}", 100.0 * r.accuracy)).collect();
        writeln!(
            html,
            "<td>{diff}</td><td>{way}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            runs.len(),
            per.join(", "),
            runs[0].unique,
            runs[0].samples
        )?;
    }
    html.push_str("</table>\n");
    let rows: Vec<(String, Vec<f64>)> = ran.iter().map(|(m, l)| (l.to_string(), results.accuracies(m))).collect();
    html.push_str("<div class=\"charts\">");
    html.push_str(&accuracy_svg(
        "Zero-shot top-1, mean of the judge's tasks (mean ± s.e. over seeds)",
        "accuracy (%)",
        &rows,
        ("reference CLIP", results.reference_accuracy),
        false,
    )?);
    let paired: Vec<(String, Vec<f64>)> = ran
        .iter()
        .filter(|(m, _)| *m != BASELINE)
        .map(|(m, l)| (l.to_string(), results.paired(m)))
        .filter(|r| !r.1.is_empty())
        .collect();
    if !paired.is_empty() {
        writeln!(html, "<div id=\"paired\">")?;
        html.push_str(&accuracy_svg(
            &format!("Paired difference against {baseline_label} (same seed), mean ± s.e."),
            "accuracy difference (points)",
            &paired,
            ("no difference", 0.0),
            true,
        )?);
        html.push_str("</div>");
    }
    html.push_str("</div>\n");
    if ceiling.is_finite() {
        writeln!(
            html,
            "<p class=\"note\" id=\"ceiling\">The ceiling trains on the clean on-task samples only, at the same budget: \
             {:.2}%. \"Of the way\" is (method − no filter) / (ceiling − no filter).</p>",
            100.0 * ceiling
        )?;
    }

    // per class
    for (ti, tname) in task_names.iter().enumerate() {
        let dir_names = std::fs::read_to_string(out.join(format!("data/eval-{ti}/classnames.txt")))
            .map(|t| t.lines().map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default();
        write!(
            html,
            "<h2>Accuracy per class: {}</h2><p class=\"note\">Mean over seeds. A method whose scores favour some classes \
             loses the others when it keeps a hard top k.</p><table class=\"per-class\"><tr><th>method</th>",
            esc(tname)
        )?;
        let n_classes = results.runs.first().and_then(|r| r.tasks.get(ti)).map(|t| t.per_class.len()).unwrap_or(0);
        for c in 0..n_classes {
            write!(html, "<th>{}</th>", esc(dir_names.get(c).map(String::as_str).unwrap_or(&c.to_string())))?;
        }
        html.push_str("</tr>\n");
        for (m, label) in &ran {
            write!(html, "<tr><td>{}</td>", esc(label))?;
            for c in 0..n_classes {
                let v: Vec<f64> = results
                    .runs
                    .iter()
                    .filter(|r| r.method == *m)
                    .filter_map(|r| r.tasks.get(ti).and_then(|t| t.per_class.get(c)).copied())
                    .collect();
                write!(html, "<td>{:.1}</td>", 100.0 * mean_se(&v).0)?;
            }
            html.push_str("</tr>\n");
        }
        html.push_str("</table>\n");
    }

    // class balance of the training data, per domain
    for (di, (domain, names)) in super::data::DOMAINS.iter().enumerate() {
        if !results.runs.iter().any(|r| r.classes.contains_key(*domain)) {
            continue;
        }
        write!(
            html,
            "<h2>Class balance of what each subset trains on: {domain}</h2><p class=\"note\">Of the samples seen (first \
             seed) whose image is from {domain}, the share of each true class, and {domain}'s share of everything \
             seen: a filter that starves a class or a domain shows here first.</p><table class=\"class-balance\">\
             <tr><th>method</th><th>share of samples seen</th>"
        )?;
        for n in names.iter() {
            write!(html, "<th>{}</th>", esc(n))?;
        }
        html.push_str("</tr>\n");
        for (m, label) in &ran {
            if let Some(r) = results.runs.iter().find(|r| r.method == *m) {
                let share = r.classes.get("_share").and_then(|s| s.get(di)).copied().unwrap_or(0.0);
                write!(html, "<tr><td>{}</td><td>{:.1}%</td>", esc(label), 100.0 * share)?;
                for v in r.classes.get(*domain).map(|v| v.as_slice()).unwrap_or(&[]) {
                    write!(html, "<td>{:.1}%</td>", 100.0 * v)?;
                }
                html.push_str("</tr>\n");
            }
        }
        html.push_str("</table>\n");
    }

    // composition
    html.push_str("<h2>What each subset trains on</h2><p class=\"note\">Fraction of the samples seen (with repeats) by pool kind, first seed; the ground truth the pool was built with.</p><table><tr><th>method</th>");
    for k in &kinds {
        write!(html, "<th>{}</th>", esc(k))?;
    }
    html.push_str("</tr>\n");
    for (m, label) in METHODS {
        if let Some(r) = results.runs.iter().find(|r| r.method == m) {
            write!(html, "<tr><td>{}</td>", esc(label))?;
            for k in &kinds {
                write!(html, "<td>{:.1}%</td>", 100.0 * r.kinds.get(*k).copied().unwrap_or(0.0))?;
            }
            html.push_str("</tr>\n");
        }
    }
    html.push_str("</table>\n");

    // score histograms
    html.push_str("<h2>Scores by pool kind</h2><div class=\"charts\">\n");
    for (col, name) in [(0, "CLIP score"), (1, "FLYT score"), (2, "M-FLYT score")] {
        let series: Vec<(String, Vec<f32>)> = kinds
            .iter()
            .map(|k| (k.to_string(), scores.iter().filter(|(u, _)| kind_of(u) == *k).map(|(_, s)| s[col]).collect()))
            .collect();
        html.push_str(&histogram_svg(&format!("{name} by pool kind"), name, &series, 30)?);
    }
    html.push_str("</div>\n");

    // SCS
    let seed = cfg.train.seeds.first().copied().unwrap_or(0);
    let subset_path = out.join(format!("subsets/mflyt-scs.seed{seed}.npy"));
    if let Ok(subset) = flyt::read_subset(&subset_path) {
        let mut counts: HashMap<Uid, u32> = HashMap::new();
        for u in &subset {
            *counts.entry(*u).or_default() += 1;
        }
        let points: Vec<(f64, u32)> = scores
            .iter()
            .map(|(u, s)| (s[2] as f64, counts.get(u).copied().unwrap_or(0)))
            .filter(|p| p.0.is_finite())
            .collect();
        let unique = counts.len();
        writeln!(
            html,
            "<h2>Soft Cap Sampling</h2><p id=\"scs-unique\">α = {}, seed {seed}: {} samples, {} unique uids: unique fraction {:.3} \
             ({:.1}% of the scored pool sampled at least once; most repeated uid: {} times).</p>",
            cfg.methods.alpha,
            subset.len(),
            unique,
            unique as f64 / subset.len().max(1) as f64,
            100.0 * unique as f64 / scores.len().max(1) as f64,
            counts.values().max().copied().unwrap_or(0)
        )?;
        html.push_str(&scs_svg(&points)?);
    }

    // image grids
    let mut ranked: Vec<(&Uid, f32)> = scores.iter().map(|(u, s)| (u, s[2])).filter(|p| p.1.is_finite()).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    let per = 24.min(ranked.len() / 2);
    let chosen: Vec<(Uid, f32)> =
        ranked[..per].iter().chain(&ranked[ranked.len() - per..]).map(|(u, s)| (**u, *s)).collect();
    let want: HashMap<Uid, f32> = chosen.iter().copied().collect();
    let mut found: HashMap<Uid, (Vec<u8>, String)> = HashMap::new();
    let mut ingest = Ingest::new(ReaderConfig::default());
    for shard in flyt_pipelines::expand_shards(&[out.join("data/pool")])? {
        ingest.read_shard(&shard, |r| {
            if let Record::Sample(s) = r
                && want.contains_key(&s.uid)
                && let Some(img) = s.image()
            {
                found.insert(s.uid, (img.to_vec(), s.caption.clone().unwrap_or_default()));
            }
        })?;
    }
    for (name, part) in [("Top-scored by M-FLYT", &chosen[..per]), ("Bottom-scored by M-FLYT", &chosen[per..])] {
        writeln!(html, "<h2>{name}</h2><div class=\"grid\">")?;
        for (u, sc) in part {
            if let Some((img, cap)) = found.get(u) {
                write!(
                    html,
                    "<figure><img alt=\"{}\" src=\"data:image/png;base64,{}\"><figcaption>{} <b>{:.2}</b> <i>{}</i></figcaption></figure>",
                    esc(cap),
                    base64(img),
                    esc(cap),
                    sc,
                    esc(kind_of(u))
                )?;
            }
        }
        html.push_str("</div>\n");
    }

    // rejects
    let reasons: Vec<(String, u64)> = results
        .ingest
        .get("rejected_by_reason")
        .and_then(|v| v.as_object())
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
        .unwrap_or_default();
    let accepted = results.ingest.get("accepted").and_then(|v| v.as_u64()).unwrap_or(0);
    let rejected = results.ingest.get("rejected").and_then(|v| v.as_u64()).unwrap_or(0);
    writeln!(
        html,
        "<h2>Rejects by reason</h2><p id=\"rejects\">Ingest: {accepted} accepted, {rejected} rejected.</p><table><tr><th>reason</th><th>samples</th></tr>"
    )?;
    for (k, v) in &reasons {
        writeln!(html, "<tr><td>{}</td><td>{v}</td></tr>", esc(k))?;
    }
    html.push_str("</table>\n");
    if !reasons.is_empty() {
        html.push_str(&bars_svg("Rejected samples by reason", &reasons)?);
    }

    // stages
    html.push_str("<h2>Time per stage</h2><table><tr><th>stage</th><th>seconds</th></tr>\n");
    for (k, v) in &results.stages {
        writeln!(html, "<tr><td>{}</td><td>{v:.1}</td></tr>", esc(k))?;
    }
    html.push_str("</table></body></html>\n");
    if let Some(d) = path.parent()
        && !d.as_os_str().is_empty()
    {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, html).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")]
        {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn escapes_html() {
        assert_eq!(esc("<a href=\"x\">&</a>"), "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;");
    }
}
