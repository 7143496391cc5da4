//! Protobuf wire format: a bounds-checked reader over one message's bytes.
//!
//! Only the four wire types proto2 messages use are accepted. Groups (wire types 3 and 4) are
//! deprecated and never produced by Kubernetes' generator, so they are refused rather than
//! skipped: skipping would need its own nesting bookkeeping for no benefit.

use crate::ProtoError;

/// Largest field number protobuf allows (2^29 - 1).
const MAX_FIELD_NUMBER: u64 = (1 << 29) - 1;

/// One field's payload as it sits on the wire.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum WireValue<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    Fixed32(u32),
}

impl WireValue<'_> {
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            WireValue::Varint(_) => "varint",
            WireValue::Fixed64(_) => "64-bit",
            WireValue::Len(_) => "length-delimited",
            WireValue::Fixed32(_) => "32-bit",
        }
    }
}

/// Iterates over `(field number, value)` pairs of one message.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn next_field(&mut self) -> Result<Option<(u32, WireValue<'a>)>, ProtoError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 || number > MAX_FIELD_NUMBER {
            return Err(ProtoError::Malformed(format!(
                "invalid field number {number}"
            )));
        }
        // Checked against MAX_FIELD_NUMBER above, so it fits.
        let number = number as u32;
        let value = match key & 7 {
            0 => WireValue::Varint(self.varint()?),
            1 => WireValue::Fixed64(u64::from_le_bytes(self.fixed::<8>()?)),
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| truncated())?;
                let end = self.pos.checked_add(len).ok_or_else(truncated)?;
                let bytes = self.buf.get(self.pos..end).ok_or_else(truncated)?;
                self.pos = end;
                WireValue::Len(bytes)
            }
            5 => WireValue::Fixed32(u32::from_le_bytes(self.fixed::<4>()?)),
            3 | 4 => {
                return Err(ProtoError::Malformed(format!(
                    "field {number} uses the group wire type, which is not supported"
                )))
            }
            other => {
                return Err(ProtoError::Malformed(format!(
                    "field {number} has invalid wire type {other}"
                )))
            }
        };
        Ok(Some((number, value)))
    }

    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut value: u64 = 0;
        for index in 0..10 {
            let byte = *self.buf.get(self.pos).ok_or_else(truncated)?;
            self.pos += 1;
            let bits = u64::from(byte & 0x7f);
            // The tenth byte may only carry the single remaining bit of a u64.
            if index == 9 && bits > 1 {
                return Err(ProtoError::Malformed("varint overflows 64 bits".into()));
            }
            value |= bits << (7 * index);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtoError::Malformed("varint longer than 10 bytes".into()))
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], ProtoError> {
        let end = self.pos.checked_add(N).ok_or_else(truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or_else(truncated)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        self.pos = end;
        Ok(out)
    }
}

/// Decodes a packed run of varints (proto2 `[packed=true]` or proto3 repeated scalars).
pub(crate) fn packed_varints(bytes: &[u8]) -> Result<Vec<u64>, ProtoError> {
    let mut reader = Reader::new(bytes);
    let mut values = Vec::new();
    while reader.pos < reader.buf.len() {
        values.push(reader.varint()?);
    }
    Ok(values)
}

fn truncated() -> ProtoError {
    ProtoError::Malformed("message is truncated".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_wire_type() {
        let bytes = [
            0x08, 0x96, 0x01, // 1: varint 150
            0x11, 1, 0, 0, 0, 0, 0, 0, 0, // 2: fixed64 1
            0x1a, 0x02, b'h', b'i', // 3: "hi"
            0x25, 2, 0, 0, 0, // 4: fixed32 2
        ];
        let mut reader = Reader::new(&bytes);
        assert_eq!(
            reader.next_field().unwrap(),
            Some((1, WireValue::Varint(150)))
        );
        assert_eq!(
            reader.next_field().unwrap(),
            Some((2, WireValue::Fixed64(1)))
        );
        assert_eq!(
            reader.next_field().unwrap(),
            Some((3, WireValue::Len(b"hi")))
        );
        assert_eq!(
            reader.next_field().unwrap(),
            Some((4, WireValue::Fixed32(2)))
        );
        assert_eq!(reader.next_field().unwrap(), None);
    }

    #[test]
    fn max_varint_and_overflow() {
        let max = [
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        let mut reader = Reader::new(&max);
        assert_eq!(
            reader.next_field().unwrap(),
            Some((1, WireValue::Varint(u64::MAX)))
        );
        let overflow = [
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
        ];
        assert!(Reader::new(&overflow).next_field().is_err());
        let eleven = [
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x81, 0x00,
        ];
        assert!(Reader::new(&eleven).next_field().is_err());
    }

    #[test]
    fn rejects_groups_bad_wire_types_and_truncation() {
        assert!(Reader::new(&[0x0b]).next_field().is_err()); // start group
        assert!(Reader::new(&[0x0c]).next_field().is_err()); // end group
        assert!(Reader::new(&[0x0e]).next_field().is_err()); // wire type 6
        assert!(Reader::new(&[0x00, 0x01]).next_field().is_err()); // field number 0
        assert!(Reader::new(&[0x0a, 0x05, b'a']).next_field().is_err()); // short bytes
        assert!(Reader::new(&[0x09, 0x00]).next_field().is_err()); // short fixed64
        assert!(Reader::new(&[0x08]).next_field().is_err()); // missing varint
        let huge_len = [
            0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert!(Reader::new(&huge_len).next_field().is_err());
    }

    #[test]
    fn packed_varints_decode() {
        assert_eq!(packed_varints(&[1, 0x96, 0x01]).unwrap(), vec![1, 150]);
        assert!(packed_varints(&[0x96]).is_err());
    }
}
