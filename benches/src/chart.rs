//! The PNG bar chart of a comparison (plotters, bitmap backend).
//!
//! plotters' default text backend needs fontconfig and freetype at build time, so we use its
//! pure-Rust `ab_glyph` backend with a TrueType file loaded at run time: `$PODVAULT_BENCH_FONT`,
//! else DejaVu Sans or Liberation Sans from their Debian packages (`fonts-dejavu-core`,
//! `fonts-liberation`). With no font found the chart is drawn without text.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::stats::{Metric, Phase, Results};

const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
];

const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];

/// Registers a TrueType font as "sans-serif" once; returns whether text can be drawn.
pub fn load_font() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        let candidates = std::env::var("PODVAULT_BENCH_FONT")
            .ok()
            .into_iter()
            .chain(FONT_PATHS.iter().map(|s| s.to_string()));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                // plotters keeps fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Draws wall time and peak RSS per phase, one bar per tool, into `path`.
pub fn draw(results: &Results, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let labels = load_font();
    let root = BitMapBackend::new(path, (1280, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = if labels {
        root.titled(
            &format!(
                "{}{}: {:.0} MiB, {} files (medians of {} runs)",
                results.dataset,
                if results.backend.is_empty() {
                    String::new()
                } else {
                    format!(" on {}", results.backend)
                },
                results.source_bytes as f64 / 1048576.0,
                results.source_files,
                results.runs()
            ),
            ("sans-serif", 24),
        )?
    } else {
        root
    };
    if results.has_traffic() {
        let panels = root.split_evenly((1, 3));
        panel(results, &panels[0], Metric::Wall, "wall time, s", labels)?;
        panel(results, &panels[1], Metric::Rss, "peak RSS, MiB", labels)?;
        panel(
            results,
            &panels[2],
            Metric::RequestsTotal,
            "S3 requests",
            labels,
        )?;
    } else {
        let panels = root.split_evenly((1, 2));
        panel(results, &panels[0], Metric::Wall, "wall time, s", labels)?;
        panel(results, &panels[1], Metric::Rss, "peak RSS, MiB", labels)?;
    }
    root.present()?;
    Ok(())
}

fn panel(
    results: &Results,
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    metric: Metric,
    title: &str,
    labels: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let phases = Phase::ALL;
    let n = results.tools.len().max(1);
    let ymax = phases
        .iter()
        .flat_map(|&p| results.tools.iter().map(move |t| (p, t)))
        .filter_map(|(p, t)| results.median(t, p, metric))
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.15;
    let mut builder = ChartBuilder::on(area);
    builder.margin(14);
    if labels {
        builder
            .caption(title, ("sans-serif", 20))
            .x_label_area_size(34)
            .y_label_area_size(56);
    }
    let mut chart = builder.build_cartesian_2d(0f64..phases.len() as f64, 0f64..ymax)?;
    if labels {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .x_label_formatter(&|_| String::new())
            .y_desc(title)
            .label_style(("sans-serif", 14))
            .draw()?;
    }
    let width = 0.8 / n as f64;
    for (ti, tool) in results.tools.iter().enumerate() {
        let color = COLORS[ti % COLORS.len()];
        let bars = phases.iter().enumerate().filter_map(|(pi, &p)| {
            let v = results.median(tool, p, metric)?;
            let x0 = pi as f64 + 0.1 + ti as f64 * width;
            Some(Rectangle::new(
                [(x0, 0.0), (x0 + width * 0.92, v)],
                color.filled(),
            ))
        });
        let series = chart.draw_series(bars)?;
        if labels {
            series.label(tool.as_str()).legend(move |(x, y)| {
                Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
            });
        }
    }
    if labels {
        for (pi, p) in phases.iter().enumerate() {
            chart.draw_series(std::iter::once(Text::new(
                p.short(),
                (pi as f64 + 0.5, 0.0),
                ("sans-serif", 15).into_font().color(&BLACK).pos(
                    plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Center,
                        plotters::style::text_anchor::VPos::Top,
                    ),
                ),
            )))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    Ok(())
}
