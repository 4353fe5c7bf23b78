//! A progress bar on stderr for long runs: shown only on a terminal, never with `-q`, so piped
//! output carries nothing but the result.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Below this many steps a run is short enough to need no bar.
const MIN_STEPS: usize = 200;

/// Lets bars show, when stderr is a terminal; the CLI calls this unless `-q`.
pub fn enable() {
    ENABLED.store(std::io::stderr().is_terminal(), Ordering::Relaxed);
}

/// A bar over `len` steps (or nothing, for short runs and non-terminals); cleared when dropped.
pub struct Bar(Option<indicatif::ProgressBar>);

/// A bar for `len` steps of `what`.
pub fn bar(len: usize, what: &'static str) -> Bar {
    if !ENABLED.load(Ordering::Relaxed) || len < MIN_STEPS {
        return Bar(None);
    }
    let style = indicatif::ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {eta}")
        .expect("a valid template")
        .progress_chars("=> ");
    let bar = indicatif::ProgressBar::new(len as u64)
        .with_style(style)
        .with_message(what);
    Bar(Some(bar))
}

impl Bar {
    /// One step done.
    pub fn inc(&self) {
        if let Some(bar) = &self.0 {
            bar.inc(1);
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
