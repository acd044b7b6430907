//! `postBuild` variable substitution with Flux's syntax: `${var}`, `${var:=default}`,
//! `${var:-default}`, and `$${var}` for a literal `${var}`.
//!
//! Only the braced forms are substituted: a bare `$var` (common in shell scripts held in
//! ConfigMaps) is left alone. An undefined variable without a default becomes the empty string,
//! as in Flux's default (non-strict) mode.

use std::collections::BTreeMap;

/// Why substitution failed. Messages name the variable, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubstituteError {
    #[error("variable name {0:?} is invalid: names must match ^[_a-zA-Z][_a-zA-Z0-9]*$")]
    InvalidName(String),
    #[error("unterminated variable reference starting at {0:?}")]
    Unterminated(String),
}

/// Whether `name` is a valid variable name (`^[_a-zA-Z][_a-zA-Z0-9]*$`).
#[must_use]
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Checks every name of `vars`, so a typo in `postBuild.substitute` is reported, not ignored.
pub fn validate_names<'a>(
    names: impl IntoIterator<Item = &'a String>,
) -> Result<(), SubstituteError> {
    match names.into_iter().find(|n| !is_valid_name(n)) {
        Some(bad) => Err(SubstituteError::InvalidName(bad.clone())),
        None => Ok(()),
    }
}

/// Replaces the variable references in `text` with their values from `vars`.
pub fn substitute(text: &str, vars: &BTreeMap<String, String>) -> Result<String, SubstituteError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(escaped) = tail.strip_prefix("$${") {
            // `$${var}` is the literal `${var}`.
            out.push_str("${");
            rest = escaped;
            continue;
        }
        let Some(body_start) = tail.strip_prefix("${") else {
            out.push('$');
            rest = &tail[1..];
            continue;
        };
        let Some(end) = body_start.find('}') else {
            let shown: String = tail.chars().take(20).collect();
            return Err(SubstituteError::Unterminated(shown));
        };
        let body = &body_start[..end];
        out.push_str(&expand(body, vars)?);
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The value of one `${...}` body: `name`, `name:=default` or `name:-default`.
fn expand(body: &str, vars: &BTreeMap<String, String>) -> Result<String, SubstituteError> {
    let (name, default) = match body.find(":=").or_else(|| body.find(":-")) {
        Some(i) => (&body[..i], Some(&body[i + 2..])),
        None => (body, None),
    };
    if !is_valid_name(name) {
        return Err(SubstituteError::InvalidName(name.to_owned()));
    }
    let value = vars
        .get(name)
        .filter(|v| !v.is_empty() || default.is_none());
    Ok(match (value, default) {
        (Some(v), _) => v.clone(),
        (None, Some(d)) => d.to_owned(),
        (None, None) => String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("cluster".to_owned(), "prod".to_owned()),
            ("replicas".to_owned(), "3".to_owned()),
            ("empty".to_owned(), String::new()),
        ])
    }

    #[test]
    fn braced_variables_are_replaced() {
        assert_eq!(
            substitute("name: app-${cluster}\nreplicas: ${replicas}\n", &vars()).unwrap(),
            "name: app-prod\nreplicas: 3\n"
        );
    }

    #[test]
    fn defaults_apply_to_unset_and_empty_variables() {
        let v = vars();
        assert_eq!(substitute("${region:=eu}", &v).unwrap(), "eu");
        assert_eq!(substitute("${region:-us}", &v).unwrap(), "us");
        assert_eq!(substitute("${empty:=x}", &v).unwrap(), "x");
        assert_eq!(substitute("${cluster:=dev}", &v).unwrap(), "prod");
        assert_eq!(substitute("${missing}", &v).unwrap(), "");
    }

    #[test]
    fn double_dollar_escapes_and_bare_dollars_stay() {
        let v = vars();
        assert_eq!(substitute("$${cluster}", &v).unwrap(), "${cluster}");
        assert_eq!(
            substitute("echo $HOME $1 $", &v).unwrap(),
            "echo $HOME $1 $"
        );
        assert_eq!(substitute("cost: 5$", &v).unwrap(), "cost: 5$");
    }

    #[test]
    fn bad_references_are_errors_that_name_the_variable() {
        let v = vars();
        assert_eq!(
            substitute("${bad-name}", &v),
            Err(SubstituteError::InvalidName("bad-name".to_owned()))
        );
        assert!(matches!(
            substitute("x: ${open", &v),
            Err(SubstituteError::Unterminated(_))
        ));
        assert!(validate_names(&["ok_1".to_owned(), "_x".to_owned()]).is_ok());
        assert!(validate_names(&["1x".to_owned()]).is_err());
    }
}
