//! PNG plots that read without the table: connection rate versus service count, and the
//! pod-to-pod figures. Text is drawn with DejaVu Sans loaded from the system at run time
//! (Debian's fonts-dejavu-core, installed by `cargo xtask setup`).
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::{
    coord::ranged1d::SegmentValue,
    prelude::*,
    style::{FontStyle, register_font},
};

use super::report::{Outcome, Row, Section, count, human};

pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FAMILY: &str = "sans-serif";

/// Registers the font once; plotters keeps a `'static` reference to it.
pub fn load_font() -> Result<()> {
    static DONE: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = std::fs::read(FONT)
            .map_err(|e| format!("reading {FONT}: {e} (apt-get install fonts-dejavu-core)"))?;
        register_font(
            FAMILY,
            FontStyle::Normal,
            Box::leak(bytes.into_boxed_slice()),
        )
        .map_err(|_| format!("{FONT} is not a usable font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing: {e:?}")
}

/// (x, min, median, max) of one measured point.
type Point = (f64, f64, f64, f64);

const PALETTE: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
];

/// One line per subject of connection rate against service count (log scale), with the
/// min-max range of the samples as error bars.
pub fn services(
    path: &Path,
    rows: &[Row],
    subjects: &[&str],
    counts: &[usize],
    case: impl Fn(usize) -> String,
    baseline: Option<(&str, f64)>,
    samples: &str,
) -> Result<()> {
    load_font()?;
    let metric = super::report::CONN_RATE;
    let series: Vec<(&str, Vec<Point>)> = subjects
        .iter()
        .map(|s| {
            let pts = counts
                .iter()
                .filter_map(|&n| {
                    rows.iter()
                        .find(|r| {
                            r.section == Section::Services
                                && r.subject == *s
                                && r.case == case(n)
                                && r.metric == metric
                        })
                        .and_then(Row::stats)
                        .map(|st| (n as f64, st.min(), st.median(), st.max()))
                })
                .collect();
            (*s, pts)
        })
        .collect();
    let ymax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.3))
        .chain(baseline.map(|b| b.1))
        .fold(1.0f64, f64::max)
        * 1.15;
    let (lo, hi) = (
        *counts.iter().min().unwrap_or(&10) as f64 / 1.6,
        *counts.iter().max().unwrap_or(&100_000) as f64 * 1.6,
    );
    let root = BitMapBackend::new(path, (1400, 850)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "New TCP connections per second, pod -> ClusterIP on another node (higher is better)",
            (FAMILY, 30),
        )
        .margin(25)
        .x_label_area_size(70)
        .y_label_area_size(110)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(format!(
            "services programmed (3 endpoints each; the measured one last) - {samples}"
        ))
        .y_desc("connections/s (connect, 64 B request/response, close)")
        .x_label_formatter(&|v| count(*v as usize))
        .y_label_formatter(&|v| human(*v))
        .label_style((FAMILY, 20))
        .axis_desc_style((FAMILY, 22))
        .draw()
        .map_err(err)?;
    if let Some((name, v)) = baseline {
        chart
            .draw_series(LineSeries::new(
                vec![(lo, v), (hi, v)],
                BLACK.mix(0.45).stroke_width(2),
            ))
            .map_err(err)?
            .label(name)
            .legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.45).stroke_width(2))
            });
    }
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        // Sizes without a point say why in the legend.
        let missing: Vec<String> = counts
            .iter()
            .filter(|&&n| {
                rows.iter().any(|r| {
                    r.section == Section::Services
                        && r.subject == *name
                        && r.case == case(n)
                        && r.metric == metric
                        && matches!(r.outcome, Outcome::Skipped(_) | Outcome::Failed(_))
                })
            })
            .map(|&n| count(n))
            .collect();
        let label = if pts.is_empty() && missing.is_empty() {
            format!("{name}: not measured on this build")
        } else if missing.is_empty() {
            name.to_string()
        } else {
            format!(
                "{name} (no point at {}: not measured, see table)",
                missing.join(", ")
            )
        };
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, p.2)),
                color.stroke_width(4),
            ))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(4))
            });
        chart
            .draw_series(
                pts.iter()
                    .map(|p| ErrorBar::new_vertical(p.0, p.1, p.2, p.3, color.stroke_width(2), 14)),
            )
            .map_err(err)?;
        chart
            .draw_series(
                pts.iter()
                    .map(|p| Circle::new((p.0, p.2), 7, color.filled())),
            )
            .map_err(err)?;
        chart
            .draw_series(pts.iter().map(|p| {
                Text::new(
                    human(p.2),
                    (p.0 * 1.08, p.2 + ymax * 0.015),
                    (FAMILY, 18).into_font().color(&color),
                )
            }))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .label_font((FAMILY, 22))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present()
        .map_err(err)
        .with_context(|| format!("writing {}", path.display()))
}

/// Horizontal bars, one per subject, for each (case, metric) panel stacked vertically.
pub fn bars(
    path: &Path,
    title: &str,
    rows: &[Row],
    section: Section,
    subjects: &[&str],
    panels: &[(&str, &str)],
) -> Result<()> {
    load_font()?;
    let root = BitMapBackend::new(path, (1400, 430 * panels.len() as u32 + 60)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, (FAMILY, 30)).map_err(err)?;
    for (area, (case, axis)) in root.split_evenly((panels.len(), 1)).iter().zip(panels) {
        let values: Vec<Option<(f64, f64, f64)>> = subjects
            .iter()
            .map(|s| {
                rows.iter()
                    .find(|r| r.section == section && r.subject == *s && r.case == *case)
                    .and_then(Row::stats)
                    .map(|st| (st.min(), st.median(), st.max()))
            })
            .collect();
        let xmax = values.iter().flatten().map(|v| v.2).fold(1e-9f64, f64::max) * 1.25;
        let n = subjects.len();
        let mut chart = ChartBuilder::on(area)
            .caption(*case, (FAMILY, 24))
            .margin(15)
            .x_label_area_size(55)
            .y_label_area_size(360)
            // Discrete ranges include their end: n segments, the first subject on top.
            .build_cartesian_2d(0f64..xmax, (0..n.saturating_sub(1)).into_segmented())
            .map_err(err)?;
        let names: Vec<String> = subjects.iter().map(|s| s.to_string()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc(*axis)
            .x_label_formatter(&|v| human(*v))
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) if *i < n => names[n - 1 - i].clone(),
                _ => String::new(),
            })
            .y_labels(n)
            .label_style((FAMILY, 19))
            .axis_desc_style((FAMILY, 20))
            .draw()
            .map_err(err)?;
        for (k, (s, v)) in subjects.iter().zip(&values).enumerate() {
            let i = n - 1 - k;
            let color = if s.starts_with("netdp") {
                PALETTE[0]
            } else if s.starts_with("bare") {
                RGBColor(120, 120, 120)
            } else {
                PALETTE[2]
            };
            match v {
                Some((min, med, max)) => {
                    chart
                        .draw_series(std::iter::once(Rectangle::new(
                            [
                                (0.0, SegmentValue::Exact(i)),
                                (*med, SegmentValue::Exact(i + 1)),
                            ],
                            color.mix(0.85).filled(),
                        )))
                        .map_err(err)?;
                    chart
                        .draw_series(std::iter::once(PathElement::new(
                            vec![
                                (*min, SegmentValue::CenterOf(i)),
                                (*max, SegmentValue::CenterOf(i)),
                            ],
                            BLACK.stroke_width(2),
                        )))
                        .map_err(err)?;
                    chart
                        .draw_series(std::iter::once(Text::new(
                            human(*med),
                            (max + xmax * 0.01, SegmentValue::CenterOf(i)),
                            (FAMILY, 19),
                        )))
                        .map_err(err)?;
                }
                None => {
                    chart
                        .draw_series(std::iter::once(Text::new(
                            "not measured on this build",
                            (xmax * 0.01, SegmentValue::CenterOf(i)),
                            (FAMILY, 19).into_font().color(&RGBColor(120, 120, 120)),
                        )))
                        .map_err(err)?;
                }
            }
        }
    }
    root.present()
        .map_err(err)
        .with_context(|| format!("writing {}", path.display()))
}
