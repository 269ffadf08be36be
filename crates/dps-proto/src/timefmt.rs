//! Timestamp formats the Azure services emit, as serde helpers.
//!
//! Records use 7 fractional digits (`2023-05-19T23:10:45.1256254Z`); certificate dates use whole
//! seconds (`2023-05-19T23:10:43Z`). On input any RFC 3339 form is accepted, and an unparsable
//! read-only timestamp is ignored rather than failing the whole request.

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

/// Parses RFC 3339 (any precision).
pub fn parse(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|d| d.with_timezone(&Utc))
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

    /// Deserialize leniently.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let v = Option::<serde_json::Value>::deserialize(d)?;
        Ok(v.as_ref().and_then(|v| v.as_str()).and_then(parse))
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

    /// Deserialize leniently.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        super::record::deserialize(d)
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
    }
}
