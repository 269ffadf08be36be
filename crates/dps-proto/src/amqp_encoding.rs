//! A bounds check of AMQP 1.0 type encodings (AMQP 1.0 §1.2), run on every frame a client sends
//! before serde_amqp decodes it. serde_amqp trusts the length and count fields it reads: a
//! string, binary or symbol claiming 4 GiB makes it allocate (and zero) that much before noticing
//! the bytes are not there, and an array claiming a billion zero-width elements makes it build a
//! billion values — from a frame of a few dozen bytes (found by the `amqp_connection` fuzz
//! target). This walk only checks that every size and count fits in the bytes that are there and
//! that nesting stays shallow; what the values mean is left to the decoder.
//!
//! No crate offers this check; it is small because the encoding says each value's width in the
//! high nibble of its constructor byte (§1.2.4 "subcategory").

/// Deepest nesting of described values, lists, maps and arrays accepted. Performatives and
/// message sections nest a handful of levels; the decoder recurses once per level.
pub const MAX_DEPTH: u32 = 32;

/// Why an encoding was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodingError {
    /// A value runs past the end of its frame or of the compound value around it.
    #[error("AMQP value at byte {0} runs past its end")]
    Truncated(usize),
    /// A list, map or array claims more elements than it has bytes.
    #[error("AMQP compound at byte {0} claims {1} elements in {2} bytes")]
    Count(usize, u32, usize),
    /// A list, map or array whose elements do not fill its declared size exactly: the decoders
    /// read such slack bytes as more fields, unchecked.
    #[error("AMQP compound at byte {0} is not filled exactly by its elements")]
    Slack(usize),
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("AMQP values nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// A constructor byte of no known subcategory.
    #[error("AMQP constructor 0x{0:02x} at byte {1} is not a type")]
    Constructor(u8, usize),
    /// A performative or message section that is not a described value (constructor `0x00`),
    /// or bytes after a SASL frame's performative.
    #[error("AMQP frame body at byte {0} is not a described value")]
    NotDescribed(usize),
    /// A transfer that continues in the next frame: messages must fit in one frame here.
    #[error("AMQP transfer split over several frames (messages must fit in one frame of the announced size)")]
    MultiFrame,
}

/// Checks the values of an AMQP frame body (after the frame header): one performative, then,
/// for a transfer, the message sections of its payload. A transfer with `more` set is refused:
/// the server announces a frame size that fits any message it accepts, and a message split over
/// frames would reach the decoder unchecked.
///
/// Returns the length of the performative: the payload (a transfer's message) follows it.
pub fn check_amqp_body(body: &[u8]) -> Result<usize, EncodingError> {
    if body.is_empty() {
        return Ok(0); // a heartbeat
    }
    let mut pos = 0;
    let transfer = is_transfer(body);
    described(body, &mut pos)?;
    if transfer && transfer_more(&body[..pos]) {
        return Err(EncodingError::MultiFrame);
    }
    let performative = pos;
    // The payload (a transfer's message sections; nothing after other performatives): each
    // section is a described value too.
    while pos < body.len() {
        described(body, &mut pos)?;
    }
    Ok(performative)
}

/// Checks a SASL frame body: exactly one SASL performative, nothing after it.
pub fn check_sasl_body(body: &[u8]) -> Result<(), EncodingError> {
    let mut pos = 0;
    described(body, &mut pos)?;
    if pos != body.len() {
        return Err(EncodingError::NotDescribed(pos));
    }
    Ok(())
}

/// Walks one described value at `pos`: the decoders read performatives and sections as such,
/// so a body that is anything else is refused rather than walked with another alignment than
/// theirs.
fn described(body: &[u8], pos: &mut usize) -> Result<(), EncodingError> {
    if body.get(*pos) != Some(&0x00) {
        return Err(EncodingError::NotDescribed(*pos));
    }
    walk(body, pos, body.len(), 0)
}

/// Whether the performative is a transfer: descriptor ulong 0x14 (smallulong or ulong) or the
/// symbol `amqp:transfer:list`.
fn is_transfer(body: &[u8]) -> bool {
    const SYMBOL: &[u8] = b"amqp:transfer:list";
    match body {
        [0x00, 0x53, 0x14, ..] => true,
        [0x00, 0x80, rest @ ..] => rest.get(..8) == Some(&[0, 0, 0, 0, 0, 0, 0, 0x14][..]),
        [0x00, 0xa3, n, rest @ ..] => usize::from(*n) == SYMBOL.len() && rest.starts_with(SYMBOL),
        _ => false,
    }
}

/// Whether a transfer performative (already walked, so well-formed) has `more` (field 5) true.
fn transfer_more(performative: &[u8]) -> bool {
    // Skip the descriptor.
    let mut pos = 1;
    if walk(performative, &mut pos, performative.len(), 0).is_err() {
        return false;
    }
    let Some(&list) = performative.get(pos) else {
        return false;
    };
    let (count, mut at) = match list {
        0x45 => return false,
        0xc0 => (performative.get(pos + 2).copied().map(u32::from).unwrap_or(0), pos + 3),
        0xd0 => match performative.get(pos + 5..pos + 9) {
            Some(b) => (u32::from_be_bytes([b[0], b[1], b[2], b[3]]), pos + 9),
            None => return false,
        },
        _ => return false,
    };
    for i in 0..count.min(6) {
        if i == 5 {
            return matches!(performative.get(at..), Some([0x41, ..]) | Some([0x56, 0x01, ..]));
        }
        if walk(performative, &mut at, performative.len(), 0).is_err() {
            return false;
        }
    }
    false
}

/// Advances `pos` over `n` bytes that must lie within `..end`; where they start.
fn take(pos: &mut usize, end: usize, n: usize) -> Result<usize, EncodingError> {
    let start = *pos;
    *pos = start
        .checked_add(n)
        .filter(|e| *e <= end)
        .ok_or(EncodingError::Truncated(start))?;
    Ok(start)
}

fn u8_at(buf: &[u8], pos: &mut usize, end: usize) -> Result<u8, EncodingError> {
    let at = take(pos, end, 1)?;
    Ok(buf[at])
}

fn u32_at(buf: &[u8], pos: &mut usize, end: usize) -> Result<u32, EncodingError> {
    let at = take(pos, end, 4)?;
    Ok(u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]))
}

/// Walks one value starting at `pos` (its constructor), within `..end`.
fn walk(buf: &[u8], pos: &mut usize, end: usize, depth: u32) -> Result<(), EncodingError> {
    if depth > MAX_DEPTH {
        return Err(EncodingError::TooDeep);
    }
    let at = *pos;
    let constructor = u8_at(buf, pos, end)?;
    if constructor == 0x00 {
        walk(buf, pos, end, depth + 1)?; // descriptor
        return walk(buf, pos, end, depth + 1); // described value
    }
    body_of(buf, pos, end, constructor, at, depth)
}

/// Walks the bytes after a constructor.
fn body_of(
    buf: &[u8],
    pos: &mut usize,
    end: usize,
    constructor: u8,
    at: usize,
    depth: u32,
) -> Result<(), EncodingError> {
    match constructor >> 4 {
        0x4 => Ok(()),
        0x5 => take(pos, end, 1).map(drop),
        0x6 => take(pos, end, 2).map(drop),
        0x7 => take(pos, end, 4).map(drop),
        0x8 => take(pos, end, 8).map(drop),
        0x9 => take(pos, end, 16).map(drop),
        0xa => {
            let n = u8_at(buf, pos, end)?;
            take(pos, end, usize::from(n)).map(drop)
        }
        0xb => {
            let n = u32_at(buf, pos, end)?;
            take(pos, end, n as usize).map(drop)
        }
        0xc..=0xf => {
            let wide = matches!(constructor >> 4, 0xd | 0xf);
            let size = if wide {
                u32_at(buf, pos, end)? as usize
            } else {
                usize::from(u8_at(buf, pos, end)?)
            };
            let inner_end = pos
                .checked_add(size)
                .filter(|e| *e <= end)
                .ok_or(EncodingError::Truncated(at))?;
            let count = if wide {
                u32_at(buf, pos, inner_end)?
            } else {
                u32::from(u8_at(buf, pos, inner_end)?)
            };
            if count as usize > size {
                return Err(EncodingError::Count(at, count, size));
            }
            if constructor >> 4 >= 0xe {
                // An array: one element constructor (possibly described), then the elements.
                let element_at = *pos;
                let mut element = u8_at(buf, pos, inner_end)?;
                if element == 0x00 {
                    walk(buf, pos, inner_end, depth + 1)?;
                    element = u8_at(buf, pos, inner_end)?;
                }
                if element == 0x00 {
                    return Err(EncodingError::Constructor(element, element_at));
                }
                for _ in 0..count {
                    body_of(buf, pos, inner_end, element, element_at, depth + 1)?;
                }
            } else {
                for _ in 0..count {
                    walk(buf, pos, inner_end, depth + 1)?;
                }
            }
            if *pos != inner_end {
                return Err(EncodingError::Slack(at));
            }
            Ok(())
        }
        _ => Err(EncodingError::Constructor(constructor, at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_values_pass() {
        // open: described(ulong 0x10) list8 of [str8 "c", null]
        let open = [0x00, 0x53, 0x10, 0xc0, 0x05, 0x02, 0xa1, 0x01, b'c', 0x40];
        assert_eq!(check_amqp_body(&open), Ok(open.len()));
        // sasl-mechanisms: described(0x40) list8 [array8 of 2 symbols]; described list8 [array8 of 3 ubytes]
        let sym_arr = [
            0x00, 0x53, 0x40, 0xc0, 0x09, 0x01, 0xe0, 0x06, 0x02, 0xa3, 0x01, b'a', 0x01, b'b',
        ];
        assert_eq!(check_sasl_body(&sym_arr), Ok(()));
        let arr = [0x00, 0x53, 0x40, 0xc0, 0x08, 0x01, 0xe0, 0x05, 0x03, 0x50, 1, 2, 3];
        assert_eq!(check_sasl_body(&arr), Ok(()));
        assert_eq!(check_amqp_body(&[]), Ok(0));
    }

    #[test]
    fn sizes_and_counts_past_the_bytes_are_refused() {
        let described = |value: &[u8]| {
            let mut v = vec![0x00, 0x53, 0x41];
            v.extend_from_slice(value);
            v
        };
        let refused = |value: &[u8]| check_sasl_body(&described(value));
        // str32 claiming 4 GiB
        assert!(matches!(
            refused(&[0xb1, 0xff, 0xff, 0xff, 0xff, b'x']),
            Err(EncodingError::Truncated(_))
        ));
        // array32 of a billion nulls in 9 bytes
        let nulls = [0xf0, 0x00, 0x00, 0x00, 0x05, 0x3b, 0x9a, 0xca, 0x00, 0x40];
        assert!(matches!(
            refused(&nulls),
            Err(EncodingError::Count(..)) | Err(EncodingError::Truncated(_))
        ));
        // list8 claiming 200 elements in 2 bytes
        assert!(matches!(
            refused(&[0xc0, 0x02, 200, 0x40]),
            Err(EncodingError::Count(..))
        ));
        // list32 whose size runs past the frame
        assert!(refused(&[0xd0, 0, 0, 1, 0, 0, 0, 0, 1, 0x40]).is_err());
        assert!(matches!(refused(&[0x30]), Err(EncodingError::Constructor(0x30, 3))));
        // The fuzzer's inputs: a descriptor whose string claims ~1 GB; a bare ulong followed by
        // a list32 claiming 3.5 GB (serde_amqp read the ulong as a descriptor).
        assert!(check_sasl_body(&[0x00, 0xb3, 0x53, 0xb3, 0x3f, 0x41, 0x4d, 0x51, 0x50]).is_err());
        let bare = [0x53, 0x41, 0x00, 0xd0, 0xd0, 0xd0, 0xd0, 0xd0, 0xff];
        assert_eq!(check_sasl_body(&bare), Err(EncodingError::NotDescribed(0)));
        // A list whose declared size holds more than its elements (the fuzzer's: a list8 of size 7
        // and count 0 around a str32 claiming 3 GB, which serde_amqp read as a field).
        let slack = [0xc0, 0x07, 0x00, 0xb1, 0xb6, 0x01, 0xa3, 0x09, 0x41];
        assert_eq!(refused(&slack), Err(EncodingError::Slack(3)));
        // Nothing may follow a SASL performative.
        assert_eq!(
            check_sasl_body(&described(&[0x40, 0x40])),
            Err(EncodingError::NotDescribed(4))
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let mut deep = vec![0x00, 0x53, 0x41];
        for _ in 0..100 {
            deep.extend_from_slice(&[0x00, 0x53, 0x01]);
        }
        deep.push(0x40);
        assert_eq!(check_sasl_body(&deep), Err(EncodingError::TooDeep));
    }

    #[test]
    fn split_transfers_are_refused() {
        // transfer: described(0x14) list8 [uint0 handle, uint0 id, vbin8 tag "t", uint0 format, false settled, true more]
        let mut t = vec![
            0x00, 0x53, 0x14, 0xc0, 0x00, 0x06, 0x43, 0x43, 0xa0, 0x01, b't', 0x43, 0x42, 0x41,
        ];
        t[4] = (t.len() - 5) as u8;
        assert_eq!(check_amqp_body(&t), Err(EncodingError::MultiFrame));
        let last = t.len() - 1;
        t[last] = 0x42; // more = false
                        // followed by a data section with 2 bytes
        let performative = t.len();
        t.extend_from_slice(&[0x00, 0x53, 0x75, 0xa0, 0x02, b'h', b'i']);
        assert_eq!(check_amqp_body(&t), Ok(performative));
    }
}
