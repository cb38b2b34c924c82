//! The explore report: PNG charts (plotters) and one self-contained HTML page.
//!
//! The charts are written beside the page and also embedded in it (base64), so the page opens in
//! a browser from the report folder or straight out of the artifact store, where it is kept with
//! the run. Fonts come from the `dejavu` crate: nothing depends on the fonts a machine has.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Once;

use base64::Engine;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::steps::explore::{Exploration, percentiles};

/// The report's files.
#[derive(Debug, Clone)]
pub struct Report {
    /// The HTML page.
    pub html: PathBuf,
    /// The charts.
    pub charts: Vec<PathBuf>,
}

fn register_fonts() {
    static FONTS: Once = Once::new();
    FONTS.call_once(|| {
        // A font that fails to load only costs the charts their labels.
        if plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).is_err() {
            tracing::warn!("could not load the chart font; charts will have no labels");
        }
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

/// Draws a bar chart of `counts` over categorical `labels` into a PNG at `path`.
pub fn bar_chart(path: &Path, title: &str, x_label: &str, labels: &[String], counts: &[u64]) -> anyhow::Result<()> {
    register_fonts();
    let root = BitMapBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = counts.iter().copied().max().unwrap_or(0).max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22).into_font().style(FontStyle::Bold))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(56)
        .build_cartesian_2d(
            (0..labels.len().saturating_sub(1)).into_segmented(),
            0u64..top + top / 10 + 1,
        )?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc(x_label)
        .y_desc("documents")
        .x_labels(labels.len())
        .x_label_formatter(&|segment| match segment {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .draw()?;
    let color = RGBColor(0x3b, 0x6e, 0xa8);
    chart.draw_series(counts.iter().enumerate().map(|(i, &count)| {
        let mut bar = Rectangle::new(
            [(SegmentValue::Exact(i), 0), (SegmentValue::Exact(i + 1), count)],
            color.filled(),
        );
        bar.set_margin(0, 0, 6, 6);
        bar
    }))?;
    root.present()?;
    Ok(())
}

/// Draws `series` (name, points) as lines over a shared x axis into a PNG at `path`.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    register_fonts();
    let points = || series.iter().flat_map(|(_, p)| p.iter().copied());
    let (x_max, y_max) = points().fold((1.0f64, 0.0f64), |(x, y), (px, py)| (x.max(px), y.max(py)));
    let y_min = points().map(|(_, y)| y).fold(f64::INFINITY, f64::min).min(y_max);
    let y_min = if y_min.is_finite() { (y_min * 0.9).max(0.0) } else { 0.0 };
    let root = BitMapBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22).into_font().style(FontStyle::Bold))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..x_max, y_min..(y_max * 1.05).max(y_min + 1e-3))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .draw()?;
    let colors = [
        RGBColor(0x3b, 0x6e, 0xa8),
        RGBColor(0xd9, 0x5f, 0x02),
        RGBColor(0x1b, 0x9e, 0x77),
    ];
    for (i, (name, points)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    root.present()?;
    Ok(())
}

/// Draws one group of bars per label, one bar per series (values from 0 to 1, e.g. scores).
pub fn grouped_bars(path: &Path, title: &str, labels: &[String], series: &[(&str, Vec<f64>)]) -> anyhow::Result<()> {
    register_fonts();
    let root = BitMapBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max)
        .max(0.01);
    let slots = series.len().max(1) + 1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22).into_font().style(FontStyle::Bold))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..(labels.len() * slots) as f64, 0f64..top * 1.15)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .label_style(("sans-serif", 13))
        .draw()?;
    let colors = [
        RGBColor(0x3b, 0x6e, 0xa8),
        RGBColor(0xd9, 0x5f, 0x02),
        RGBColor(0x1b, 0x9e, 0x77),
    ];
    for (s, (name, values)) in series.iter().enumerate() {
        let color = colors[s % colors.len()];
        chart
            .draw_series(values.iter().enumerate().map(|(g, &v)| {
                let x = (g * slots + s) as f64 + 0.5;
                Rectangle::new([(x, 0.0), (x + 0.9, v)], color.filled())
            }))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    for (g, label) in labels.iter().enumerate() {
        let x = (g * slots) as f64 + 0.5;
        chart.draw_series(std::iter::once(Text::new(
            label.clone(),
            (x, top * 1.1),
            ("sans-serif", 14),
        )))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    root.present()?;
    Ok(())
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn table(out: &mut String, headers: &[&str], rows: impl IntoIterator<Item = Vec<String>>) {
    out.push_str("<table><thead><tr>");
    for header in headers {
        let _ = write!(out, "<th>{}</th>", escape(header));
    }
    out.push_str("</tr></thead><tbody>");
    let mut any = false;
    for row in rows {
        any = true;
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(&cell));
        }
        out.push_str("</tr>");
    }
    if !any {
        let _ = write!(out, "<tr><td colspan=\"{}\"><em>none</em></td></tr>", headers.len());
    }
    out.push_str("</tbody></table>");
}

/// Writes the charts and the HTML page into `dir`.
pub fn write(dir: &Path, exploration: &Exploration, run_id: &str) -> anyhow::Result<Report> {
    std::fs::create_dir_all(dir)
        .map_err(|err| anyhow::anyhow!("cannot create the report folder {}: {err}", dir.display()))?;
    let length_png = dir.join("content-length.png");
    let quality_png = dir.join("quality.png");
    bar_chart(
        &length_png,
        "Content length",
        "words per document",
        &Exploration::length_labels(),
        &exploration.length_histogram(),
    )?;
    let quality_labels: Vec<String> = (0..10)
        .map(|i| format!("{:.1}-{:.1}", i as f64 / 10.0, (i + 1) as f64 / 10.0))
        .collect();
    bar_chart(
        &quality_png,
        "Quality score",
        "score (heuristic unless a judge scored it)",
        &quality_labels,
        &exploration.quality_histogram(),
    )?;

    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>engram corpus report, run {run}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}}\
         table{{border-collapse:collapse;margin:0.5em 0 1.5em}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:left}}\
         th{{background:#f3f3f3}}img{{max-width:100%;border:1px solid #ddd}}.num{{font-variant-numeric:tabular-nums}}</style>\
         </head><body><h1>Corpus report</h1><p>Run <code>{run}</code>: {total} documents.</p>",
        run = escape(run_id),
        total = exploration.total
    );

    html.push_str("<h2>Sources</h2>");
    table(
        &mut html,
        &["source", "documents"],
        exploration
            .by_source
            .iter()
            .map(|(s, n)| vec![s.clone(), n.to_string()]),
    );

    let words: Vec<f64> = exploration.words.iter().map(|&w| w as f64).collect();
    html.push_str("<h2>Distributions</h2>");
    let row = |name: &str, p: Option<crate::steps::explore::Percentiles>, digits: usize| match p {
        Some(p) => vec![
            name.to_string(),
            format!("{:.*}", digits, p.min),
            format!("{:.*}", digits, p.p10),
            format!("{:.*}", digits, p.p50),
            format!("{:.*}", digits, p.p90),
            format!("{:.*}", digits, p.max),
        ],
        None => vec![
            name.to_string(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ],
    };
    table(
        &mut html,
        &["", "min", "p10", "median", "p90", "max"],
        [
            row("words", percentiles(&words), 0),
            row("quality", percentiles(&exploration.quality), 3),
        ],
    );
    for (png, alt) in [
        (&length_png, "Histogram of content length"),
        (&quality_png, "Histogram of quality score"),
    ] {
        let bytes = std::fs::read(png)?;
        let _ = write!(
            html,
            "<p><img alt=\"{alt}\" src=\"data:image/png;base64,{}\"></p>",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        );
    }
    let _ = write!(html, "<p>{} documents have no quality score.</p>", exploration.unscored);
    table(
        &mut html,
        &["scorer", "documents"],
        exploration.scorers.iter().map(|(s, n)| vec![s.clone(), n.to_string()]),
    );

    if !exploration.judged.is_empty() {
        html.push_str("<h2>Judged documents</h2><p>The teacher's rating (0 to 1) is the score `filter` uses; the heuristic's is beside it.</p>");
        table(
            &mut html,
            &["document", "heuristic", "judge", "scorer", "reason"],
            exploration.judged.iter().map(|j| {
                vec![
                    j.title.clone(),
                    format!("{:.2}", j.heuristic),
                    format!("{:.2}", j.score),
                    j.scorer.clone(),
                    j.reason.clone(),
                ]
            }),
        );
    }

    html.push_str("<h2>Top domains (crawled pages)</h2>");
    table(
        &mut html,
        &["domain", "documents"],
        exploration
            .top_domains
            .iter()
            .take(20)
            .map(|(d, n)| vec![d.clone(), n.to_string()]),
    );
    html.push_str("<h2>Languages</h2>");
    table(
        &mut html,
        &["language (ISO 639-3)", "documents"],
        exploration
            .languages
            .iter()
            .map(|(l, n)| vec![l.clone(), n.to_string()]),
    );

    html.push_str("<h2>Failed crawls</h2>");
    match &exploration.crawl_run {
        Some(run) => {
            let _ = write!(
                html,
                "<p>Latest crawl (run <code>{}</code>): {} fetched, {} failed.</p>",
                escape(run),
                exploration.crawled_ok,
                exploration.failed_crawls.len()
            );
        }
        None => html.push_str("<p>No crawl has run yet.</p>"),
    }
    table(
        &mut html,
        &["url", "status", "attempts", "reason"],
        exploration.failed_crawls.iter().map(|o| {
            vec![
                o.url.clone(),
                o.status.map_or("-".into(), |s| s.to_string()),
                o.attempts.to_string(),
                o.reason.clone().unwrap_or_default(),
            ]
        }),
    );
    html.push_str("</body></html>\n");

    let page = dir.join("index.html");
    std::fs::write(&page, html)?;
    Ok(Report {
        html: page,
        charts: vec![length_png, quality_png],
    })
}
