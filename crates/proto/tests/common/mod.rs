//! A minimal protobuf writer for building test inputs, independent of the decoder under test.

/// Builds one message field by field.
#[derive(Default, Clone)]
pub struct Msg {
    bytes: Vec<u8>,
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

impl Msg {
    pub fn new() -> Self {
        Self::default()
    }

    fn key(&mut self, field: u32, wire_type: u8) {
        varint(
            &mut self.bytes,
            (u64::from(field) << 3) | u64::from(wire_type),
        );
    }

    pub fn varint(mut self, field: u32, value: u64) -> Self {
        self.key(field, 0);
        varint(&mut self.bytes, value);
        self
    }

    pub fn int(self, field: u32, value: i64) -> Self {
        self.varint(field, value as u64)
    }

    pub fn bool(self, field: u32, value: bool) -> Self {
        self.varint(field, u64::from(value))
    }

    pub fn bytes(mut self, field: u32, value: &[u8]) -> Self {
        self.key(field, 2);
        varint(&mut self.bytes, value.len() as u64);
        self.bytes.extend_from_slice(value);
        self
    }

    pub fn str(self, field: u32, value: &str) -> Self {
        self.bytes(field, value.as_bytes())
    }

    pub fn msg(self, field: u32, value: Msg) -> Self {
        self.bytes(field, &value.bytes)
    }

    pub fn fixed64(mut self, field: u32, value: u64) -> Self {
        self.key(field, 1);
        self.bytes.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn fixed32(mut self, field: u32, value: u32) -> Self {
        self.key(field, 5);
        self.bytes.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// A `map<string, string>` (or bytes) entry.
    pub fn entry(self, field: u32, key: &str, value: &[u8]) -> Self {
        self.msg(field, Msg::new().str(1, key).bytes(2, value))
    }

    /// A `map<string, Quantity>` entry.
    pub fn quantity_entry(self, field: u32, key: &str, quantity: &str) -> Self {
        self.msg(
            field,
            Msg::new().str(1, key).msg(2, Msg::new().str(1, quantity)),
        )
    }

    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// `k8s\0` + `runtime.Unknown{typeMeta{apiVersion, kind}, raw}`.
pub fn envelope(api_version: &str, kind: &str, raw: Msg) -> Vec<u8> {
    let unknown = Msg::new()
        .msg(1, Msg::new().str(1, api_version).str(2, kind))
        .msg(2, raw);
    let mut body = b"k8s\0".to_vec();
    body.extend(unknown.into_bytes());
    body
}
