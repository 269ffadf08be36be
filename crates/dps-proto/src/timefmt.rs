//! Timestamp formats the Azure services emit, as serde helpers.
//!
//! Records use 7 fractional digits (`2023-05-19T23:10:45.1256254Z`); certificate dates use whole
//! seconds (`2023-05-19T23:10:43Z`). On input any RFC 3339 form is accepted, and a date-time
//! without an offset (what .NET writes for a `DateTime` of unspecified kind) is taken as UTC.
//! Anything else — a number, an object, a string that is no date — is refused, so a client that
//! sends the wrong thing hears about it instead of seeing the field silently dropped.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serializer};

/// Formats a record timestamp with 7 fractional digits.
pub fn format_record(t: &DateTime<Utc>) -> String {
    use chrono::Timelike;
    // chrono has no 7-digit specifier; .NET "ticks" precision is 100 ns.
    format!(
        "{}.{:07}Z",
        t.format("%Y-%m-%dT%H:%M:%S"),
        t.nanosecond() % 1_000_000_000 / 100
    )
}

/// Formats a certificate date with whole seconds.
pub fn format_seconds(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Parses RFC 3339 (any precision), or an ISO 8601 date-time without offset as UTC.
pub fn parse(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|n| n.and_utc())
        })
}

/// serde for `Option<DateTime<Utc>>` record timestamps (7 digits).
pub mod record {
    use super::*;

    /// Serialize.
    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&format_record(t)),
            None => s.serialize_none(),
        }
    }

    /// Deserialize: `null` or a date-time string; anything else is an error.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        match Option::<serde_json::Value>::deserialize(d)? {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => parse(&s).map(Some).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "'{}' is not a date-time; expected RFC 3339, e.g. 2023-05-19T23:10:45.1256254Z",
                    s.chars().take(64).collect::<String>()
                ))
            }),
            Some(other) => Err(serde::de::Error::custom(format!(
                "expected a date-time string, got {}",
                json_kind(&other)
            ))),
        }
    }
}

/// serde for `Option<DateTime<Utc>>` certificate dates (whole seconds).
pub mod seconds {
    use super::*;

    /// Serialize.
    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&format_seconds(t)),
            None => s.serialize_none(),
        }
    }

    /// Deserialize: as [`record::deserialize`](super::record::deserialize).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        super::record::deserialize(d)
    }
}

/// The JSON type of `v`, for messages.
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn formats() {
        let t = Utc.with_ymd_and_hms(2023, 5, 19, 23, 10, 45).unwrap() + chrono::Duration::nanoseconds(125_625_400);
        assert_eq!(format_record(&t), "2023-05-19T23:10:45.1256254Z");
        assert_eq!(format_seconds(&t), "2023-05-19T23:10:45Z");
        assert_eq!(
            parse("2023-05-19T23:10:45.1256254Z").map(|p| format_record(&p)),
            Some(format_record(&t))
        );
        assert_eq!(parse("yesterday"), None);
        // .NET's DateTime of unspecified kind.
        assert_eq!(
            parse("0001-01-01T00:00:00").map(|p| format_seconds(&p)).as_deref(),
            Some("0001-01-01T00:00:00Z")
        );
    }

    #[derive(Debug, serde::Deserialize)]
    struct Holder {
        #[serde(with = "record", default)]
        #[allow(dead_code)]
        t: Option<DateTime<Utc>>,
    }

    #[test]
    fn wrong_types_are_errors() {
        for ok in [r#"{}"#, r#"{"t":null}"#, r#"{"t":"2023-05-19T23:10:45.1256254Z"}"#] {
            serde_json::from_str::<Holder>(ok).unwrap();
        }
        for (bad, says) in [
            (r#"{"t":"not a date"}"#, "'not a date' is not a date-time"),
            (r#"{"t":5}"#, "got a number"),
            (r#"{"t":{}}"#, "got an object"),
            (r#"{"t":true}"#, "got a boolean"),
        ] {
            let e = serde_json::from_str::<Holder>(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
