//! A cumulative distribution as an SVG chart (text, so no font or image library is needed
//! here; `simulations/plots.sh` turns it into the README's PNG).

use std::fmt::Write;
use std::time::Duration;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// [`cdf_svg`] written to `dir/file` (the directory made if need be); the error is one line
/// naming the file.
pub fn write_cdf(dir: &std::path::Path, file: &str, title: &str, of: &str, samples: &[Duration], goal: Option<(Duration, &str)>) -> Result<(), String> {
    let path = dir.join(file);
    std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, cdf_svg(title, of, samples, goal))).map_err(|error| format!("cannot write {}: {error}", path.display()))
}

/// The share of `samples` (of what: `of`) at or below each value, as a step line from 0 to 1, with a
/// vertical mark at `goal`. The x axis runs from zero to the larger of the largest sample and
/// the goal, in milliseconds.
pub fn cdf_svg(title: &str, of: &str, samples: &[Duration], goal: Option<(Duration, &str)>) -> String {
    let mut sorted: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    sorted.sort_by(f64::total_cmp);
    let largest = sorted.last().copied().unwrap_or(1.0).max(goal.map_or(0.0, |(g, _)| g.as_secs_f64() * 1000.0));
    let step = nice_step(largest / 8.0);
    let x_max = (largest / step).ceil().max(1.0) * step;
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let x = |ms: f64| LEFT + ms / x_max * plot_w;
    let y = |share: f64| TOP + (1.0 - share) * plot_h;
    let mut svg = String::new();
    let _ = writeln!(svg, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="DejaVu Sans, sans-serif" font-size="13">"#);
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(svg, r#"<text x="{}" y="28" text-anchor="middle" font-size="15">{}</text>"#, WIDTH / 2.0, escape(title));
    // Grid and ticks.
    for i in 0..=10 {
        let share = f64::from(i) / 10.0;
        let _ = writeln!(svg, r##"<line x1="{LEFT}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/>"##, LEFT + plot_w, y(share), y(share));
        if i % 2 == 0 {
            let _ = writeln!(svg, r#"<text x="{}" y="{:.1}" text-anchor="end">{:.0} %</text>"#, LEFT - 8.0, y(share) + 4.0, share * 100.0);
        }
    }
    let mut tick = 0.0;
    while tick <= x_max + step / 2.0 {
        let _ = writeln!(svg, r##"<line x1="{:.1}" x2="{:.1}" y1="{TOP}" y2="{}" stroke="#eee"/>"##, x(tick), x(tick), TOP + plot_h);
        let _ = writeln!(svg, r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#, x(tick), TOP + plot_h + 20.0, tick as u64);
        tick += step;
    }
    let _ = writeln!(svg, r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#);
    let _ = writeln!(svg, r#"<text x="{}" y="{}" text-anchor="middle">milliseconds</text>"#, LEFT + plot_w / 2.0, HEIGHT - 15.0);
    let _ = writeln!(svg, r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">share of {}</text>"#, TOP + plot_h / 2.0, TOP + plot_h / 2.0, escape(of));
    if let Some((goal, label)) = goal {
        let gx = x(goal.as_secs_f64() * 1000.0);
        let _ = writeln!(svg, r##"<line x1="{gx:.1}" x2="{gx:.1}" y1="{TOP}" y2="{}" stroke="#c33" stroke-dasharray="6 4"/>"##, TOP + plot_h);
        let _ = writeln!(svg, r##"<text x="{:.1}" y="{}" text-anchor="end" fill="#c33">{}</text>"##, gx - 6.0, TOP + 16.0, escape(label));
    }
    // The step line.
    let mut path = format!("M {:.1} {:.1}", x(0.0), y(0.0));
    let count = sorted.len().max(1) as f64;
    for (i, ms) in sorted.iter().enumerate() {
        let _ = write!(path, " H {:.1} V {:.1}", x(*ms), y((i + 1) as f64 / count));
    }
    let _ = write!(path, " H {:.1}", x(x_max));
    let _ = writeln!(svg, r##"<path d="{path}" fill="none" stroke="#1f5fbf" stroke-width="2"/>"##);
    svg.push_str("</svg>\n");
    svg
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let power = 10f64.powf(raw.max(1e-9).log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * power).find(|s| *s >= raw).unwrap_or(10.0 * power)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_climbs_to_every_sample_and_marks_the_goal() {
        let samples: Vec<Duration> = [100u64, 300, 200, 400].iter().map(|ms| Duration::from_millis(*ms)).collect();
        let svg = cdf_svg("spread <1 000>", "devices", &samples, Some((Duration::from_millis(500), "goal")));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("spread &lt;1 000&gt;"));
        // Four steps, a quarter each, and the goal's dashed line.
        assert_eq!(svg.matches(" V ").count(), 4);
        assert!(svg.contains("stroke-dasharray"));
        assert_eq!(nice_step(62.5), 100.0);
        assert_eq!(nice_step(0.3), 0.5);
    }
}
