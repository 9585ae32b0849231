//! The regret-over-time plot: SVG, one line per run.

use std::path::Path;

use anyhow::{Context, bail};
use banditd::harness::{CurvePoint, normalized_regret};
use plotters::prelude::*;

use crate::cli::PlotY;

/// One line of the plot.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) curve: Vec<CurvePoint>,
}

fn y_of(point: &CurvePoint, y: PlotY) -> f64 {
    match y {
        PlotY::Normalized => normalized_regret(point.regret, point.uniform_regret),
        PlotY::Cumulative => point.regret,
    }
}

/// Checks that `path` names an SVG file: this build has plotters' SVG backend, not its
/// bitmap one.
///
/// # Errors
/// The extension is not `.svg`.
pub(crate) fn check_path(path: &Path) -> anyhow::Result<()> {
    let is_svg = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    if !is_svg {
        bail!(
            "{}: plots are written as SVG only (this build has plotters' SVG backend, not \
             its bitmap one); use a .svg path",
            path.display()
        );
    }
    Ok(())
}

/// Draws `series` into the SVG file `path`.
///
/// # Errors
/// `path` does not end in `.svg` (this build has no bitmap backend), or it cannot be written.
pub(crate) fn draw(path: &Path, title: &str, series: &[Series], y: PlotY) -> anyhow::Result<()> {
    check_path(path)?;
    let points: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            s.curve
                .iter()
                .map(|p| (p.decisions as f64, y_of(p, y)))
                .filter(|(_, v)| v.is_finite())
                .collect()
        })
        .collect();
    let x_max = points.iter().flatten().map(|p| p.0).fold(1.0f64, f64::max);
    let y_max = points.iter().flatten().map(|p| p.1).fold(0.0f64, f64::max);
    let y_max = match y {
        // Early points can be far above 100 on a few rounds; 0..max(110, …) keeps the
        // interesting part readable while showing every line whole.
        PlotY::Normalized => (y_max * 1.05).max(110.0),
        PlotY::Cumulative => (y_max * 1.05).max(1.0),
    };
    let y_desc = match y {
        PlotY::Normalized => "cumulative regret, % of uniform random's",
        PlotY::Cumulative => "cumulative regret",
    };

    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc("decisions")
            .y_desc(y_desc)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        for (i, (s, pts)) in series.iter().zip(&points).enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot draw the plot {}", path.display()))
}
