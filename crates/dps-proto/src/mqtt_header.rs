//! MQTT 3.1.1 header rules that a general-purpose packet codec does not enforce, judged on raw
//! bytes before they are decoded.
//!
//! The server decodes packets with `rumqttc`'s v4 codec, which is written for clients and is
//! lenient where MQTT 3.1.1 requires a server to refuse: it decodes protocol level 5 as if it were
//! 4, ignores the reserved CONNECT flag and the reserved fixed-header bits, and reports an
//! unknown protocol level as a decode error, so the client never gets the CONNACK 0x01 the
//! specification requires. These functions look at the bytes first and say what the server must
//! do; they hold no state and do no I/O.

/// The protocol level of MQTT 3.1.1, the only version the service speaks (every SDK sends it).
pub const PROTOCOL_LEVEL: u8 = 4;

/// What the first bytes of a connection say about its CONNECT packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectHeader {
    /// More bytes are needed before the header can be judged.
    Incomplete,
    /// An MQTT 3.1.1 CONNECT whose header is valid: hand it to the codec.
    Acceptable,
    /// A CONNECT of another MQTT version (§3.1.2.2): answer CONNACK 0x01, then close.
    UnacceptableLevel {
        /// The protocol level the client sent.
        level: u8,
    },
    /// A protocol violation: close the connection without a CONNACK.
    Violation(HeaderViolation),
}

/// A breach of MQTT 3.1.1 that obliges the server to close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderViolation {
    /// The first packet is not a CONNECT (§3.1: it must be).
    #[error("the first packet is of type {0}, not CONNECT")]
    NotConnect(u8),
    /// A packet type MQTT reserves (0 and 15).
    #[error("packet type {0} is reserved")]
    ReservedPacketType(u8),
    /// The flag bits of a fixed header are not the ones its packet type requires (§2.2.2).
    #[error("fixed header flags {flags:#06b} are invalid for packet type {kind}")]
    FixedHeaderFlags {
        /// Packet type (high nibble of the first byte).
        kind: u8,
        /// The flag bits (low nibble).
        flags: u8,
    },
    /// A PUBLISH with both QoS bits set (§3.3.1.2).
    #[error("PUBLISH with QoS 3")]
    PublishQos3,
    /// The remaining length uses more than four bytes (§2.2.3).
    #[error("malformed remaining length")]
    RemainingLength,
    /// A CONNECT larger than the server accepts before it knows who is connecting.
    #[error("a CONNECT of {len} bytes exceeds the limit of {max}")]
    ConnectTooLarge {
        /// The remaining length the client declared.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The CONNECT ends before its variable header does.
    #[error("the CONNECT packet ends inside its variable header")]
    Truncated,
    /// The protocol name is neither `MQTT` nor MQTT 3.1's `MQIsdp` (§3.1.2.1).
    #[error("protocol name {0:?} is not MQTT")]
    ProtocolName(String),
    /// The reserved bit 0 of the CONNECT flags is set (§3.1.2.3).
    #[error("the reserved CONNECT flag is set")]
    ReservedConnectFlag,
    /// Password flag without user name flag (§3.1.2.9).
    #[error("the password flag is set without the user name flag")]
    PasswordWithoutUsername,
    /// Will QoS or Will Retain set while the Will Flag is not (§3.1.2.11).
    #[error("will QoS or will retain is set without the will flag")]
    WillFlags,
    /// Will QoS 3 (§3.1.2.6).
    #[error("will QoS 3")]
    WillQos3,
}

/// Decodes the remaining length at `bytes[1..]`: `Ok(Some((value, bytes used)))`, `Ok(None)` when
/// more bytes are needed.
fn remaining_length(bytes: &[u8]) -> Result<Option<(usize, usize)>, HeaderViolation> {
    let mut value = 0usize;
    for (i, b) in bytes.iter().skip(1).take(4).enumerate() {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 5 {
        Err(HeaderViolation::RemainingLength)
    } else {
        Ok(None)
    }
}

/// Checks the first byte of any packet: a type MQTT defines and the flag bits §2.2.2 requires
/// for it (PUBREL, SUBSCRIBE and UNSUBSCRIBE carry `0010`, PUBLISH its DUP/QoS/RETAIN bits with
/// QoS below 3, every other type `0000`).
pub fn check_fixed_header(byte1: u8) -> Result<(), HeaderViolation> {
    let (kind, flags) = (byte1 >> 4, byte1 & 0x0f);
    match kind {
        0 | 15 => Err(HeaderViolation::ReservedPacketType(kind)),
        3 if flags & 0b0110 == 0b0110 => Err(HeaderViolation::PublishQos3),
        3 => Ok(()),
        6 | 8 | 10 if flags == 0b0010 => Ok(()),
        _ if flags == 0 && !matches!(kind, 6 | 8 | 10) => Ok(()),
        _ => Err(HeaderViolation::FixedHeaderFlags { kind, flags }),
    }
}

/// Judges the first packet of a connection from its leading bytes (everything the client sent so
/// far). `max_len` caps the CONNECT's remaining length: a CONNECT is a client id, a user name and
/// a SAS token, so an unauthenticated client gets no room for more.
pub fn inspect_connect(bytes: &[u8], max_len: usize) -> ConnectHeader {
    let Some(&byte1) = bytes.first() else {
        return ConnectHeader::Incomplete;
    };
    if byte1 >> 4 != 1 {
        return ConnectHeader::Violation(match check_fixed_header(byte1) {
            Err(HeaderViolation::ReservedPacketType(k)) => HeaderViolation::ReservedPacketType(k),
            _ => HeaderViolation::NotConnect(byte1 >> 4),
        });
    }
    if let Err(v) = check_fixed_header(byte1) {
        return ConnectHeader::Violation(v);
    }
    let (len, len_bytes) = match remaining_length(bytes) {
        Ok(Some(l)) => l,
        Ok(None) => return ConnectHeader::Incomplete,
        Err(v) => return ConnectHeader::Violation(v),
    };
    if len > max_len {
        return ConnectHeader::Violation(HeaderViolation::ConnectTooLarge { len, max: max_len });
    }
    let body = &bytes[1 + len_bytes..];
    // Protocol name: a two-byte length, then "MQTT" (3.1.1) or "MQIsdp" (3.1).
    let need = |n: usize| {
        if n > len {
            Some(ConnectHeader::Violation(HeaderViolation::Truncated))
        } else if n > body.len() {
            Some(ConnectHeader::Incomplete)
        } else {
            None
        }
    };
    if let Some(r) = need(2) {
        return r;
    }
    let name_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    if name_len > 6 {
        return ConnectHeader::Violation(HeaderViolation::ProtocolName(format!("<{name_len} bytes>")));
    }
    // Name, level, flags.
    if let Some(r) = need(2 + name_len + 2) {
        return r;
    }
    let name = &body[2..2 + name_len];
    let level = body[2 + name_len];
    let flags = body[3 + name_len];
    match name {
        b"MQTT" if level == PROTOCOL_LEVEL => {}
        b"MQTT" | b"MQIsdp" => return ConnectHeader::UnacceptableLevel { level },
        other => {
            return ConnectHeader::Violation(HeaderViolation::ProtocolName(
                String::from_utf8_lossy(other).into_owned(),
            ))
        }
    }
    let violation = if flags & 0b0000_0001 != 0 {
        Some(HeaderViolation::ReservedConnectFlag)
    } else if flags & 0b0100_0000 != 0 && flags & 0b1000_0000 == 0 {
        Some(HeaderViolation::PasswordWithoutUsername)
    } else if flags & 0b0000_0100 == 0 && flags & 0b0011_1000 != 0 {
        Some(HeaderViolation::WillFlags)
    } else if flags & 0b0001_1000 == 0b0001_1000 {
        Some(HeaderViolation::WillQos3)
    } else {
        None
    };
    match violation {
        Some(v) => ConnectHeader::Violation(v),
        None => ConnectHeader::Acceptable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CONNECT with the given protocol name, level and flags (and an empty client id).
    fn connect(name: &[u8], level: u8, flags: u8) -> Vec<u8> {
        let mut body = vec![0, name.len() as u8];
        body.extend_from_slice(name);
        body.extend_from_slice(&[level, flags, 0, 60, 0, 0]);
        let mut p = vec![0x10, body.len() as u8];
        p.extend(body);
        p
    }

    #[test]
    fn a_311_connect_is_acceptable_and_judged_as_soon_as_possible() {
        let p = connect(b"MQTT", 4, 0b1100_0010);
        assert_eq!(inspect_connect(&p, 1024), ConnectHeader::Acceptable);
        // Every prefix short of the flags byte needs more bytes; none is misjudged.
        for n in 0..10 {
            assert_eq!(inspect_connect(&p[..n], 1024), ConnectHeader::Incomplete, "{n}");
        }
        assert_eq!(inspect_connect(&p[..10], 1024), ConnectHeader::Acceptable);
        // A will with QoS 1 and retain is valid.
        assert_eq!(
            inspect_connect(&connect(b"MQTT", 4, 0b0010_1110), 1024),
            ConnectHeader::Acceptable
        );
    }

    #[test]
    fn other_versions_get_connack_0x01() {
        for level in [0, 3, 5, 255] {
            assert_eq!(
                inspect_connect(&connect(b"MQTT", level, 0b10), 1024),
                ConnectHeader::UnacceptableLevel { level }
            );
        }
        assert_eq!(
            inspect_connect(&connect(b"MQIsdp", 3, 0b10), 1024),
            ConnectHeader::UnacceptableLevel { level: 3 }
        );
    }

    #[test]
    fn violations_close() {
        let v = |p: &[u8]| match inspect_connect(p, 1024) {
            ConnectHeader::Violation(v) => v,
            other => panic!("{other:?}"),
        };
        assert_eq!(v(&connect(b"MQTT", 4, 0b11)), HeaderViolation::ReservedConnectFlag);
        assert_eq!(
            v(&connect(b"MQTT", 4, 0b0100_0010)),
            HeaderViolation::PasswordWithoutUsername
        );
        assert_eq!(v(&connect(b"MQTT", 4, 0b0000_1010)), HeaderViolation::WillFlags);
        assert_eq!(v(&connect(b"MQTT", 4, 0b0010_0010)), HeaderViolation::WillFlags);
        assert_eq!(v(&connect(b"MQTT", 4, 0b0001_1110)), HeaderViolation::WillQos3);
        assert_eq!(
            v(&connect(b"MQTX", 4, 0b10)),
            HeaderViolation::ProtocolName("MQTX".into())
        );
        assert!(matches!(
            v(&connect(b"MQTTMQTT", 4, 0)),
            HeaderViolation::ProtocolName(_)
        ));
        // Fixed header flags of a CONNECT must be zero.
        let mut p = connect(b"MQTT", 4, 0b10);
        p[0] = 0x12;
        assert_eq!(v(&p), HeaderViolation::FixedHeaderFlags { kind: 1, flags: 2 });
        // Not a CONNECT first; reserved type.
        assert_eq!(v(&[0xc0, 0]), HeaderViolation::NotConnect(12));
        assert_eq!(v(&[0x00, 0]), HeaderViolation::ReservedPacketType(0));
        assert_eq!(v(&[0xf0, 0]), HeaderViolation::ReservedPacketType(15));
        // Remaining length: five bytes is malformed; over the cap is refused before it arrives.
        assert_eq!(
            v(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]),
            HeaderViolation::RemainingLength
        );
        assert_eq!(
            v(&[0x10, 0x80, 0x80, 0x04]),
            HeaderViolation::ConnectTooLarge { len: 65536, max: 1024 }
        );
        // The packet ends before the flags byte.
        assert_eq!(v(&[0x10, 0x04, 0x00, 0x04, b'M', b'Q']), HeaderViolation::Truncated);
        assert_eq!(v(&[0x10, 0x00]), HeaderViolation::Truncated);
    }

    #[test]
    fn fixed_header_flags_per_type() {
        for ok in [0x30, 0x32, 0x3b, 0x40, 0x62, 0x82, 0xa2, 0xc0, 0xe0] {
            assert_eq!(check_fixed_header(ok), Ok(()), "{ok:#04x}");
        }
        assert_eq!(check_fixed_header(0x36), Err(HeaderViolation::PublishQos3));
        assert_eq!(
            check_fixed_header(0x80),
            Err(HeaderViolation::FixedHeaderFlags { kind: 8, flags: 0 })
        );
        assert_eq!(
            check_fixed_header(0xc1),
            Err(HeaderViolation::FixedHeaderFlags { kind: 12, flags: 1 })
        );
        assert_eq!(
            check_fixed_header(0x60),
            Err(HeaderViolation::FixedHeaderFlags { kind: 6, flags: 0 })
        );
    }
}
