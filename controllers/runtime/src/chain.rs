//! One line of text for an error and its causes.
//!
//! Weir's errors keep their cause as `source()` and say only their own context in `Display`
//! (`kubernetes API`, not `kubernetes API: {0}`), so the text of a condition message, an Event,
//! a log line or a CLI error is the whole chain, joined by ": ". `anyhow`'s `{:#}` renders a
//! chain the same way, but only for an `anyhow::Error`; the typed errors here would have to be
//! converted first, for ten lines of code. Errors of other crates (kube's `ApiError: {0}`, for
//! one) still print their source in their own `Display`: a cause whose text the error above it
//! already shows is not repeated.

use std::error::Error;

/// `error` and each of its sources, joined by ": "; a source whose text the error above it
/// already contains is left out.
#[must_use]
pub fn chain<E: Error + ?Sized>(error: &E) -> String {
    let mut text = error.to_string();
    let mut above = text.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        let own = cause.to_string();
        if !above.contains(&own) {
            text.push_str(": ");
            text.push_str(&own);
        }
        above = own;
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("cannot read secret '{name}'")]
        Read {
            name: String,
            #[source]
            source: Middle,
        },
        #[error("kubernetes API")]
        Repeating(#[source] Repeats),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("connection failed")]
    struct Middle(#[source] std::io::Error);

    /// A third-party habit: the source's text is part of the error's own.
    #[derive(Debug, thiserror::Error)]
    #[error("ApiError: {0} (code 403)")]
    struct Repeats(#[source] std::io::Error);

    fn io(text: &str) -> std::io::Error {
        std::io::Error::other(text.to_owned())
    }

    #[test]
    fn a_chain_is_every_cause_joined_by_colons() {
        let error = Outer::Read {
            name: "keys".to_owned(),
            source: Middle(io("refused")),
        };
        assert_eq!(
            chain(&error),
            "cannot read secret 'keys': connection failed: refused"
        );
        let dynamic: &(dyn Error + 'static) = &error;
        assert_eq!(chain(dynamic), chain(&error));
        assert_eq!(chain(&io("alone")), "alone");
    }

    #[test]
    fn a_cause_the_error_above_already_shows_is_not_repeated() {
        let error = Outer::Repeating(Repeats(io("forbidden")));
        assert_eq!(
            chain(&error),
            "kubernetes API: ApiError: forbidden (code 403)"
        );
    }
}
