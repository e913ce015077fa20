//! The progress display: an indicatif bar for a person at a terminal, a log line every ten
//! seconds for cron, or nothing. Owns the bar's look (two lines that fit any width: the bar
//! stretches, the status line is cut rather than wrapped) and the one bar a signal handler
//! may need to clear before it speaks.

use std::io::{self, IsTerminal};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{HumanCount, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::stats::Stats;

/// Line 1: time, a bar as wide as the terminal leaves room for, the percentage, the pace
/// ([`pace`]) and the ETA.
/// Line 2: the status ([`status`]), cut to the width, never wrapped. The rows done are in the
/// status, not the template: a frame drawn between two updates of the bar (its ticker runs
/// on a thread of its own) would otherwise show a count and an ok figure one row apart.
const TEMPLATE: &str = "{elapsed_precise} {wide_bar:.cyan/blue} {percent:>3}%  {prefix}  ETA {eta}\n\
                        {wide_msg}";

/// The bar currently drawn, so that a signal handler can clear it before printing (see
/// [`above_the_bar`]). At most one run per process draws a bar.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// How progress is shown.
pub enum Progress {
    /// An indicatif bar on stderr, for a person at a terminal.
    Bar(ProgressBar),
    /// A tracing info line every ten seconds, for cron logs.
    Log,
    /// Nothing (tests, `-q`).
    Hidden,
}

impl Progress {
    /// A bar when stderr is a terminal, log lines otherwise.
    pub fn detect(quiet: bool) -> Self {
        if quiet {
            Progress::Hidden
        } else if io::stderr().is_terminal() {
            let bar = styled(ProgressBar::with_draw_target(
                None,
                ProgressDrawTarget::stderr(),
            ));
            bar.enable_steady_tick(Duration::from_millis(500));
            if let Ok(mut active) = ACTIVE.lock() {
                *active = Some(bar.clone());
            }
            Progress::Bar(bar)
        } else {
            Progress::Log
        }
    }

    /// Clears the bar at the end of the run, so the summary starts on a clean line.
    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
            if let Ok(mut active) = ACTIVE.lock() {
                *active = None;
            }
        }
    }
}

/// `bar` with dashbatch's look.
pub fn styled(bar: ProgressBar) -> ProgressBar {
    bar.set_style(
        ProgressStyle::with_template(TEMPLATE)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("█▉▊▋▌▍▎▏ "),
    );
    bar
}

/// Runs `say` (which prints to stderr) with the bar, if one is drawn, cleared first and
/// drawn again below after: printed while the bar redraws, the message would be torn or
/// repeated under every redraw. The bar goes on showing the rows that drain.
pub fn above_the_bar(say: impl FnOnce()) {
    let bar = ACTIVE.lock().ok().and_then(|active| active.clone());
    match bar {
        Some(bar) => bar.suspend(say),
        None => say(),
    }
}

/// The status line, with thousands separators:
/// `1,234/4,000 rows  ok 1,230  failed 4  retries 3  429s 2  paced qwen-vl-max 18/s`. `to_do` is the rows this run
/// has to do: a resumed run's skipped rows are not in it.
pub fn status(stats: &Stats, to_do: u64) -> String {
    let mut line = format!(
        "{}/{} rows  ok {}  failed {}",
        HumanCount(stats.rows_done()),
        HumanCount(to_do),
        HumanCount(stats.rows_ok),
        HumanCount(stats.rows_failed),
    );
    let retries: u64 = stats.retries.values().sum();
    if retries > 0 {
        line.push_str(&format!("  retries {}", HumanCount(retries)));
    }
    if stats.throttled_seen > 0 {
        line.push_str(&format!("  429s {}", HumanCount(stats.throttled_seen)));
    }
    // Last: the line is cut at the terminal's width, and with many models this is longest.
    if !stats.model_pace.is_empty() {
        let paces: Vec<String> = stats
            .model_pace
            .iter()
            .map(|(model, per_s)| format!("{model} {}", calls(*per_s)))
            .collect();
        line.push_str(&format!("  paced {}", paces.join(", ")));
    }
    line
}

/// `18/s`, `2.5/s`: a model's pace in calls a second.
fn calls(per_s: f64) -> String {
    if per_s >= 10.0 {
        format!("{per_s:.0}/s")
    } else {
        format!("{per_s:.1}/s")
    }
}

/// The pace, beside the bar: `141 rows/s  16 in flight`.
pub fn pace(stats: &Stats, in_flight: u64, elapsed: Duration) -> String {
    format!(
        "{}  {} in flight",
        rate(per_second(stats.rows_done(), elapsed)),
        HumanCount(in_flight)
    )
}

/// Rows per second of `elapsed`, 0 before any time has passed.
pub fn per_second(rows: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { rows as f64 / secs } else { 0.0 }
}

/// `141 rows/s`, `2.5 rows/s`: one decimal only where it says something.
pub fn rate(per_s: f64) -> String {
    if per_s >= 10.0 {
        format!("{per_s:.0} rows/s")
    } else {
        format!("{per_s:.1} rows/s")
    }
}

#[cfg(test)]
pub(super) use screen::Screen;

#[cfg(test)]
mod screen {
    use indicatif::TermLike;
    use std::io;
    use std::sync::{Arc, Mutex};

    /// A terminal of a given width that keeps what is drawn on it.
    #[derive(Debug, Clone)]
    pub struct Screen {
        pub width: u16,
        pub text: Arc<Mutex<String>>,
    }

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            self.width
        }
        fn move_cursor_up(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> io::Result<()> {
            let mut text = self.text.lock().unwrap();
            text.push_str(s);
            text.push('\n');
            Ok(())
        }
        /// indicatif writes each line of a frame with one call, padded to the width.
        fn write_str(&self, s: &str) -> io::Result<()> {
            self.write_line(s)
        }
        fn clear_line(&self) -> io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The lines a bar draws at `width` columns, mid-way through a big, troubled run.
    fn render(width: u16) -> Vec<String> {
        let screen = Screen {
            width,
            text: Arc::default(),
        };
        let bar = styled(ProgressBar::with_draw_target(
            Some(1_000_000),
            ProgressDrawTarget::term_like(Box::new(screen.clone())),
        ));
        bar.set_position(456_789);
        let mut stats = Stats {
            rows_ok: 456_000,
            rows_failed: 789,
            throttled_seen: 12_345,
            ..Stats::default()
        };
        stats.retries.insert("throttled", 12_345);
        stats.model_pace.insert("qwen-vl-max".into(), 18.2);
        stats.model_pace.insert("qwen-vl-plus".into(), 2.54);
        bar.set_message(status(&stats, 1_000_000));
        bar.set_prefix(pace(&stats, 64, Duration::from_secs(3_000)));
        bar.force_draw();
        let text = screen.text.lock().unwrap().clone();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| console_width(l).to_string() + "|" + l)
            .collect()
    }

    /// Columns a line takes (the bar's blocks are one column each; no colour in a fake term).
    fn console_width(line: &str) -> usize {
        line.chars().count()
    }

    #[test]
    fn the_bar_fits_80_columns_and_stretches_at_160() {
        for width in [80u16, 160] {
            let all = render(width);
            // Every frame drawn fits; the last frame (two lines) shows the figures.
            for line in &all {
                let (cols, text) = line.split_once('|').unwrap();
                let cols: usize = cols.parse().unwrap();
                assert!(cols <= usize::from(width), "{cols} > {width}: {text}");
            }
            let lines = &all[all.len() - 2..];
            assert!(
                lines[0].contains("%  152 rows/s  64 in flight  ETA "),
                "{lines:#?}"
            );
            assert!(
                lines[1].contains("|456,789/1,000,000 rows  ok 456,000  failed 789  retries"),
                "{lines:#?}"
            );
            assert!(lines[1].contains("429s 12,345"), "{lines:#?}");
            assert!(
                lines[1].contains("paced qwen-vl-max 18/s, qwen-vl-plus 2.5/s")
                    || (width < 120 && !lines[1].contains("paced q")),
                "{lines:#?}"
            );
        }
        let bar_cells =
            |lines: Vec<String>| lines[lines.len() - 2].chars().filter(|c| *c == '█').count();
        assert!(
            bar_cells(render(160)) > 2 * bar_cells(render(80)),
            "the bar uses the width"
        );
    }

    #[test]
    fn rates_have_a_unit_and_at_most_one_decimal() {
        assert_eq!(rate(141.1387), "141 rows/s");
        assert_eq!(rate(2.5349), "2.5 rows/s");
        assert_eq!(rate(0.0), "0.0 rows/s");
    }
}
