//! Plain-text tables for what a scenario measured.

use std::fmt::Write;
use std::time::Duration;

/// A table: a title, a header row, rows of cells.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub title: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: impl Into<String>, header: &[&str]) -> Self {
        Table { title: title.into(), header: header.iter().map(|h| (*h).to_owned()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.header.len();
        let width = |c: usize| self.rows.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).chain([self.header[c].chars().count()]).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns).map(width).collect();
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.title);
        let line = |cells: &[String]| {
            let mut text = String::from("|");
            for (c, w) in widths.iter().enumerate() {
                let cell = cells.get(c).map_or("", String::as_str);
                let _ = write!(text, " {cell:<w$} |");
            }
            text
        };
        let _ = writeln!(out, "{}", line(&self.header));
        let _ = writeln!(out, "|{}", widths.iter().map(|w| format!("{}|", "-".repeat(w + 2))).collect::<String>());
        for row in &self.rows {
            let _ = writeln!(out, "{}", line(row));
        }
        out
    }
}

/// A duration in milliseconds or seconds, as a person reads it.
pub fn human(duration: Duration) -> String {
    if duration < Duration::from_secs(10) { format!("{} ms", duration.as_millis()) } else { format!("{:.1} s", duration.as_secs_f64()) }
}

/// Whether a goal is met, as the table's last column says it.
pub fn verdict(met: bool) -> String {
    if met { "met".into() } else { "MISSED".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_lines_up() {
        let mut table = Table::new("t", &["a", "long header"]);
        table.row(vec!["wide cell".into(), "x".into()]);
        let text = table.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1].len(), lines[3].len());
        assert!(text.contains("| wide cell | x           |"));
        assert_eq!(human(Duration::from_millis(1500)), "1500 ms");
        assert_eq!(human(Duration::from_secs(12)), "12.0 s");
    }
}
