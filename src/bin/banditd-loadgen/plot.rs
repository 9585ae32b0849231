//! The regret-over-time plot: SVG, one line per run.

use std::path::Path;

use banditd::{
    harness::{CurvePoint, normalized_regret},
    offline::plot,
};

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
    Ok(plot::check_path(path)?)
}

/// Draws `series` into the SVG file `path`.
///
/// # Errors
/// `path` does not end in `.svg` (this build has no bitmap backend), or it cannot be written.
pub(crate) fn draw(path: &Path, title: &str, series: &[Series], y: PlotY) -> anyhow::Result<()> {
    let lines: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|s| {
            let points = s
                .curve
                .iter()
                .map(|p| (p.decisions as f64, y_of(p, y)))
                .filter(|(_, v)| v.is_finite())
                .collect();
            (s.name.clone(), points)
        })
        .collect();
    let y_max = lines
        .iter()
        .flat_map(|l| &l.1)
        .map(|p| p.1)
        .fold(0.0f64, f64::max);
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
    let axes = plot::Axes {
        title,
        x: "decisions",
        y: y_desc,
        y_range: (0.0, y_max),
    };
    Ok(plot::lines(path, axes, &lines)?)
}
