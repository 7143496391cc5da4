//! SPDY/3.1 framing, as much of it as the Kubernetes streaming protocols use (client-go
//! speaks it through moby/spdystream for port forwarding).
//!
//! Every frame has an 8-byte header. A control frame starts with the control bit, the
//! version (3) and the frame type; a data frame with a 31-bit stream id. Both then carry
//! 8 bits of flags and a 24-bit payload length. Header blocks (in SYN_STREAM, SYN_REPLY
//! and HEADERS) are a count followed by length-prefixed names and values, compressed with
//! zlib primed with the SPDY/3 dictionary; each direction keeps one compression context for
//! the whole connection, every block ending with a sync flush. So frames of one direction
//! must be encoded in the order they are sent: one [`FrameEncoder`] per connection, used
//! by the one task that writes.
//!
//! Flow control (WINDOW_UPDATE, SETTINGS_INITIAL_WINDOW_SIZE) is parsed but not acted on:
//! spdystream neither sends nor honours windows, and the kubelet has no other client.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

pub(crate) const VERSION: u16 = 3;
/// The FIN flag of data frames and of SYN_STREAM, SYN_REPLY and HEADERS.
const FLAG_FIN: u8 = 0x01;
/// SYN_STREAM only: the sender will not receive on this stream.
const FLAG_UNIDIRECTIONAL: u8 = 0x02;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes used here.
pub(crate) const RST_PROTOCOL_ERROR: u32 = 1;
pub(crate) const RST_INVALID_STREAM: u32 = 2;

const HEADER_LEN: usize = 8;
/// A header block larger than this once decompressed ends the connection: the streams
/// port forwarding opens carry three short headers.
const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// Why the byte stream is not SPDY/3.1 this side can follow; the connection ends.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpdyError {
    #[error("unsupported SPDY version {0}")]
    UnsupportedVersion(u16),
    #[error("malformed {what} frame: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("header compression: {0}")]
    Compression(String),
}

fn malformed(what: &'static str, reason: impl Into<String>) -> SpdyError {
    SpdyError::Malformed {
        what,
        reason: reason.into(),
    }
}

/// Header names (lower case, as SPDY requires) and values in the order sent. A value with
/// several entries keeps them NUL-separated, as on the wire.
pub(crate) type Headers = Vec<(String, String)>;

/// The first value of header `name` (names compare case-insensitively).
pub(crate) fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split('\0').next().unwrap_or(""))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
    SynStream {
        stream_id: u32,
        associated_to: u32,
        /// 0 (highest) to 7.
        priority: u8,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    /// (flags, id, value) per entry.
    Settings {
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    /// A control frame type this side does not know; SPDY says to ignore it.
    Unknown {
        frame_type: u16,
    },
}

/// The SPDY/3 header compression dictionary (section 2.6.10.1 of the draft): these
/// names, each with a 4-byte big-endian length before it, then [`DICTIONARY_TAIL`] as is.
/// Its Adler-32 is [`DICTIONARY_ADLER32`], which every peer's zlib header names. (Built
/// from the words rather than kept as 1423 opaque bytes; the tests check the checksum.)
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
    "502504505",
    "203 Non-Authoritative Information",
    "204 No Content",
    "301 Moved Permanently",
    "400 Bad Request",
    "401 Unauthorized",
    "403 Forbidden",
    "404 Not Found",
    "500 Internal Server Error",
    "501 Not Implemented",
    "503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,",
    "application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

pub(crate) const DICTIONARY_ADLER32: u32 = 0xe3c6_a7c2;

fn dictionary() -> &'static [u8] {
    static DICTIONARY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DICTIONARY.get_or_init(|| {
        let mut bytes = Vec::with_capacity(1423);
        for word in DICTIONARY_WORDS {
            bytes.extend_from_slice(&(word.len() as u32).to_be_bytes());
            bytes.extend_from_slice(word.as_bytes());
        }
        bytes.extend_from_slice(DICTIONARY_TAIL.as_bytes());
        bytes
    })
}

/// Reads frames of one direction of a connection.
pub(crate) struct FrameDecoder {
    inflate: Decompress,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder {
            inflate: Decompress::new(true),
        }
    }
}

impl FrameDecoder {
    /// Takes one whole frame off the front of `buf`; `Ok(None)` while it is incomplete.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let length = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if buf.len() < HEADER_LEN + length {
            buf.reserve(HEADER_LEN + length - buf.len());
            return Ok(None);
        }
        let first = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let flags = buf[4];
        buf.advance(HEADER_LEN);
        let mut payload = buf.split_to(length).freeze();
        if first & 0x8000_0000 == 0 {
            let stream_id = first & 0x7fff_ffff;
            if stream_id == 0 {
                return Err(malformed("DATA", "stream id 0"));
            }
            return Ok(Some(Frame::Data {
                stream_id,
                fin: flags & FLAG_FIN != 0,
                data: payload,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(SpdyError::UnsupportedVersion(version));
        }
        let frame_type = (first & 0xffff) as u16;
        let fin = flags & FLAG_FIN != 0;
        let frame = match frame_type {
            TYPE_SYN_STREAM => {
                need(&payload, 10, "SYN_STREAM")?;
                let stream_id = payload.get_u32() & 0x7fff_ffff;
                let associated_to = payload.get_u32() & 0x7fff_ffff;
                let priority = payload.get_u8() >> 5;
                let _slot = payload.get_u8();
                if stream_id == 0 {
                    return Err(malformed("SYN_STREAM", "stream id 0"));
                }
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers: self.header_block(&payload)?,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                let what = if frame_type == TYPE_SYN_REPLY {
                    "SYN_REPLY"
                } else {
                    "HEADERS"
                };
                need(&payload, 4, what)?;
                let stream_id = payload.get_u32() & 0x7fff_ffff;
                let headers = self.header_block(&payload)?;
                if frame_type == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                need(&payload, 8, "RST_STREAM")?;
                Frame::RstStream {
                    stream_id: payload.get_u32() & 0x7fff_ffff,
                    status: payload.get_u32(),
                }
            }
            TYPE_SETTINGS => {
                need(&payload, 4, "SETTINGS")?;
                let count = payload.get_u32() as usize;
                if payload.len() != count.saturating_mul(8) {
                    return Err(malformed(
                        "SETTINGS",
                        format!("{count} entries in {} bytes", payload.len()),
                    ));
                }
                let entries = (0..count)
                    .map(|_| {
                        let flags_and_id = payload.get_u32();
                        (
                            (flags_and_id >> 24) as u8,
                            flags_and_id & 0xff_ffff,
                            payload.get_u32(),
                        )
                    })
                    .collect();
                Frame::Settings { entries }
            }
            TYPE_PING => {
                need(&payload, 4, "PING")?;
                Frame::Ping {
                    id: payload.get_u32(),
                }
            }
            TYPE_GOAWAY => {
                need(&payload, 8, "GOAWAY")?;
                Frame::GoAway {
                    last_good_stream_id: payload.get_u32() & 0x7fff_ffff,
                    status: payload.get_u32(),
                }
            }
            TYPE_WINDOW_UPDATE => {
                need(&payload, 8, "WINDOW_UPDATE")?;
                Frame::WindowUpdate {
                    stream_id: payload.get_u32() & 0x7fff_ffff,
                    delta: payload.get_u32() & 0x7fff_ffff,
                }
            }
            other => Frame::Unknown { frame_type: other },
        };
        Ok(Some(frame))
    }

    fn header_block(&mut self, compressed: &[u8]) -> Result<Headers, SpdyError> {
        let block = self.inflate(compressed)?;
        parse_header_block(&block)
    }

    /// Decompresses one header block: all of `input`, through the sync flush ending it.
    fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        let mut consumed = 0;
        loop {
            let (in_before, out_before) = (self.inflate.total_in(), out.len());
            let result =
                self.inflate
                    .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync);
            consumed += (self.inflate.total_in() - in_before) as usize;
            match result {
                Ok(Status::Ok | Status::BufError | Status::StreamEnd) => {}
                Err(e) => match e.needs_dictionary() {
                    Some(DICTIONARY_ADLER32) => {
                        self.inflate
                            .set_dictionary(dictionary())
                            .map_err(|e| SpdyError::Compression(e.to_string()))?;
                        continue;
                    }
                    Some(other) => {
                        return Err(SpdyError::Compression(format!(
                            "the peer compresses with an unknown dictionary (Adler-32 {other:#x})"
                        )))
                    }
                    None => return Err(SpdyError::Compression(e.to_string())),
                },
            }
            let progressed =
                consumed > 0 && self.inflate.total_in() > in_before || out.len() > out_before;
            if consumed == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(SpdyError::Compression(format!(
                        "header block larger than {MAX_HEADER_BLOCK} bytes"
                    )));
                }
                out.reserve(out.len().max(256));
            } else if !progressed {
                return Err(SpdyError::Compression(
                    "header block ends in the middle of compressed data".into(),
                ));
            }
        }
    }
}

fn need(payload: &Bytes, len: usize, what: &'static str) -> Result<(), SpdyError> {
    if payload.len() < len {
        return Err(malformed(
            what,
            format!("{} bytes, at least {len} needed", payload.len()),
        ));
    }
    Ok(())
}

fn parse_header_block(mut block: &[u8]) -> Result<Headers, SpdyError> {
    fn take<'a>(block: &mut &'a [u8]) -> Result<&'a [u8], SpdyError> {
        if block.len() < 4 {
            return Err(malformed("header block", "truncated length"));
        }
        let len = block.get_u32() as usize;
        if block.len() < len {
            return Err(malformed("header block", "truncated name or value"));
        }
        let (field, rest) = block.split_at(len);
        *block = rest;
        Ok(field)
    }
    if block.len() < 4 {
        return Err(malformed("header block", "no pair count"));
    }
    let count = block.get_u32() as usize;
    // Each pair takes at least 8 bytes, which bounds the allocation by the input.
    let mut headers = Vec::with_capacity(count.min(block.len() / 8));
    for _ in 0..count {
        let name = take(&mut block)?;
        let value = take(&mut block)?;
        headers.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    Ok(headers)
}

/// Writes frames of one direction of a connection.
pub(crate) struct FrameEncoder {
    deflate: Compress,
}

impl Default for FrameEncoder {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // Fails only when called after compressing has begun; it is not.
        if let Err(e) = deflate.set_dictionary(dictionary()) {
            tracing::error!(error = %e, "priming SPDY header compression failed");
        }
        FrameEncoder { deflate }
    }
}

impl FrameEncoder {
    /// Appends `frame` to `out`.
    pub(crate) fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), SpdyError> {
        let mut payload = Vec::new();
        let (frame_type, flags) = match frame {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                if data.len() > 0xff_ffff {
                    return Err(malformed("DATA", "payload over 16 MiB"));
                }
                out.reserve(HEADER_LEN + data.len());
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u8(if *fin { FLAG_FIN } else { 0 });
                put_u24(out, data.len());
                out.put_slice(data);
                return Ok(());
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                fin,
                unidirectional,
                headers,
            } => {
                payload.put_u32(stream_id & 0x7fff_ffff);
                payload.put_u32(associated_to & 0x7fff_ffff);
                payload.put_u8((priority & 0x7) << 5);
                payload.put_u8(0);
                self.deflate(&header_block(headers), &mut payload)?;
                let mut flags = if *fin { FLAG_FIN } else { 0 };
                if *unidirectional {
                    flags |= FLAG_UNIDIRECTIONAL;
                }
                (TYPE_SYN_STREAM, flags)
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            }
            | Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                payload.put_u32(stream_id & 0x7fff_ffff);
                self.deflate(&header_block(headers), &mut payload)?;
                let frame_type = if matches!(frame, Frame::SynReply { .. }) {
                    TYPE_SYN_REPLY
                } else {
                    TYPE_HEADERS
                };
                (frame_type, if *fin { FLAG_FIN } else { 0 })
            }
            Frame::RstStream { stream_id, status } => {
                payload.put_u32(stream_id & 0x7fff_ffff);
                payload.put_u32(*status);
                (TYPE_RST_STREAM, 0)
            }
            Frame::Settings { entries } => {
                payload.put_u32(entries.len() as u32);
                for (flags, id, value) in entries {
                    payload.put_u32((u32::from(*flags) << 24) | (id & 0xff_ffff));
                    payload.put_u32(*value);
                }
                (TYPE_SETTINGS, 0)
            }
            Frame::Ping { id } => {
                payload.put_u32(*id);
                (TYPE_PING, 0)
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                payload.put_u32(last_good_stream_id & 0x7fff_ffff);
                payload.put_u32(*status);
                (TYPE_GOAWAY, 0)
            }
            Frame::WindowUpdate { stream_id, delta } => {
                payload.put_u32(stream_id & 0x7fff_ffff);
                payload.put_u32(delta & 0x7fff_ffff);
                (TYPE_WINDOW_UPDATE, 0)
            }
            Frame::Unknown { frame_type } => {
                return Err(malformed(
                    "control",
                    format!("cannot send type {frame_type}"),
                ))
            }
        };
        if payload.len() > 0xff_ffff {
            return Err(malformed("control", "payload over 16 MiB"));
        }
        out.reserve(HEADER_LEN + payload.len());
        out.put_u16(0x8000 | VERSION);
        out.put_u16(frame_type);
        out.put_u8(flags);
        put_u24(out, payload.len());
        out.put_slice(&payload);
        Ok(())
    }

    /// Compresses one header block, ending it with a sync flush so the peer can decode it
    /// without the frames that follow.
    fn deflate(&mut self, block: &[u8], out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let mut consumed = 0;
        loop {
            out.reserve(block.len() - consumed + 64);
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(&block[consumed..], out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Compression(e.to_string()))?;
            consumed += (self.deflate.total_in() - before) as usize;
            if consumed == block.len() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }
}

fn put_u24(out: &mut impl BufMut, value: usize) {
    let bytes = (value as u32).to_be_bytes();
    out.put_slice(&bytes[1..]);
}

fn header_block(headers: &Headers) -> Vec<u8> {
    let mut block = Vec::new();
    block.put_u32(headers.len() as u32);
    for (name, value) in headers {
        block.put_u32(name.len() as u32);
        block.put_slice(name.to_ascii_lowercase().as_bytes());
        block.put_u32(value.len() as u32);
        block.put_slice(value.as_bytes());
    }
    block
}

#[cfg(test)]
mod tests;
