//! The Event Hubs AMQP surface the hub's built-in endpoint speaks (newer-surfaces.md "The hub
//! over AMQP"; `@azure/event-hubs` 5.12 `partitionReceiver.js`, `eventPosition.js`,
//! `managementClient.js`; `azure-eventhub` 5.15 `_consumer.py`, `_client_base.py`): node
//! addresses, the `$management` request names, and the selector filter a consumer attaches with
//! to say where in a partition it starts.

/// The management node: `READ` requests for the event hub's and a partition's runtime
/// properties.
pub const MANAGEMENT_NODE: &str = "$management";
/// Request application property: the operation (`READ`).
pub const MGMT_OPERATION: &str = "operation";
/// The only management operation served.
pub const MGMT_READ: &str = "READ";
/// Request application property: what is read (`com.microsoft:eventhub` or
/// `com.microsoft:partition`).
pub const MGMT_TYPE: &str = "type";
/// `type` of an event hub read.
pub const MGMT_TYPE_EVENTHUB: &str = "com.microsoft:eventhub";
/// `type` of a partition read.
pub const MGMT_TYPE_PARTITION: &str = "com.microsoft:partition";
/// Request application property: the event hub's name.
pub const MGMT_NAME: &str = "name";
/// Request application property: the partition id.
pub const MGMT_PARTITION: &str = "partition";
// Answers carry `status-code` and `status-description`, as CBS answers do
// (`crate::hub_amqp::CBS_STATUS_CODE`).

/// The source filter a consumer attaches with (a described string; Node describes it by the
/// code [`SELECTOR_FILTER_CODE`], Python by this symbol).
pub const SELECTOR_FILTER: &str = "apache.org:selector-filter:string";
/// The numeric descriptor of [`SELECTOR_FILTER`].
pub const SELECTOR_FILTER_CODE: u64 = 0x0000_468C_0000_0004;

/// Message annotation: the event's sequence number in its partition (long).
pub const SEQUENCE_NUMBER: &str = "x-opt-sequence-number";
/// Message annotation: the event's offset (string).
pub const OFFSET: &str = "x-opt-offset";
/// Message annotation: when the hub accepted the event (timestamp).
pub const ENQUEUED_TIME: &str = "x-opt-enqueued-time";

/// The consumer group every event hub has.
pub const DEFAULT_CONSUMER_GROUP: &str = "$Default";

/// Most consumer groups an IoT hub's built-in endpoint has, `$Default` included (Azure's quota
/// for the standard tiers).
pub const MAX_CONSUMER_GROUPS: usize = 20;

/// Event Hubs' rule for a consumer group name that can be created: 1 to 50 letters, digits,
/// periods, underscores and hyphens, starting with a letter or digit (`$Default` is built in).
pub fn valid_consumer_group_name(name: &str) -> bool {
    (1..=50).contains(&name.len())
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Where in a partition a consumer starts, as its selector filter says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventPosition {
    /// After (or at, when `inclusive`) the event with this offset; offset `-1` is the start.
    Offset {
        /// The offset.
        offset: i64,
        /// `>=` rather than `>`.
        inclusive: bool,
    },
    /// Only events enqueued from now on (`@latest`).
    Latest,
    /// After (or at) the event with this sequence number.
    SequenceNumber {
        /// The sequence number.
        sequence_number: i64,
        /// `>=` rather than `>`.
        inclusive: bool,
    },
    /// Events enqueued after (or at) this time, milliseconds since the Unix epoch.
    EnqueuedTime {
        /// Milliseconds since the epoch.
        millis: i64,
        /// `>=` rather than `>`.
        inclusive: bool,
    },
}

impl EventPosition {
    /// The start of the partition (`x-opt-offset > '-1'`): where a consumer attached without a
    /// filter starts.
    pub const EARLIEST: EventPosition = EventPosition::Offset {
        offset: -1,
        inclusive: false,
    };

    /// Parses a selector filter as both SDKs write it:
    /// `amqp.annotation.x-opt-offset > '-1'`, `… > '@latest'`,
    /// `amqp.annotation.x-opt-sequence-number >= '42'`,
    /// `amqp.annotation.x-opt-enqueued-time > '1700000000000'`. The error says what is wrong.
    pub fn parse_selector(filter: &str) -> Result<EventPosition, String> {
        let f = filter.trim();
        let rest = strip_prefix_ignore_case(f, "amqp.annotation.")
            .ok_or_else(|| format!("selector {filter:?} does not start with amqp.annotation."))?;
        let end = rest
            .find(|c: char| c.is_whitespace() || matches!(c, '>' | '=' | '<'))
            .ok_or_else(|| format!("selector {filter:?} has no comparison"))?;
        let (name, rest) = (&rest[..end], rest[end..].trim_start());
        let (inclusive, rest) = if let Some(r) = rest.strip_prefix(">=") {
            (true, r)
        } else if let Some(r) = rest.strip_prefix('>') {
            (false, r)
        } else {
            return Err(format!("selector {filter:?}: only > and >= are served"));
        };
        let value = rest.trim();
        let value = value
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .unwrap_or(value);
        let number = |what: &str| {
            value
                .parse::<i64>()
                .map_err(|_| format!("selector {filter:?}: {what} {value:?} is not a number"))
        };
        match name.to_ascii_lowercase().as_str() {
            OFFSET if value.eq_ignore_ascii_case("@latest") => Ok(EventPosition::Latest),
            OFFSET => Ok(EventPosition::Offset {
                offset: number("offset")?,
                inclusive,
            }),
            SEQUENCE_NUMBER => Ok(EventPosition::SequenceNumber {
                sequence_number: number("sequence number")?,
                inclusive,
            }),
            ENQUEUED_TIME => Ok(EventPosition::EnqueuedTime {
                millis: number("enqueued time")?,
                inclusive,
            }),
            other => Err(format!("selector {filter:?}: cannot select on {other:?}")),
        }
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

/// A consumer's receive node: `{entity}/ConsumerGroups/{group}/Partitions/{id}` (Python sends it
/// as a full `amqps://host/…` URL; strip that first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionAddress {
    /// The event hub's name.
    pub entity: String,
    /// The consumer group.
    pub consumer_group: String,
    /// The partition id.
    pub partition: String,
}

impl PartitionAddress {
    /// Parses the address (path segments case-insensitive, as the service treats them).
    pub fn parse(address: &str) -> Option<PartitionAddress> {
        let parts: Vec<&str> = address.trim_start_matches('/').split('/').collect();
        match parts.as_slice() {
            [entity, cg, group, p, id]
                if cg.eq_ignore_ascii_case("ConsumerGroups")
                    && p.eq_ignore_ascii_case("Partitions")
                    && !entity.is_empty()
                    && !group.is_empty()
                    && !id.is_empty() =>
            {
                Some(PartitionAddress {
                    entity: entity.to_string(),
                    consumer_group: group.to_string(),
                    partition: id.to_string(),
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_as_the_sdks_write_them() {
        let p = EventPosition::parse_selector;
        assert_eq!(p("amqp.annotation.x-opt-offset > '-1'"), Ok(EventPosition::EARLIEST));
        assert_eq!(p("amqp.annotation.x-opt-offset > '@latest'"), Ok(EventPosition::Latest));
        assert_eq!(
            p("amqp.annotation.x-opt-offset >= '120'"),
            Ok(EventPosition::Offset {
                offset: 120,
                inclusive: true
            })
        );
        assert_eq!(
            p("amqp.annotation.x-opt-sequence-number > '7'"),
            Ok(EventPosition::SequenceNumber {
                sequence_number: 7,
                inclusive: false
            })
        );
        assert_eq!(
            p("AMQP.ANNOTATION.X-OPT-ENQUEUED-TIME>='1700000000000'"),
            Ok(EventPosition::EnqueuedTime {
                millis: 1_700_000_000_000,
                inclusive: true
            })
        );
        for bad in [
            "",
            "x-opt-offset > '1'",
            "amqp.annotation.x-opt-offset < '1'",
            "amqp.annotation.x-opt-offset > 'one'",
            "amqp.annotation.x-opt-partition-key > '1'",
            "amqp.annotation.x-opt-offset",
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn partition_addresses() {
        assert_eq!(
            PartitionAddress::parse("hub/ConsumerGroups/$Default/Partitions/3"),
            Some(PartitionAddress {
                entity: "hub".into(),
                consumer_group: "$Default".into(),
                partition: "3".into()
            })
        );
        assert_eq!(
            PartitionAddress::parse("/hub/consumergroups/g/partitions/0").map(|a| a.consumer_group),
            Some("g".into())
        );
        for bad in [
            "hub/ConsumerGroups/$Default",
            "hub/ConsumerGroups//Partitions/0",
            "$management",
            "",
        ] {
            assert_eq!(PartitionAddress::parse(bad), None, "{bad:?}");
        }
    }
}
