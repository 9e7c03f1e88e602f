//! Plots of suite results, like the paper's Figures 2 and 3: for each item, one bar per
//! runner giving its time relative to native (log scale, 1 = native speed), and the
//! geomean as the last group. Items run down the y axis so that names stay readable.
//! Written as SVG, and as PNG beside it.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context as _, bail};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::SuiteReport;

/// Where the font for labels is read from (Debian's fonts-dejavu-core).
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers the label font once per process. plotters draws text with ab_glyph from
/// font bytes, so neither fontconfig nor a font server is needed.
pub(crate) fn font() -> anyhow::Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = FONT_PATHS
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .ok_or_else(|| {
                format!(
                    "no label font found (install fonts-dejavu-core): looked in {}",
                    FONT_PATHS.join(", ")
                )
            })?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "the label font is not a valid TrueType font".to_owned())
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Writes the plot to `path` (`.svg`) and to the same path with `.png`.
///
/// # Errors
/// When there is nothing to plot, no font, or a file cannot be written.
pub fn write(report: &SuiteReport, path: &Path) -> anyhow::Result<()> {
    font()?;
    let svg = path.with_extension("svg");
    let png = path.with_extension("png");
    let size = dimensions(report);
    draw(report, SVGBackend::new(&svg, size).into_drawing_area())
        .with_context(|| format!("drawing {}", svg.display()))?;
    draw(report, BitMapBackend::new(&png, size).into_drawing_area())
        .with_context(|| format!("drawing {}", png.display()))?;
    Ok(())
}

const BAR: u32 = 7;
const RIGHT: u32 = 170;

/// Room left of the plot for the longest item name (about 7 px a character at 13 px).
fn left_margin(report: &SuiteReport) -> u32 {
    let longest = report
        .items
        .iter()
        .map(|i| i.chars().count())
        .max()
        .unwrap_or(8)
        .max(8);
    30 + 7 * longest as u32
}

fn dimensions(report: &SuiteReport) -> (u32, u32) {
    let bars = report.runners.len().saturating_sub(1).max(1) as u32;
    let groups = report.items.len() as u32 + 1;
    (950 + left_margin(report), 140 + groups * (bars * BAR + 8))
}

fn draw<DB: DrawingBackend>(
    report: &SuiteReport,
    root: DrawingArea<DB, Shift>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let runners: Vec<&String> = report.runners.iter().skip(1).collect();
    if runners.is_empty() || report.items.is_empty() {
        bail!("nothing to plot: no runner besides the baseline, or no item");
    }
    let mut groups: Vec<(String, Vec<Option<f64>>)> = report
        .items
        .iter()
        .map(|i| {
            (
                i.clone(),
                runners.iter().map(|r| report.ratio(i, r)).collect(),
            )
        })
        .collect();
    groups.push((
        "geomean".into(),
        runners
            .iter()
            .map(|r| report.aggregate(r).map(|a| a.0))
            .collect(),
    ));
    let all: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.1.iter().flatten().copied())
        .collect();
    let lo = all.iter().copied().fold(1.0f64, f64::min) * 0.8;
    let hi = all.iter().copied().fold(1.0f64, f64::max) * 1.25;

    root.fill(&WHITE).map_err(err)?;
    let n = groups.len() as f64;
    let base = report.runners.first().map_or("native", String::as_str);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} ({}): time relative to {base} (log scale, lower is better)",
                report.suite, report.setting
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .margin_left(left_margin(report))
        .margin_right(RIGHT)
        .x_label_area_size(40)
        .y_label_area_size(0)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..n)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc(format!("time / {base} time"))
        .x_labels(12)
        .x_label_formatter(&|v| format!("{v:.2}"))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;

    let k = runners.len() as f64;
    for (ri, _) in runners.iter().enumerate() {
        // Group gi occupies [n-gi-1, n-gi) so that the first item is at the top.
        let bars = groups.iter().enumerate().filter_map(|(gi, (_, ratios))| {
            let r = ratios[ri]?;
            let y0 = n - gi as f64 - 0.1 - (ri as f64 + 1.0) * 0.8 / k;
            Some(Rectangle::new(
                [(lo, y0), (r, y0 + 0.8 / k * 0.9)],
                palette(ri).filled(),
            ))
        });
        chart.draw_series(bars).map_err(err)?;
    }
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(1.0, 0.0), (1.0, n)],
            BLACK.stroke_width(1),
        )))
        .map_err(err)?;
    // Legend, in pixels right of the plotting area.
    let (width, _) = root.dim_in_pixel();
    for (ri, name) in runners.iter().enumerate() {
        let x = (width - RIGHT + 16) as i32;
        let y = 60 + 20 * ri as i32;
        root.draw(&Rectangle::new(
            [(x, y - 6), (x + 14, y + 6)],
            palette(ri).filled(),
        ))
        .map_err(err)?;
        root.draw(&Text::new(
            (*name).clone(),
            (x + 20, y - 7),
            ("sans-serif", 13).into_font(),
        ))
        .map_err(err)?;
    }
    // Item names, drawn in pixels left of the plotting area.
    for (gi, (name, _)) in groups.iter().enumerate() {
        let (_, py) = chart.backend_coord(&(lo, n - gi as f64 - 0.5));
        let style = TextStyle::from(("sans-serif", 13).into_font()).pos(
            plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Right,
                plotters::style::text_anchor::VPos::Center,
            ),
        );
        root.draw(&Text::new(
            name.clone(),
            (left_margin(report) as i32 - 10, py),
            style,
        ))
        .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn palette(i: usize) -> RGBColor {
    const COLOURS: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    COLOURS[i % COLOURS.len()]
}

fn err<E: std::error::Error + Send + Sync + 'static>(e: E) -> anyhow::Error {
    anyhow::Error::new(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plot is written as SVG and PNG and names every item and runner.
    #[test]
    fn writes_svg_and_png() {
        // The README's test command installs it (fonts-dejavu-core): a machine without
        // it fails here rather than passing without drawing anything.
        font().expect("a label font; scripts/setup.sh installs fonts-dejavu-core");
        let mut r = SuiteReport {
            suite: "polybench".into(),
            setting: "MINI".into(),
            items: vec!["gemm".into(), "floyd-warshall".into()],
            runners: vec!["native".into(), "tern".into(), "peer".into()],
            ..SuiteReport::default()
        };
        for (item, t) in [("gemm", 1.0), ("floyd-warshall", 2.0)] {
            r.push(item, "native", t);
            r.push(item, "tern", t * 1.1);
            r.push(item, "peer", t * 1.3);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        write(&r, &dir.path().join("fig.svg")).expect("plot");
        let svg = std::fs::read_to_string(dir.path().join("fig.svg")).expect("svg");
        for needle in ["floyd-warshall", "geomean", "tern", "peer"] {
            assert!(svg.contains(needle), "{needle} missing from the SVG");
        }
        let png = std::fs::read(dir.path().join("fig.png")).expect("png");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
}
