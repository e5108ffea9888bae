//! Charts drawn with plotters: PNG when a TrueType font is found (text needs one), else SVG (text stays text).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

/// Where fonts are looked for, in order: `FLYT_FONT`, then Debian's DejaVu Sans (`fonts-dejavu-core`).
const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a TrueType font for bitmap text once; false when none is found.
pub fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let env = std::env::var("FLYT_FONT").ok();
        for p in env.iter().map(String::as_str).chain(FONT_PATHS) {
            if let Ok(bytes) = std::fs::read(p) {
                // the font must live for the whole process: plotters keeps a reference
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Named series of (x, y) points.
pub type Series<'a> = (&'a str, &'a [(f64, f64)]);

/// Draws line series into `path` (`.png`; an `.svg` beside it when no font is found). Returns the file written.
pub fn line_chart(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> crate::Result<PathBuf> {
    let png = font_ready();
    let out = if png { path.with_extension("png") } else { path.with_extension("svg") };
    let (w, h) = (900u32, 540u32);
    if png {
        let root = BitMapBackend::new(&out, (w, h)).into_drawing_area();
        draw(root, title, x_label, y_label, series)?;
    } else {
        let root = SVGBackend::new(&out, (w, h)).into_drawing_area();
        draw(root, title, x_label, y_label, series)?;
    }
    Ok(out)
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> crate::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| crate::Error::Incomplete(format!("drawing: {e}")))?;
    let pts = series.iter().flat_map(|s| s.1.iter()).filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-9);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1.max(x0 + 1e-9), (y0 - pad)..(y1 + pad))
        .map_err(|e| crate::Error::Incomplete(format!("chart: {e}")))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| crate::Error::Incomplete(format!("mesh: {e}")))?;
    let colours = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(148, 103, 189)];
    for (i, (name, data)) in series.iter().enumerate() {
        let c = colours[i % colours.len()];
        chart
            .draw_series(LineSeries::new(
                data.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()),
                c.stroke_width(2),
            ))
            .map_err(|e| crate::Error::Incomplete(format!("series: {e}")))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| crate::Error::Incomplete(format!("legend: {e}")))?;
    root.present().map_err(|e| crate::Error::Incomplete(format!("writing the chart: {e}")))?;
    Ok(())
}
