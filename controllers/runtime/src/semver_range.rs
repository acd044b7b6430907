//! Semver ranges in the constraint syntax Flux uses (Masterminds/semver v3): `>=1.2.0 <2.0.0`,
//! `~1.2`, `^0.3`, `1.x`, `1.2 - 1.4`, `!=1.3.0`, `a || b`. Versions may start with `v`.
//!
//! Pre-releases match only when a comparator of the same group names a pre-release, as in
//! Masterminds: `>=1.0.0` never picks `1.1.0-rc.1`, `>=1.0.0-0` does.

use std::{cmp::Ordering, fmt};

use semver::{BuildMetadata, Prerelease, Version};

/// A parsed constraint: groups joined by `||`, each a list of comparators that must all hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    groups: Vec<Vec<Comparator>>,
    text: String,
}

/// Why a range or version failed to parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid semver range {range:?}: {why}")]
pub struct RangeError {
    range: String,
    why: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Tilde,
    Caret,
}

/// A version with possibly missing (wildcard) minor and patch, as written in a constraint.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Partial {
    major: Option<u64>,
    minor: Option<u64>,
    patch: Option<u64>,
    pre: Prerelease,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Comparator {
    op: Op,
    version: Partial,
}

impl Partial {
    fn floor(&self) -> Version {
        Version {
            major: self.major.unwrap_or(0),
            minor: self.minor.unwrap_or(0),
            patch: self.patch.unwrap_or(0),
            pre: self.pre.clone(),
            build: BuildMetadata::EMPTY,
        }
    }

    /// The first version above everything this partial version covers (exclusive upper bound);
    /// `None` for a bare wildcard.
    fn ceiling(&self) -> Option<Version> {
        Some(match (self.major?, self.minor, self.patch) {
            (major, None, _) => Version::new(major + 1, 0, 0),
            (major, Some(minor), None) => Version::new(major, minor + 1, 0),
            (major, Some(minor), Some(patch)) => Version::new(major, minor, patch + 1),
        })
    }

    fn is_exact(&self) -> bool {
        self.major.is_some() && self.minor.is_some() && self.patch.is_some()
    }
}

/// Semver precedence (build metadata ignored).
fn cmp(v: &Version, bound: &Version) -> Ordering {
    v.cmp_precedence(bound)
}

impl Comparator {
    fn matches(&self, v: &Version) -> bool {
        let p = &self.version;
        let floor = p.floor();
        match self.op {
            Op::Eq | Op::Ne => {
                let inside = if p.is_exact() {
                    cmp(v, &floor) == Ordering::Equal
                } else {
                    p.ceiling().is_none_or(|c| {
                        cmp(v, &floor) != Ordering::Less && cmp(v, &c) == Ordering::Less
                    })
                };
                inside == (self.op == Op::Eq)
            }
            Op::Gt => match p.ceiling() {
                _ if p.is_exact() => cmp(v, &floor) == Ordering::Greater,
                Some(c) => cmp(v, &c) != Ordering::Less,
                None => false,
            },
            Op::Ge => cmp(v, &floor) != Ordering::Less,
            Op::Lt => cmp(v, &floor) == Ordering::Less,
            Op::Le => match p.ceiling() {
                _ if p.is_exact() => cmp(v, &floor) != Ordering::Greater,
                Some(c) => cmp(v, &c) == Ordering::Less,
                None => true,
            },
            Op::Tilde => {
                let Some(major) = p.major else { return true };
                let upper = match p.minor {
                    Some(minor) => Version::new(major, minor + 1, 0),
                    None => Version::new(major + 1, 0, 0),
                };
                cmp(v, &floor) != Ordering::Less && cmp(v, &upper) == Ordering::Less
            }
            Op::Caret => {
                let Some(major) = p.major else { return true };
                let upper = match (major, p.minor, p.patch) {
                    (0, None, _) => Version::new(1, 0, 0),
                    (0, Some(0), None) => Version::new(0, 1, 0),
                    (0, Some(0), Some(patch)) => Version::new(0, 0, patch + 1),
                    (0, Some(minor), _) => Version::new(0, minor + 1, 0),
                    (major, _, _) => Version::new(major + 1, 0, 0),
                };
                cmp(v, &floor) != Ordering::Less && cmp(v, &upper) == Ordering::Less
            }
        }
    }
}

impl Range {
    /// Parses a constraint.
    pub fn parse(text: &str) -> Result<Self, RangeError> {
        let err = |why: String| RangeError {
            range: text.to_owned(),
            why,
        };
        let mut groups = vec![];
        for group in text.split("||") {
            let mut comparators = vec![];
            let tokens = tokenize(group);
            if tokens.is_empty() {
                return Err(err("empty constraint".to_owned()));
            }
            let mut i = 0;
            while i < tokens.len() {
                // Hyphen range: `A - B`.
                if tokens.get(i + 1).is_some_and(|t| t == "-") {
                    let lo = tokens
                        .get(i)
                        .ok_or_else(|| err("dangling '-'".to_owned()))?;
                    let hi = tokens
                        .get(i + 2)
                        .ok_or_else(|| err("range 'A - B' lacks B".to_owned()))?;
                    comparators.push(Comparator {
                        op: Op::Ge,
                        version: parse_partial(lo).map_err(&err)?,
                    });
                    comparators.push(Comparator {
                        op: Op::Le,
                        version: parse_partial(hi).map_err(&err)?,
                    });
                    i += 3;
                    continue;
                }
                comparators.push(parse_comparator(&tokens[i]).map_err(&err)?);
                i += 1;
            }
            groups.push(comparators);
        }
        Ok(Self {
            groups,
            text: text.to_owned(),
        })
    }

    /// Whether `version` satisfies the range.
    #[must_use]
    pub fn matches(&self, version: &Version) -> bool {
        self.groups.iter().any(|group| {
            let allows_pre = group.iter().any(|c| !c.version.pre.is_empty());
            (version.pre.is_empty() || allows_pre) && group.iter().all(|c| c.matches(version))
        })
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Splits a group on spaces and commas, gluing an operator written apart from its version
/// (`>= 1.2`) back together.
fn tokenize(group: &str) -> Vec<String> {
    let mut tokens: Vec<String> = vec![];
    for raw in group
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| !t.is_empty())
    {
        let pending_op = tokens
            .last()
            .is_some_and(|t| !t.is_empty() && t.chars().all(|c| "<>=!~^".contains(c)));
        if pending_op {
            if let Some(last) = tokens.last_mut() {
                last.push_str(raw);
            }
        } else {
            tokens.push(raw.to_owned());
        }
    }
    tokens
}

fn parse_comparator(token: &str) -> Result<Comparator, String> {
    let (op, rest) = [
        (">=", Op::Ge),
        ("=>", Op::Ge),
        ("<=", Op::Le),
        ("=<", Op::Le),
        ("!=", Op::Ne),
        ("~>", Op::Tilde),
        (">", Op::Gt),
        ("<", Op::Lt),
        ("=", Op::Eq),
        ("~", Op::Tilde),
        ("^", Op::Caret),
    ]
    .iter()
    .find_map(|(prefix, op)| token.strip_prefix(prefix).map(|rest| (*op, rest)))
    .unwrap_or((Op::Eq, token));
    Ok(Comparator {
        op,
        version: parse_partial(rest.trim())?,
    })
}

fn parse_partial(text: &str) -> Result<Partial, String> {
    let text = text.strip_prefix(['v', 'V']).unwrap_or(text);
    if text.is_empty() {
        return Err("missing version".to_owned());
    }
    let (core, pre) = match text.split_once('-') {
        Some((core, pre)) => (
            core,
            Prerelease::new(pre.split('+').next().unwrap_or(pre))
                .map_err(|e| format!("{text:?}: {e}"))?,
        ),
        None => (text.split('+').next().unwrap_or(text), Prerelease::EMPTY),
    };
    let mut parts = core.split('.');
    let mut next = |name: &str| -> Result<Option<u64>, String> {
        match parts.next() {
            None | Some("x" | "X" | "*") => Ok(None),
            Some(n) => n
                .parse()
                .map(Some)
                .map_err(|_| format!("{text:?}: {name} {n:?} is not a number")),
        }
    };
    let partial = Partial {
        major: next("major")?,
        minor: next("minor")?,
        patch: next("patch")?,
        pre,
    };
    if parts.next().is_some() {
        return Err(format!("{text:?}: too many components"));
    }
    Ok(partial)
}

/// Parses a tag as a version the lenient way Flux does: an optional `v`, and a missing minor or
/// patch read as 0 (`v1.2` is 1.2.0). Returns `None` for tags that are not versions.
#[must_use]
pub fn parse_version(tag: &str) -> Option<Version> {
    let text = tag.strip_prefix(['v', 'V']).unwrap_or(tag);
    if let Ok(v) = Version::parse(text) {
        return Some(v);
    }
    let p = parse_partial(text).ok()?;
    p.major?;
    // Reject wildcards: a tag like `1.x` is not a version.
    let core = text.split(['-', '+']).next()?;
    if core
        .split('.')
        .any(|c| c.is_empty() || !c.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    Some(p.floor())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(range: &str, version: &str) -> bool {
        Range::parse(range)
            .unwrap()
            .matches(&parse_version(version).unwrap())
    }

    #[test]
    fn comparisons_and_and_or() {
        assert!(ok(">=1.2.0 <2.0.0", "1.9.9"));
        assert!(!ok(">=1.2.0 <2.0.0", "2.0.0"));
        assert!(ok(">= 1.2.0, < 2.0.0", "1.2.0"));
        assert!(ok("<1.0.0 || >=3.0.0", "3.1.0"));
        assert!(!ok("<1.0.0 || >=3.0.0", "2.0.0"));
        assert!(ok("!=1.3.0", "1.3.1"));
        assert!(!ok("!=1.3.0", "1.3.0"));
        assert!(ok("1.2.3", "v1.2.3"));
    }

    #[test]
    fn tilde_caret_wildcards_and_hyphens() {
        assert!(ok("~1.2.3", "1.2.9") && !ok("~1.2.3", "1.3.0"));
        assert!(ok("~1", "1.9.0") && !ok("~1", "2.0.0"));
        assert!(ok("^1.2.3", "1.9.0") && !ok("^1.2.3", "2.0.0"));
        assert!(ok("^0.3.1", "0.3.9") && !ok("^0.3.1", "0.4.0"));
        assert!(ok("^0.0.3", "0.0.3") && !ok("^0.0.3", "0.0.4"));
        assert!(ok("1.2.x", "1.2.7") && !ok("1.2.x", "1.3.0"));
        assert!(ok("*", "9.9.9"));
        assert!(ok("1.2 - 1.4.5", "1.4.5") && !ok("1.2 - 1.4.5", "1.4.6"));
        assert!(ok(">1.2", "1.3.0") && !ok(">1.2", "1.2.9"));
        assert!(ok("<=1.2", "1.2.9") && !ok("<=1.2", "1.3.0"));
    }

    #[test]
    fn prereleases_need_a_prerelease_comparator() {
        assert!(!ok(">=1.0.0", "1.1.0-rc.1"));
        assert!(ok(">=1.0.0-0", "1.1.0-rc.1"));
        assert!(ok(">=1.0.0-rc.1 <2.0.0", "1.0.0-rc.2"));
        assert!(!ok("*", "1.0.0-alpha"));
    }

    #[test]
    fn bad_ranges_say_why() {
        for bad in ["", ">=", "1.2.3.4", ">=abc", "1.2 -", "~>x.y.z.w"] {
            let e = Range::parse(bad).unwrap_err();
            assert!(
                e.to_string().starts_with("invalid semver range"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn lenient_tag_versions() {
        assert_eq!(parse_version("v1.2"), Some(Version::new(1, 2, 0)));
        assert_eq!(parse_version("1"), Some(Version::new(1, 0, 0)));
        assert_eq!(parse_version("latest"), None);
        assert_eq!(parse_version("1.x"), None);
        assert_eq!(parse_version("v1.2.3-rc.1").unwrap().pre.as_str(), "rc.1");
    }
}
