//! What a command has to say, as data. Commands fill a [`Report`]; the binary prints it, so one
//! writer owns stdout and stderr, `-q` and `-v` are applied in one place, and a command's output
//! can be checked without capturing a terminal.

use std::fmt::Display;
use std::io::Write;

use zeroize::Zeroizing;

use crate::catalogue;

/// One thing a command says, in the order it said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// Progress or success (stdout); `-q` silences it.
    Said(String),
    /// Files written, each after a verb (`created pki/kubernetes/ca.pem`); `-q` silences them,
    /// and on a terminal a long list becomes a summary per group of directories unless `-v`.
    Files { verb: String, files: Vec<String> },
    /// What was asked for: a table, a kubeconfig, a dry run's plan (stdout, even with `-q`).
    /// Zeroized when dropped: a kubeconfig holds a private key.
    Output(Zeroizing<String>),
    /// Valid but probably not meant, or needing the user's action (stderr, even with `-q`).
    Warning(String),
    /// What the user should know about how a check was made (stderr); `-q` silences it, so a
    /// quiet check prints only its problems and warnings.
    Note(String),
}

/// Everything a command says, and whether a check found something that needs action.
#[derive(Debug, Default)]
pub struct Report {
    lines: Vec<Line>,
    /// A check (`status`, `verify`) found something to act on: the exit status is 1.
    pub needs_action: bool,
}

/// How the binary prints a report.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// `-q`: no progress or success lines.
    pub quiet: bool,
    /// `-v`: every file written, also where a summary would do.
    pub verbose: bool,
    /// stdout is a terminal: long lists of files are summarized there.
    pub terminal: bool,
}

/// How many files a terminal lists one per line before it gets a summary instead.
const LIST_LIMIT: usize = 40;

impl Report {
    /// A progress or success line.
    pub fn say(&mut self, line: impl Display) {
        self.lines.push(Line::Said(line.to_string()));
    }

    /// A warning.
    pub fn warn(&mut self, line: impl Display) {
        self.lines.push(Line::Warning(line.to_string()));
    }

    /// A note on how a check was made.
    pub fn note(&mut self, line: impl Display) {
        self.lines.push(Line::Note(line.to_string()));
    }

    /// Requested output, printed as it is.
    pub fn output(&mut self, text: impl Into<Zeroizing<String>>) {
        self.lines.push(Line::Output(text.into()));
    }

    /// A step of a command: in a dry run the plan, which was asked for; otherwise progress.
    pub fn step(&mut self, dry_run: bool, line: impl Display) {
        match dry_run {
            true => self.output(format!("{line}\n")),
            false => self.say(line),
        }
    }

    /// `VERB FILE` for each of `files` (paths relative to the cluster directory).
    pub fn files(&mut self, verb: &str, files: Vec<String>) {
        if !files.is_empty() {
            let verb = verb.to_string();
            self.lines.push(Line::Files { verb, files });
        }
    }

    /// After a command failed: drops its progress and success lines. Every change is committed
    /// in one transaction at the end, so a failed command wrote nothing its lines could claim;
    /// its warnings and notes stay.
    pub fn failed(&mut self) {
        self.lines
            .retain(|l| matches!(l, Line::Warning(_) | Line::Note(_)));
    }

    /// What was said, in order.
    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    /// Writes the report: output and progress to `out`, warnings and notes to `err`, in the
    /// order they were said. `out` is buffered here and flushed before each line to `err` (and
    /// at the end): stdout is line-buffered even into a pipe, and `init` at 5,000 nodes lists
    /// 40,000 files, one `write` each. Once `out` is closed (`| head`), nothing more is written
    /// to it.
    pub fn print(&self, style: Style, out: &mut dyn Write, err: &mut dyn Write) {
        let mut out = Stdout {
            inner: std::io::BufWriter::new(out),
            open: true,
        };
        for line in &self.lines {
            match line {
                Line::Said(_) | Line::Files { .. } | Line::Note(_) if style.quiet => {}
                Line::Said(text) => out.line(text),
                Line::Files { verb, files } => {
                    for text in file_lines(style, verb, files) {
                        out.line(&text);
                    }
                }
                Line::Output(text) => out.unbuffered(text),
                // stderr is the last resort for a message: nowhere to report its failure.
                Line::Warning(text) => {
                    out.flush();
                    drop(writeln!(err, "kpki: warning: {text}"));
                }
                Line::Note(text) => {
                    out.flush();
                    drop(writeln!(err, "kpki: note: {text}"));
                }
            }
        }
        out.flush();
    }
}

/// The report's stdout: buffered, and silent from the first failed write on.
struct Stdout<'a> {
    inner: std::io::BufWriter<&'a mut dyn Write>,
    open: bool,
}

impl Stdout<'_> {
    fn write(&mut self, text: &str) {
        self.open = self.open && self.inner.write_all(text.as_bytes()).is_ok();
    }

    fn line(&mut self, text: &str) {
        self.write(text);
        self.write("\n");
    }

    fn flush(&mut self) {
        self.open = self.open && self.inner.flush().is_ok();
    }

    /// Requested output goes around the buffer: a kubeconfig holds a private key, and the
    /// buffer is not zeroized.
    fn unbuffered(&mut self, text: &str) {
        self.flush();
        self.open = self.open && self.inner.get_mut().write_all(text.as_bytes()).is_ok();
    }
}

/// `; did you mean "X"?` for the candidate closest to `word`, when one is close enough.
pub fn did_you_mean(word: &str, candidates: &[&str]) -> String {
    let mut scored: Vec<(f64, &str)> = candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), *c))
        .filter(|(score, _)| *score > 0.8)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    match scored.as_slice() {
        // Two equally close candidates: naming one would be a guess.
        [(best, _), (next, _), ..] if best == next => String::new(),
        [(_, c), ..] => format!("; did you mean \"{c}\"?"),
        [] => String::new(),
    }
}

/// The lines a list of files prints as: one per file, or on a terminal a summary of a long list.
fn file_lines(style: Style, verb: &str, files: &[String]) -> Vec<String> {
    if style.verbose || !style.terminal || files.len() <= LIST_LIMIT {
        return files.iter().map(|f| format!("{verb} {f}")).collect();
    }
    summary(verb, files)
        .into_iter()
        .map(|line| format!("{line} (-v lists them)"))
        .collect()
}

/// `files` (`pki/DIR/...`, `secrets/DIR/...`) in a few lines: those of the cluster's own
/// directories, then those of nodes, naming the first few nodes.
fn summary(verb: &str, files: &[String]) -> Vec<String> {
    let clusters = catalogue::cluster_dirs();
    let (mut shared, mut nodes) = (0, std::collections::BTreeMap::<&str, usize>::new());
    for file in files {
        let mut parts = file.splitn(3, '/');
        let (_, dir) = (parts.next(), parts.next().unwrap_or_default());
        match parts.next() {
            Some(_) if !clusters.contains(dir) => *nodes.entry(dir).or_default() += 1,
            _ => shared += 1,
        }
    }
    let mut lines = Vec::new();
    if shared > 0 {
        lines.push(format!(
            "{verb} {shared} files of the CAs, the service-account key and the cluster-wide certificates"
        ));
    }
    if !nodes.is_empty() {
        let names: Vec<String> = nodes.keys().map(|n| n.to_string()).collect();
        lines.push(format!(
            "{verb} {} files of {} nodes ({})",
            nodes.values().sum::<usize>(),
            nodes.len(),
            abbreviate(&names)
        ));
    }
    lines
}

/// The first few names of a list, for a summary line.
pub fn abbreviate(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
    match names.len() {
        n if n > 5 => format!("{}, and {} more", shown.join(", "), n - 5),
        _ => shown.join(", "),
    }
}

/// The width of each column of a table: its widest cell, header included.
pub fn widths<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> [usize; N] {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    widths
}

/// One line of a table: the cells padded to `widths`, two spaces apart.
pub fn table_line<const N: usize>(cells: [&str; N], widths: [usize; N]) -> String {
    let padded: Vec<String> = cells
        .iter()
        .zip(widths)
        .map(|(c, w)| format!("{c:<w$}"))
        .collect();
    padded.join("  ").trim_end().to_string() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printed(report: &Report, style: Style) -> (String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        report.print(style, &mut out, &mut err);
        let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8");
        (text(out), text(err))
    }

    const PLAIN: Style = Style {
        quiet: false,
        verbose: false,
        terminal: false,
    };

    fn sample() -> Report {
        let mut report = Report::default();
        report.say("progress");
        report.step(true, "would renew node-01/kubelet");
        report.warn("careful");
        report.note("unchecked");
        report.output("table\n".to_string());
        report
    }

    #[test]
    fn a_failed_command_keeps_only_its_warnings_and_notes() {
        let mut report = sample();
        report.failed();
        let (out, err) = printed(&report, PLAIN);
        assert_eq!(out, "");
        assert_eq!(err, "kpki: warning: careful\nkpki: note: unchecked\n");
    }

    #[test]
    fn quiet_keeps_output_plans_and_warnings_only() {
        let (out, err) = printed(
            &sample(),
            Style {
                quiet: true,
                ..PLAIN
            },
        );
        assert_eq!(out, "would renew node-01/kubelet\ntable\n");
        assert_eq!(err, "kpki: warning: careful\n");
        let (out, err) = printed(&sample(), PLAIN);
        assert_eq!(out, "progress\nwould renew node-01/kubelet\ntable\n");
        assert_eq!(err, "kpki: warning: careful\nkpki: note: unchecked\n");
    }

    #[test]
    fn long_lists_are_summarized_on_a_terminal_only() {
        let files: Vec<String> = (0..50)
            .map(|n| format!("pki/node-{n:02}/kubelet.pem"))
            .chain(["pki/kubernetes/ca.pem".to_string()])
            .collect();
        let mut report = Report::default();
        report.files("created", files);
        let terminal = Style {
            terminal: true,
            ..PLAIN
        };
        let (out, _) = printed(&report, terminal);
        assert_eq!(
            out,
            "created 1 files of the CAs, the service-account key and the cluster-wide certificates (-v lists them)\n\
             created 50 files of 50 nodes (node-00, node-01, node-02, node-03, node-04, and 45 more) (-v lists them)\n"
        );
        let verbose = Style {
            verbose: true,
            ..terminal
        };
        assert_eq!(printed(&report, verbose).0.lines().count(), 51);
        assert_eq!(printed(&report, PLAIN).0.lines().count(), 51);
    }

    #[test]
    fn a_closed_stdout_ends_the_output_quietly() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut err = Vec::new();
        sample().print(PLAIN, &mut Closed, &mut err);
        assert_eq!(
            err.len(),
            "kpki: warning: careful\nkpki: note: unchecked\n".len()
        );
    }
}
