use super::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for byte in data {
        a = (a + u32::from(*byte)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

fn pairs(list: &[(&str, &str)]) -> Headers {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[test]
fn dictionary_is_the_one_peers_name() {
    assert_eq!(dictionary().len(), 1423);
    assert_eq!(adler32(dictionary()), DICTIONARY_ADLER32);
}

/// The first frame kubectl v1.32 sent for a forwarded connection, captured from its
/// SPDY fallback: the error stream's SYN_STREAM, its header block compressed by Go's
/// zlib with the SPDY/3 dictionary.
#[test]
fn decodes_the_syn_stream_kubectl_sends() {
    let captured = hex(concat!(
        "800300010000003d0000000100000000000078f9e3c6a7c202253a703a2b294a4dcc851625aca9a0",
        "808614cb45a024cc6461c0c0c0c0590489c44c50e2663400000000ffff"
    ));
    let mut buf = BytesMut::from(&captured[..]);
    let frame = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
    assert_eq!(
        frame,
        Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers: pairs(&[("streamtype", "error"), ("port", "80"), ("requestid", "0")]),
        }
    );
    assert!(buf.is_empty());
}

#[test]
fn frames_round_trip_and_share_one_compression_context() {
    let frames = vec![
        Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 3,
            fin: false,
            unidirectional: false,
            headers: pairs(&[
                ("streamtype", "error"),
                ("port", "8080"),
                ("requestid", "7"),
            ]),
        },
        Frame::SynStream {
            stream_id: 3,
            associated_to: 1,
            priority: 0,
            fin: true,
            unidirectional: true,
            headers: pairs(&[("streamtype", "data"), ("port", "8080"), ("requestid", "7")]),
        },
        Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: vec![],
        },
        Frame::Headers {
            stream_id: 3,
            fin: true,
            headers: pairs(&[("multi", "a\0b")]),
        },
        Frame::Data {
            stream_id: 3,
            fin: false,
            data: Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n"),
        },
        Frame::Data {
            stream_id: 1,
            fin: true,
            data: Bytes::new(),
        },
        Frame::RstStream {
            stream_id: 3,
            status: RST_INVALID_STREAM,
        },
        Frame::Settings {
            entries: vec![(1, 7, 65536), (0, 4, 100)],
        },
        Frame::Ping { id: 0x7fff_fff1 },
        Frame::GoAway {
            last_good_stream_id: 3,
            status: 0,
        },
        Frame::WindowUpdate {
            stream_id: 1,
            delta: 1 << 20,
        },
    ];
    let mut encoder = FrameEncoder::default();
    let mut wire = BytesMut::new();
    for frame in &frames {
        encoder.encode(frame, &mut wire).unwrap();
    }
    // Fed a few bytes at a time, as a socket may deliver them.
    let mut decoder = FrameDecoder::default();
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    for chunk in wire.chunks(5) {
        buf.extend_from_slice(chunk);
        while let Some(frame) = decoder.decode(&mut buf).unwrap() {
            decoded.push(frame);
        }
    }
    assert_eq!(decoded, frames);
    assert!(buf.is_empty());
}

#[test]
fn repeated_headers_compress_against_earlier_blocks() {
    let headers = pairs(&[
        ("streamtype", "data"),
        ("port", "80"),
        ("requestid", "12345"),
    ]);
    let mut encoder = FrameEncoder::default();
    let mut first = BytesMut::new();
    let reply = |fin| Frame::SynReply {
        stream_id: 1,
        fin,
        headers: headers.clone(),
    };
    encoder.encode(&reply(false), &mut first).unwrap();
    let mut second = BytesMut::new();
    encoder.encode(&reply(false), &mut second).unwrap();
    assert!(second.len() < first.len(), "{second:?} vs {first:?}");
    // The second block alone cannot be read by a fresh decoder: it has no zlib header.
    let mut fresh = FrameDecoder::default();
    assert!(fresh.decode(&mut second.clone()).is_err());
    let mut decoder = FrameDecoder::default();
    assert_eq!(decoder.decode(&mut first).unwrap(), Some(reply(false)));
    assert_eq!(decoder.decode(&mut second).unwrap(), Some(reply(false)));
}

#[test]
fn rejects_what_it_cannot_follow() {
    let mut decoder = FrameDecoder::default();
    let mut spdy2 = BytesMut::from(&hex("8002000600000004000000ff")[..]);
    assert_eq!(
        decoder.decode(&mut spdy2),
        Err(SpdyError::UnsupportedVersion(2))
    );
    let mut short_ping = BytesMut::from(&hex("80030006000000020000")[..]);
    assert!(matches!(
        decoder.decode(&mut short_ping),
        Err(SpdyError::Malformed { what: "PING", .. })
    ));
    let mut zero_stream = BytesMut::from(&hex("0000000001000000")[..]);
    assert!(decoder.decode(&mut zero_stream).is_err());
    // An incomplete frame waits for more bytes.
    let mut partial = BytesMut::from(&hex("000000010000000a6869")[..]);
    assert_eq!(decoder.decode(&mut partial), Ok(None));
    assert_eq!(partial.len(), 10);
    // Unknown control types are skipped, as SPDY asks.
    let mut unknown = BytesMut::from(&hex("8003000a00000002abcd")[..]);
    assert_eq!(
        decoder.decode(&mut unknown),
        Ok(Some(Frame::Unknown { frame_type: 10 }))
    );
}

#[test]
fn header_lookup_takes_the_first_value() {
    let headers = pairs(&[("port", "80\081"), ("streamtype", "data")]);
    assert_eq!(header(&headers, "Port"), Some("80"));
    assert_eq!(header(&headers, "requestid"), None);
}
