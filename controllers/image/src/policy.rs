//! Choosing the latest tag: a policy's `filterTags` and ordering, compiled once and run over a
//! repository's shared tag list. Pure; no I/O.
//!
//! Tags that do not parse under the policy (not semver, not a number, not matching the pattern)
//! are skipped. Ties between different tags that compare equal (`1.0.0` and `v1.0.0`, `01` and
//! `1`) are broken by the tag text, so the pick never depends on the order of the list.

use std::cmp::Ordering;

use regex::Regex;
use semver::Version;
use weir_api::image::{ImagePolicyChoice, ImagePolicySpec, ReflectionPolicy, SortOrder};
use weir_runtime::semver_range::{self, Range};

/// Why a policy cannot be compiled.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid semver range")]
    Range(#[source] semver_range::RangeError),
    #[error("invalid filterTags.pattern {pattern:?}")]
    Pattern {
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error(
        "filterTags.extract {extract:?} names group '{group}', which the pattern does not have"
    )]
    Extract { extract: String, group: String },
    #[error("filterTags.extract is set but filterTags.pattern is not")]
    ExtractWithoutPattern,
    #[error("digestReflectionPolicy: Always needs spec.interval, and spec.interval needs it")]
    Interval,
}

#[derive(Debug)]
enum Order {
    Semver(Range),
    Alphabetical(SortOrder),
    Numerical(SortOrder),
}

/// A compiled policy.
#[derive(Debug)]
pub struct Policy {
    order: Order,
    pattern: Option<Regex>,
    extract: Option<String>,
}

/// What a tag is compared by.
#[derive(Debug, PartialEq)]
enum Key {
    Semver(Version),
    Text(String),
    Number(f64),
}

impl Key {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Self::Semver(a), Self::Semver(b)) => a.cmp_precedence(b),
            (Self::Text(a), Self::Text(b)) => a.cmp(b),
            (Self::Number(a), Self::Number(b)) => a.total_cmp(b),
            // One policy yields one kind of key.
            _ => Ordering::Equal,
        }
    }
}

impl Policy {
    /// Compiles a spec's policy and tag filter.
    pub fn compile(spec: &ImagePolicySpec) -> Result<Self, PolicyError> {
        let always = spec.digest_reflection_policy == ReflectionPolicy::Always;
        if always != spec.interval.is_some() {
            return Err(PolicyError::Interval);
        }
        let order = match &spec.policy {
            ImagePolicyChoice::Semver(s) => {
                Order::Semver(Range::parse(&s.range).map_err(PolicyError::Range)?)
            }
            ImagePolicyChoice::Alphabetical(a) => Order::Alphabetical(a.order),
            ImagePolicyChoice::Numerical(n) => Order::Numerical(n.order),
        };
        let filter = spec.filter_tags.as_ref();
        let pattern = filter
            .and_then(|f| f.pattern.as_deref())
            .filter(|p| !p.is_empty())
            .map(|p| {
                Regex::new(p).map_err(|source| PolicyError::Pattern {
                    pattern: p.to_owned(),
                    source,
                })
            })
            .transpose()?;
        let extract = filter
            .and_then(|f| f.extract.clone())
            .filter(|e| !e.is_empty());
        if let Some(extract) = &extract {
            let Some(re) = &pattern else {
                return Err(PolicyError::ExtractWithoutPattern);
            };
            for group in referenced_groups(extract) {
                let known = re.capture_names().flatten().any(|n| n == group)
                    || group.parse::<usize>().is_ok_and(|i| i < re.captures_len());
                if !known {
                    return Err(PolicyError::Extract {
                        extract: extract.clone(),
                        group: group.to_owned(),
                    });
                }
            }
        }
        Ok(Self {
            order,
            pattern,
            extract,
        })
    }

    /// The value a tag is compared by after `filterTags`, or `None` when the filter drops it.
    #[must_use]
    pub fn filter<'t>(&self, tag: &'t str) -> Option<std::borrow::Cow<'t, str>> {
        let Some(re) = &self.pattern else {
            return Some(tag.into());
        };
        let caps = re.captures(tag)?;
        match &self.extract {
            None => Some(tag.into()),
            Some(template) => {
                let mut out = String::new();
                caps.expand(template, &mut out);
                Some(out.into())
            }
        }
    }

    fn key(&self, value: &str) -> Option<Key> {
        match &self.order {
            Order::Semver(range) => semver_range::parse_version(value)
                .filter(|v| range.matches(v))
                .map(Key::Semver),
            Order::Alphabetical(_) => Some(Key::Text(value.to_owned())),
            Order::Numerical(_) => value
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(Key::Number),
        }
    }

    fn descending(&self) -> bool {
        matches!(
            self.order,
            Order::Alphabetical(SortOrder::Desc) | Order::Numerical(SortOrder::Desc)
        )
    }

    /// The latest tag of `tags` under this policy, or `None` when no tag qualifies.
    #[must_use]
    pub fn latest<'t, T: AsRef<str>>(&self, tags: &'t [T]) -> Option<&'t str> {
        let mut best: Option<(Key, &str)> = None;
        for tag in tags {
            let tag = tag.as_ref();
            let Some(value) = self.filter(tag) else {
                continue;
            };
            let Some(key) = self.key(&value) else {
                continue;
            };
            let better = match &best {
                None => true,
                Some((best_key, best_tag)) => {
                    let mut ord = key.cmp(best_key);
                    if self.descending() {
                        ord = ord.reverse();
                    }
                    ord.then_with(|| tag.cmp(best_tag)) == Ordering::Greater
                }
            };
            if better {
                best = Some((key, tag));
            }
        }
        best.map(|(_, tag)| tag)
    }
}

/// The group names or numbers an extract template refers to (`$ts`, `${ts}`, `$1`).
fn referenced_groups(template: &str) -> Vec<&str> {
    let mut out = vec![];
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            rest = after;
            continue;
        }
        let (name, next) = if let Some(braced) = rest.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], &braced[end + 1..]),
                None => break,
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        if !name.is_empty() {
            out.push(name);
        }
        rest = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_api::image::{AlphabeticalPolicy, NumericalPolicy, SemVerPolicy, TagFilter};
    use weir_api::meta::NamespacedObjectReference;

    fn spec(policy: ImagePolicyChoice, filter: Option<(&str, &str)>) -> ImagePolicySpec {
        ImagePolicySpec {
            image_repository_ref: NamespacedObjectReference {
                name: "r".into(),
                namespace: None,
            },
            policy,
            filter_tags: filter.map(|(p, e)| TagFilter {
                pattern: Some(p.into()).filter(|p: &String| !p.is_empty()),
                extract: Some(e.into()).filter(|e: &String| !e.is_empty()),
            }),
            digest_reflection_policy: ReflectionPolicy::Never,
            interval: None,
            suspend: false,
        }
    }

    fn semver(range: &str) -> ImagePolicyChoice {
        ImagePolicyChoice::Semver(SemVerPolicy {
            range: range.into(),
        })
    }

    fn latest(spec: &ImagePolicySpec, tags: &[&str]) -> Option<String> {
        Policy::compile(spec)
            .unwrap()
            .latest(tags)
            .map(str::to_owned)
    }

    #[test]
    fn semver_picks_the_highest_in_range_and_skips_what_does_not_parse() {
        let tags = [
            "latest",
            "1.0.0",
            "1.2.3",
            "v1.3.0",
            "2.0.0",
            "1.4.0-rc.1",
            "garbage",
            "1.3",
        ];
        assert_eq!(
            latest(&spec(semver(">=1.0.0 <2.0.0"), None), &tags).unwrap(),
            "v1.3.0"
        );
        assert_eq!(latest(&spec(semver("*"), None), &tags).unwrap(), "2.0.0");
        assert_eq!(
            latest(&spec(semver(">=1.0.0-0 <2.0.0"), None), &tags).unwrap(),
            "1.4.0-rc.1",
            "pre-releases only when the range names one"
        );
        assert_eq!(latest(&spec(semver(">=3.0.0"), None), &tags), None);
    }

    #[test]
    fn equal_versions_pick_the_same_tag_whatever_the_order() {
        let s = spec(semver("1.x"), None);
        let a = latest(&s, &["v1.3.0", "1.3.0"]);
        let b = latest(&s, &["1.3.0", "v1.3.0"]);
        assert_eq!(a, b);
    }

    #[test]
    fn alphabetical_and_numerical_orders() {
        let asc = ImagePolicyChoice::Alphabetical(AlphabeticalPolicy {
            order: SortOrder::Asc,
        });
        let desc = ImagePolicyChoice::Alphabetical(AlphabeticalPolicy {
            order: SortOrder::Desc,
        });
        let tags = ["b", "a", "c"];
        assert_eq!(latest(&spec(asc, None), &tags).unwrap(), "c");
        assert_eq!(latest(&spec(desc, None), &tags).unwrap(), "a");

        let num = ImagePolicyChoice::Numerical(NumericalPolicy {
            order: SortOrder::Asc,
        });
        let tags = ["9", "10", "2", "x", "1.5"];
        assert_eq!(
            latest(&spec(num.clone(), None), &tags).unwrap(),
            "10",
            "compared as numbers, not text"
        );
        let num_desc = ImagePolicyChoice::Numerical(NumericalPolicy {
            order: SortOrder::Desc,
        });
        assert_eq!(latest(&spec(num_desc, None), &tags).unwrap(), "1.5");
    }

    #[test]
    fn filter_with_extract_compares_the_named_group() {
        let num = ImagePolicyChoice::Numerical(NumericalPolicy::default());
        let s = spec(num, Some((r"^main-[a-f0-9]+-(?P<ts>\d+)$", "$ts")));
        let tags = [
            "main-abc123-1700000005",
            "main-fff000-1700000009",
            "dev-aaa-1800000000",
            "main-0000-notanumber",
            "1.0.0",
        ];
        assert_eq!(latest(&s, &tags).unwrap(), "main-fff000-1700000009");
        let p = Policy::compile(&s).unwrap();
        assert_eq!(p.filter("main-abc-12").as_deref(), Some("12"));
        assert_eq!(p.filter("dev-abc-12"), None);

        let alpha = ImagePolicyChoice::Alphabetical(AlphabeticalPolicy::default());
        let s = spec(
            alpha,
            Some((r"^RELEASE\.(?P<timestamp>.*)Z$", "${timestamp}")),
        );
        assert_eq!(
            latest(
                &s,
                &[
                    "RELEASE.2024-01-01T00-00-00Z",
                    "RELEASE.2024-02-01T00-00-00Z",
                    "latest"
                ]
            )
            .unwrap(),
            "RELEASE.2024-02-01T00-00-00Z"
        );
    }

    #[test]
    fn bad_policies_are_errors_naming_the_field() {
        let alpha = || ImagePolicyChoice::Alphabetical(AlphabeticalPolicy::default());
        let e = Policy::compile(&spec(semver("not a range"), None)).unwrap_err();
        assert!(matches!(e, PolicyError::Range(_)), "{e}");
        let e = Policy::compile(&spec(alpha(), Some(("(unclosed", "")))).unwrap_err();
        let text = weir_runtime::chain(&e);
        assert!(
            text.starts_with("invalid filterTags.pattern \"(unclosed\": regex parse error"),
            "{text}"
        );
        let e = Policy::compile(&spec(alpha(), Some((r"^(?P<ts>\d+)$", "$version")))).unwrap_err();
        assert!(e.to_string().contains("'version'"), "{e}");
        assert_eq!(
            Policy::compile(&spec(alpha(), Some(("", "$ts")))).unwrap_err(),
            PolicyError::ExtractWithoutPattern
        );
        let mut always = spec(alpha(), None);
        always.digest_reflection_policy = ReflectionPolicy::Always;
        assert_eq!(Policy::compile(&always).unwrap_err(), PolicyError::Interval);
        always.interval = Some("1m".parse().unwrap());
        assert!(Policy::compile(&always).is_ok());
        always.digest_reflection_policy = ReflectionPolicy::IfNotPresent;
        assert_eq!(Policy::compile(&always).unwrap_err(), PolicyError::Interval);
    }

    #[test]
    fn ten_thousand_tags_are_chosen_from_quickly() {
        let tags: Vec<Box<str>> = (0..10_000)
            .map(|i| format!("1.{}.{}", i / 100, i % 100).into_boxed_str())
            .collect();
        let p = Policy::compile(&spec(semver(">=1.0.0"), None)).unwrap();
        assert_eq!(p.latest(&tags), Some("1.99.99"));
    }
}
