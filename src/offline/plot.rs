//! SVG plots: lines over a numeric x axis (the load generator's regret curves) and point
//! estimates with their intervals (`banditd evaluate --plot`). This build has plotters' SVG
//! backend only, not its bitmap one.

use std::path::Path;

use plotters::prelude::*;

use crate::error::Error;

/// Checks that `path` names an SVG file.
///
/// # Errors
/// The extension is not `.svg`.
pub fn check_path(path: &Path) -> Result<(), Error> {
    let is_svg = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    if !is_svg {
        return Err(Error::invalid(
            "plot",
            format!(
                "{}: plots are written as SVG only (this build has plotters' SVG backend, not \
                 its bitmap one); use a .svg path",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// A chart's title and axes.
#[derive(Debug, Clone, Copy)]
pub struct Axes<'a> {
    /// The title.
    pub title: &'a str,
    /// The x axis's description.
    pub x: &'a str,
    /// The y axis's description.
    pub y: &'a str,
    /// The y range.
    pub y_range: (f64, f64),
}

fn failed(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("cannot draw the plot {}: {e}", path.display()))
}

/// Draws one line per `(name, points)` into the SVG file `path`, x from 0 to the largest x.
///
/// # Errors
/// `path` is not an SVG path or cannot be written.
pub fn lines(
    path: &Path,
    axes: Axes<'_>,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), Error> {
    check_path(path)?;
    let x_max = series
        .iter()
        .flat_map(|s| &s.1)
        .map(|p| p.0)
        .fold(1.0f64, f64::max);
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(axes.title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..x_max, axes.y_range.0..axes.y_range.1)?;
        chart
            .configure_mesh()
            .x_desc(axes.x)
            .y_desc(axes.y)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
                .label(name.clone())
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
    draw().map_err(|e| failed(path, e))
}

/// One estimate with its interval, drawn as a point and a bar.
#[derive(Debug, Clone)]
pub struct Interval {
    /// Its label on the x axis.
    pub label: String,
    /// The estimate.
    pub value: f64,
    /// Lower end of the interval.
    pub low: f64,
    /// Upper end of the interval.
    pub high: f64,
}

/// Draws `groups` (a name and its intervals, one colour per group) side by side along the
/// x axis into the SVG file `path`. Non-finite intervals are left out.
///
/// # Errors
/// `path` is not an SVG path or cannot be written.
pub fn intervals(
    path: &Path,
    axes: Axes<'_>,
    groups: &[(String, Vec<Interval>)],
) -> Result<(), Error> {
    check_path(path)?;
    let labels: Vec<String> = groups
        .iter()
        .flat_map(|(_, g)| g.iter().map(|i| i.label.clone()))
        .fold(Vec::new(), |mut v, l| {
            if !v.contains(&l) {
                v.push(l);
            }
            v
        });
    // Enough decimals to tell the ticks apart, no more.
    let span = (axes.y_range.1 - axes.y_range.0).abs().max(1e-12);
    let decimals = (2.0 - span.log10().floor()).clamp(0.0, 8.0) as usize;
    let n = labels.len().max(1) as f64;
    let k = groups.len().max(1) as f64;
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(axes.title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(64)
            .y_label_area_size(72)
            .build_cartesian_2d(-0.5f64..n - 0.5, axes.y_range.0..axes.y_range.1)?;
        let names = labels.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(labels.len().max(1))
            .x_desc(axes.x)
            .y_desc(axes.y)
            .x_label_formatter(&move |x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    names.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{y:.decimals$}"))
            .draw()?;
        for (g, (name, items)) in groups.iter().enumerate() {
            let color = Palette99::pick(g).to_rgba();
            // Groups side by side within each label's slot.
            let offset = (g as f64 - (k - 1.0) / 2.0) * (0.6 / k);
            let points: Vec<(f64, &Interval)> = items
                .iter()
                .filter(|i| i.value.is_finite() && i.low.is_finite() && i.high.is_finite())
                .filter_map(|i| {
                    let x = labels.iter().position(|l| *l == i.label)? as f64 + offset;
                    Some((x, i))
                })
                .collect();
            chart
                .draw_series(points.iter().map(|(x, i)| {
                    PathElement::new(vec![(*x, i.low), (*x, i.high)], color.stroke_width(2))
                }))?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(
                points
                    .iter()
                    .map(|(x, i)| Circle::new((*x, i.value), 4, color.filled())),
            )?;
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
    draw().map_err(|e| failed(path, e))
}
