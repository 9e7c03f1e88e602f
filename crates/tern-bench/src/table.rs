//! Plain-text tables with aligned columns, for results printed on stdout and pasted into
//! the README as Markdown.

/// A table of strings; the first row is the header.
#[derive(Debug, Clone, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders as a Markdown table with padded columns (readable as plain text too).
    pub fn markdown(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let width = |c: usize| {
            self.rows
                .iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
                .max(3)
        };
        let widths: Vec<usize> = (0..cols).map(width).collect();
        let line = |r: &Vec<String>| {
            let cells: Vec<String> = (0..cols)
                .map(|c| {
                    let s = r.get(c).map_or("", String::as_str);
                    format!("{s:<w$}", w = widths[c])
                })
                .collect();
            format!("| {} |", cells.join(" | "))
        };
        let mut out = String::new();
        for (i, r) in self.rows.iter().enumerate() {
            out.push_str(&line(r));
            out.push('\n');
            if i == 0 {
                let dashes: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
                out.push_str(&format!("| {} |\n", dashes.join(" | ")));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_aligned_markdown() {
        let mut t = Table::new(&["runner", "median"]);
        t.row(vec!["native".into(), "0.70 ms".into()]);
        assert_eq!(
            t.markdown(),
            "| runner | median  |\n| ------ | ------- |\n| native | 0.70 ms |\n"
        );
    }
}
