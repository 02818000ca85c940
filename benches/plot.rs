//! The side-by-side plot: p99 latency (log scale) against offered messages
//! per second, one line per server, drawn with plotters from the load
//! driver's RESULT lines.
//!
//!   cargo bench --bench plot -- benches/results/results.jsonl benches/results/latency.svg
//!
//! Run bare (as `cargo test --all-targets` does) it draws a sample into a
//! temporary file and checks what it wrote.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

type Series = BTreeMap<String, Vec<(f64, f64)>>;

/// Rate runs per label: (offered msg/s, p99 ms), in file order of labels.
fn series(jsonl: &str) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut order = Vec::new();
    let mut by: Series = BTreeMap::new();
    for line in jsonl.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(r) = serde_json::from_str::<serde_json::Value>(line) else {
            eprintln!("plot: skipping a line that is not JSON");
            continue;
        };
        let offered = r["offered_per_sec"].as_f64().unwrap_or(0.0);
        if r["scenario"] != "messages" || offered <= 0.0 {
            continue;
        }
        let (Some(label), Some(p99)) = (r["label"].as_str(), r["p99_ms"].as_f64()) else {
            continue;
        };
        if !by.contains_key(label) {
            order.push(label.to_string());
        }
        by.entry(label.to_string())
            .or_default()
            .push((offered, p99.max(0.01)));
    }
    order
        .into_iter()
        .map(|l| {
            let mut pts = by.remove(&l).unwrap_or_default();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (l, pts)
        })
        .collect()
}

fn draw(
    series: &[(String, Vec<(f64, f64)>)],
    out: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let pts = || series.iter().flat_map(|(_, p)| p.iter());
    let xmax = pts().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let ymax = pts().map(|p| p.1).fold(1.0, f64::max) * 2.0;
    let ymin = pts().map(|p| p.1).fold(ymax, f64::min).min(0.5) / 2.0;
    let root = SVGBackend::new(out, (760, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "p99 latency against offered load (TLS, this machine)",
            ("sans-serif", 18),
        )
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..xmax, (ymin..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("offered messages per second")
        .y_desc("p99 latency, ms (log scale)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y}"))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .draw()?;
    for (i, (label, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::MiddleRight)
        .background_style(WHITE.mix(0.5))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if let [input, output] = args.as_slice() {
        let text = match std::fs::read_to_string(input) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("plot: cannot read {input}: {e}");
                std::process::exit(1);
            }
        };
        let s = series(&text);
        if let Err(e) = draw(&s, Path::new(output)) {
            eprintln!("plot: {e}");
            std::process::exit(1);
        }
        eprintln!("plot: {} series written to {output}", s.len());
        return;
    }
    // Bare run: a sample, drawn and checked.
    let sample = [
        r#"{"label":"a","scenario":"messages","offered_per_sec":1000,"p99_ms":0.8}"#,
        r#"{"label":"a","scenario":"messages","offered_per_sec":5000,"p99_ms":1.5}"#,
        r#"{"label":"a","scenario":"idle","sessions":10}"#,
        r#"{"label":"b","scenario":"messages","offered_per_sec":1000,"p99_ms":20.0}"#,
        "not json",
    ]
    .join("\n");
    let s = series(&sample);
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].1, vec![(1000.0, 0.8), (5000.0, 1.5)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("latency.svg");
    draw(&s, &out).expect("draw");
    let svg = std::fs::read_to_string(&out).expect("svg written");
    assert!(svg.starts_with("<svg"), "not an SVG");
    assert!(svg.contains("offered messages per second"));
    assert!(
        svg.contains("\na\n</text>") && svg.contains("\nb\n</text>"),
        "legend missing"
    );
    eprintln!("plot: sample drawn ({} bytes)", svg.len());
}
