//! `--svg`: contended grants/s and p99 wait against the number of workers.
//!
//! Written by hand: two polylines with labelled axes are a few lines of SVG, while plotters
//! needs a font stack (font-kit and the system's fontconfig) just to lay out its labels.

use std::fmt::Write;

use super::stats::Row;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const MARGIN: f64 = 70.0;

/// The chart for every contended row (plain and fair), as an SVG document.
pub fn contended_chart(rows: &[Row]) -> String {
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let series: Vec<(&str, &str, Vec<&Row>)> = [
        ("contended", "#1f77b4"),
        ("contended-fair", "#2ca02c"),
        ("contended-barging", "#d62728"),
    ]
    .into_iter()
    .map(|(name, color)| {
        (
            name,
            color,
            rows.iter().filter(|r| r.workload == name).collect(),
        )
    })
    .filter(|(_, _, points): &(&str, &str, Vec<&Row>)| !points.is_empty())
    .collect();
    let max_workers = series
        .iter()
        .flat_map(|s| s.2.iter().map(|r| r.workers))
        .max()
        .unwrap_or(1);
    let floor = rows.first().map_or(0.0, |r| r.floor_cycle_per_sec);
    // 10% headroom above the highest point and the floor line the rates are judged by.
    let max_rate = series
        .iter()
        .flat_map(|s| s.2.iter().map(|r| r.ops_per_sec))
        .fold(floor.max(1.0), f64::max)
        * 1.1;
    let max_p99 = series
        .iter()
        .flat_map(|s| s.2.iter().map(|r| r.p99_us))
        .fold(1.0, f64::max)
        * 1.1;
    let x = |workers: usize| {
        MARGIN
            + (workers as f64).log2() / (max_workers as f64).log2().max(1.0)
                * (WIDTH - 2.0 * MARGIN)
    };
    let y = |value: f64, max: f64| HEIGHT - MARGIN - value / max * (HEIGHT - 2.0 * MARGIN);
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">dlock bench: contended \
         hand-off (floor cycle {floor:.0}/s)</text>",
        WIDTH / 2.0
    );
    // Axes and labels.
    let _ = writeln!(
        svg,
        "<path d=\"M{MARGIN},{MARGIN} V{b} H{r} M{r},{MARGIN} V{b}\" stroke=\"#333\" fill=\"none\"/>",
        b = HEIGHT - MARGIN,
        r = WIDTH - MARGIN
    );
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">workers</text>",
        WIDTH / 2.0,
        HEIGHT - 25.0
    );
    let _ = writeln!(svg, "<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {0})\" text-anchor=\"middle\">grants/s (solid)</text>", HEIGHT / 2.0);
    let _ = writeln!(svg, "<text x=\"{0}\" y=\"{1}\" transform=\"rotate(90 {0} {1})\" text-anchor=\"middle\">p99 wait, µs (dashed)</text>", WIDTH - 16.0, HEIGHT / 2.0);
    for step in 0..=4 {
        let share = f64::from(step) / 4.0;
        let at = y(share * max_rate, max_rate);
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{at:.1}\" text-anchor=\"end\" fill=\"#555\">{:.0}</text>",
            MARGIN - 6.0,
            share * max_rate
        );
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{at:.1}\" fill=\"#555\">{:.0}</text>",
            WIDTH - MARGIN + 6.0,
            share * max_p99
        );
        let _ = writeln!(
            svg,
            "<path d=\"M{MARGIN},{at:.1} H{}\" stroke=\"#eee\"/>",
            WIDTH - MARGIN
        );
    }
    let mut workers = 1;
    while workers <= max_workers {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{workers}</text>",
            x(workers),
            HEIGHT - MARGIN + 18.0
        );
        workers *= 2;
    }
    if floor > 0.0 && floor <= max_rate {
        let _ = writeln!(svg, "<path d=\"M{MARGIN},{0:.1} H{1}\" stroke=\"#999\" stroke-dasharray=\"2 3\"/><text x=\"{2}\" y=\"{3:.1}\" fill=\"#666\">floor cycle rate</text>", y(floor, max_rate), WIDTH - MARGIN, MARGIN + 4.0, y(floor, max_rate) - 4.0);
    }
    for (index, (name, color, points)) in series.iter().enumerate() {
        let line = |value: fn(&Row) -> f64, max: f64| {
            points
                .iter()
                .map(|r| format!("{:.1},{:.1}", x(r.workers), y(value(r), max)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            svg,
            "<polyline points=\"{}\" stroke=\"{color}\" stroke-width=\"2\" fill=\"none\"/>",
            line(|r| r.ops_per_sec, max_rate)
        );
        let _ = writeln!(svg, "<polyline points=\"{}\" stroke=\"{color}\" stroke-width=\"2\" stroke-dasharray=\"6 4\" fill=\"none\"/>", line(|r| r.p99_us, max_p99));
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"52\" fill=\"{color}\">— {name}</text>",
            MARGIN + 170.0 * index as f64
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bench::stats::Samples;

    #[test]
    fn the_chart_has_a_line_per_series_and_metric() {
        let rows: Vec<Row> = [1, 2, 4, 8]
            .into_iter()
            .map(|w| {
                Row::new(
                    "contended",
                    w,
                    1000,
                    Duration::from_secs(1),
                    Samples::default(),
                )
            })
            .collect();
        let svg = contended_chart(&rows);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
    }
}
