//! How the user commands talk to a terminal: colour only when stdout is one (and `NO_COLOR` is
//! unset, <https://no-color.org>), and long waits shown as a spinner with the current condition
//! message on a TTY, as plain lines (one per new message) otherwise, so logs of CI jobs stay
//! readable.

use std::io::IsTerminal as _;
use std::time::Duration;

use anstyle::{AnsiColor, Style};

/// Whether output to stdout may be coloured.
pub fn colour() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stdout().is_terminal()
}

/// `text` in `style` when `enabled`, else as is.
pub fn paint(text: &str, style: Style, enabled: bool) -> String {
    if enabled {
        format!("{}{text}{}", style.render(), style.render_reset())
    } else {
        text.to_owned()
    }
}

/// The style of a Ready cell: green True, red False, yellow Unknown.
pub fn ready_style(ready: &str) -> Style {
    let colour = match ready {
        "True" => AnsiColor::Green,
        "False" => AnsiColor::Red,
        _ => AnsiColor::Yellow,
    };
    Style::new().fg_color(Some(colour.into()))
}

/// Progress of one wait: a spinner on a TTY (stderr), else a line each time the message changes.
#[derive(Debug)]
pub struct Progress {
    spinner: Option<indicatif::ProgressBar>,
    last: String,
}

impl Progress {
    /// Starts showing `what` (e.g. `waiting for Kustomization reconciliation`).
    pub fn start(what: &str) -> Self {
        let spinner = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(100));
            bar.set_message(what.to_owned());
            bar
        });
        if spinner.is_none() {
            eprintln!("◎ {what}");
        }
        Self {
            spinner,
            last: what.to_owned(),
        }
    }

    /// Shows `message` (the object's current condition), unless it is the one already shown.
    pub fn update(&mut self, message: &str) {
        if message.is_empty() || message == self.last {
            return;
        }
        message.clone_into(&mut self.last);
        match &self.spinner {
            Some(bar) => bar.set_message(message.replace('\n', " ")),
            None => eprintln!("◎ {}", message.replace('\n', " ")),
        }
    }

    /// Stops the spinner, leaving the terminal line clean for the outcome.
    pub fn finish(self) {
        if let Some(bar) = self.spinner {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_painted_only_when_colour_is_on() {
        assert_eq!(paint("True", ready_style("True"), false), "True");
        let painted = paint("False", ready_style("False"), true);
        assert!(painted.starts_with("\u{1b}[31m"), "{painted:?}");
        assert!(painted.ends_with("\u{1b}[0m"), "{painted:?}");
        assert!(painted.contains("False"));
    }
}
