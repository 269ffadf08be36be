//! TPM 2.0 marshalling (Part 2): big-endian integers and `TPM2B` buffers (u16 size ‖ bytes).
//! Only what the DPS structures need; every read is bounds-checked and names what it was reading.

use crate::TpmError;

/// A cursor over marshalled bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], TpmError> {
        if self.remaining() < n {
            return Err(TpmError::Truncated {
                what,
                offset: self.pos,
                needed: n - self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, TpmError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, TpmError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A `TPM2B`: its content, without the size prefix.
    pub(crate) fn tpm2b(&mut self, what: &'static str) -> Result<&'a [u8], TpmError> {
        let n = self.u16(what)? as usize;
        self.bytes(n, what)
    }

    /// Fails when bytes are left over.
    pub(crate) fn finish(&self, what: &'static str) -> Result<(), TpmError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(TpmError::TrailingBytes { what, extra }),
        }
    }
}

/// Appends `u16(len) ‖ content`.
pub(crate) fn put_tpm2b(out: &mut Vec<u8>, content: &[u8], what: &'static str) -> Result<(), TpmError> {
    let len = u16::try_from(content.len()).map_err(|_| TpmError::TooLong {
        what,
        len: content.len(),
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(content);
    Ok(())
}

/// `u16(len) ‖ content` as a new buffer.
pub(crate) fn tpm2b(content: &[u8], what: &'static str) -> Result<Vec<u8>, TpmError> {
    let mut out = Vec::with_capacity(content.len() + 2);
    put_tpm2b(&mut out, content, what)?;
    Ok(out)
}

/// The content of a whole-buffer `TPM2B`, checking that the size prefix covers exactly the rest.
pub(crate) fn strip_tpm2b<'a>(buf: &'a [u8], what: &'static str) -> Result<&'a [u8], TpmError> {
    let mut r = Reader::new(buf);
    let declared = r.u16(what)? as usize;
    if declared != r.remaining() {
        return Err(TpmError::SizeMismatch {
            what,
            declared,
            actual: r.remaining(),
        });
    }
    r.bytes(declared, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounded_and_named() {
        let mut r = Reader::new(&[0x00, 0x03, 0xaa, 0xbb]);
        let e = r.tpm2b("field").unwrap_err();
        assert_eq!(
            e,
            TpmError::Truncated {
                what: "field",
                offset: 2,
                needed: 1
            }
        );
        assert_eq!(strip_tpm2b(&[0, 2, 1, 2], "x").unwrap(), &[1, 2]);
        assert!(matches!(
            strip_tpm2b(&[0, 3, 1, 2], "x"),
            Err(TpmError::SizeMismatch {
                declared: 3,
                actual: 2,
                ..
            })
        ));
        assert_eq!(tpm2b(&[9], "x").unwrap(), vec![0, 1, 9]);
        assert!(matches!(
            tpm2b(&vec![0; 70_000], "big"),
            Err(TpmError::TooLong { len: 70_000, .. })
        ));
    }
}
