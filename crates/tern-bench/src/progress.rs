//! Progress bars on stderr for long benchmark runs; hidden when stderr is not a
//! terminal or when the caller asks for quiet.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Creates progress bars, all visible or all hidden.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    visible: bool,
}

impl Progress {
    pub fn new(visible: bool) -> Progress {
        Progress { visible }
    }

    /// A bar of `len` steps labelled `what`.
    pub fn bar(&self, what: &str, len: u64) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(len), self.target());
        let style = ProgressStyle::with_template(
            "{prefix:>18} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}",
        )
        .expect("progress template is valid")
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(what.to_owned());
        bar
    }

    fn target(&self) -> ProgressDrawTarget {
        if self.visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        }
    }
}
