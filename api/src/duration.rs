//! Durations written the way Go's `time.ParseDuration` reads them (`1m30s`, `10m`, `1.5h`),
//! which is how every Flux interval and timeout is spelled.

use std::{borrow::Cow, fmt, str::FromStr, time::Duration};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The pattern Flux's CRDs put on duration fields; the API server enforces it too.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// A duration that keeps the text the user wrote, so a manifest round-trips unchanged.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct GoDuration {
    text: String,
    value: Duration,
}

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: {why} (expected Go duration syntax such as 30s, 1m30s, 10m or 1h)"
)]
pub struct DurationError {
    input: String,
    why: &'static str,
}

impl GoDuration {
    /// The parsed length of time.
    #[must_use]
    pub fn as_std(&self) -> Duration {
        self.value
    }

    /// The text as written in the manifest.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A whole number of seconds, written as `<n>s` (the form Flux's defaults use, e.g. `60s`).
    #[must_use]
    pub fn from_secs(secs: u64) -> Self {
        Self {
            text: format!("{secs}s"),
            value: Duration::from_secs(secs),
        }
    }
}

/// `duration` written as Go's `time.Duration.String` writes it (`4m30s`, `1h0m0s`, `1.5s`,
/// `250ms`), the form Flux's messages use.
#[must_use]
pub fn go_format(duration: Duration) -> String {
    fn trim(whole: u128, fraction: u128, digits: usize) -> String {
        if fraction == 0 {
            whole.to_string()
        } else {
            let fraction = format!("{fraction:0digits$}");
            format!("{whole}.{}", fraction.trim_end_matches('0'))
        }
    }
    let nanos = duration.as_nanos();
    match nanos {
        0 => "0s".to_owned(),
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => format!("{}µs", trim(n / 1_000, n % 1_000, 3)),
        n if n < 1_000_000_000 => format!("{}ms", trim(n / 1_000_000, n % 1_000_000, 6)),
        n => {
            let secs = n / 1_000_000_000;
            let seconds = format!("{}s", trim(secs % 60, n % 1_000_000_000, 9));
            match (secs / 3600, secs / 60 % 60) {
                (0, 0) => seconds,
                (0, m) => format!("{m}m{seconds}"),
                (h, m) => format!("{h}h{m}m{seconds}"),
            }
        }
    }
}

impl FromStr for GoDuration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |why| DurationError {
            input: input.to_owned(),
            why,
        };
        if input.is_empty() {
            return Err(err("empty"));
        }
        let bytes = input.as_bytes();
        let mut total_nanos: f64 = 0.0;
        let mut i = 0;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                i += 1;
            }
            let number = &input[start..i];
            if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
                return Err(err("each unit needs a number before it"));
            }
            if number.matches('.').count() > 1 {
                return Err(err("a number has more than one decimal point"));
            }
            let value: f64 = number.parse().map_err(|_| err("not a number"))?;
            let unit_start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            let nanos_per_unit = match &input[unit_start..i] {
                "ms" => 1e6,
                "s" => 1e9,
                "m" => 60e9,
                "h" => 3600e9,
                "" => return Err(err("missing unit")),
                _ => return Err(err("unknown unit (use ms, s, m or h)")),
            };
            total_nanos += value * nanos_per_unit;
        }
        // Go's durations are int64 nanoseconds: about 292 years.
        if !total_nanos.is_finite() || total_nanos > 9.2e18 {
            return Err(err("out of range"));
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let value = Duration::from_nanos(total_nanos.round() as u64);
        Ok(Self {
            text: input.to_owned(),
            value,
        })
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GoDuration({})", self.text)
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "pattern": DURATION_PATTERN })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_format_writes_durations_as_go_does() {
        for (secs, millis, go) in [
            (270, 0, "4m30s"),
            (3600, 0, "1h0m0s"),
            (30, 0, "30s"),
            (1, 500, "1.5s"),
            (0, 250, "250ms"),
            (5400, 0, "1h30m0s"),
            (0, 0, "0s"),
        ] {
            let d = Duration::from_secs(secs) + Duration::from_millis(millis);
            assert_eq!(go_format(d), go);
        }
    }

    #[test]
    fn parses_the_forms_flux_documents() {
        for (text, secs) in [
            ("30s", 30.0),
            ("1m30s", 90.0),
            ("10m", 600.0),
            ("1h", 3600.0),
            ("1.5h", 5400.0),
            ("500ms", 0.5),
            ("2h45m", 9900.0),
        ] {
            let d: GoDuration = text.parse().unwrap();
            assert!((d.as_std().as_secs_f64() - secs).abs() < 1e-9, "{text}");
            assert_eq!(d.to_string(), text, "keeps the original text");
        }
    }

    #[test]
    fn rejects_what_go_and_the_crd_pattern_reject() {
        for bad in [
            "", "10", "m", "1d", "1.m", ".5s", "1..5s", "-1s", "1 m", "10M", "1e3s",
        ] {
            let err = bad.parse::<GoDuration>().unwrap_err();
            assert!(err.to_string().contains("invalid duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn whole_seconds_are_written_in_seconds() {
        let d = GoDuration::from_secs(60);
        assert_eq!(d.as_str(), "60s");
        assert_eq!(d.as_std(), Duration::from_secs(60));
    }
}
