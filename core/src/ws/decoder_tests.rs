//! Tests of the client frame decoder: every error case, close code boundaries, zero copy and
//! memory, and property tests over arbitrary messages, fragmentations and chunkings.

use super::*;
use crate::ws::encoder::{self, OpCode};
use proptest::prelude::*;

const CFG: DecoderConfig = DecoderConfig {
    max_message_size: 1 << 20,
    accept_binary: true,
};
const MASK: Option<[u8; 4]> = Some([0x37, 0xFA, 0x21, 0x3D]);

// ---------------------------------------------------------------------------------------------
// Test-side client frame encoder.

/// How the payload length is written.
#[derive(Debug, Clone, Copy)]
enum LenForm {
    Minimal,
    Ext16,
    Ext64,
}

/// A client frame with every header field chosen by the test. `mask: None` sends it unmasked.
fn raw_frame(
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    form: LenForm,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | ((rsv & 7) << 4) | (opcode & 0xF)];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    let form = match form {
        LenForm::Minimal if len <= 125 => None,
        LenForm::Minimal if len <= 0xFFFF => Some(LenForm::Ext16),
        LenForm::Minimal => Some(LenForm::Ext64),
        other => Some(other),
    };
    match form {
        None => out.push(mask_bit | len as u8),
        Some(LenForm::Ext16) => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        Some(_) => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A well-formed masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame(fin, 0, opcode, MASK, LenForm::Minimal, payload)
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

// ---------------------------------------------------------------------------------------------
// Driving the decoder.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

impl From<Message<'_>> for Owned {
    fn from(message: Message<'_>) -> Self {
        match message {
            Message::Text(text) => Owned::Text(text.to_owned()),
            Message::Binary(bytes) => Owned::Binary(bytes.to_vec()),
            Message::Ping(bytes) => Owned::Ping(bytes.to_vec()),
            Message::Pong(bytes) => Owned::Pong(bytes.to_vec()),
            Message::Close { code, reason } => Owned::Close(code, reason.to_owned()),
        }
    }
}

#[derive(Debug, Default)]
struct Run {
    /// Events with the index of the chunk whose decoding returned them.
    events: Vec<(usize, Owned)>,
    /// The first error and the index of its chunk.
    error: Option<(usize, WsError)>,
}

impl Run {
    fn messages(&self) -> Vec<Owned> {
        self.events.iter().map(|(_, m)| m.clone()).collect()
    }
}

/// Feeds `chunks` in order the way the gateway does (loop until each chunk is consumed), checking
/// the contract on the way: no event means everything was consumed, an event means progress, an
/// error consumes everything and poisons the decoder.
fn run_chunks(config: &DecoderConfig, chunks: &[Vec<u8>]) -> Run {
    let mut decoder = Decoder::new();
    let mut run = Run::default();
    for (index, chunk) in chunks.iter().enumerate() {
        let mut chunk = chunk.clone();
        let mut offset = 0;
        while offset < chunk.len() {
            let left = chunk.len() - offset;
            let (consumed, event) = decoder.decode(config, &mut chunk[offset..]);
            assert!(consumed <= left);
            match event {
                None => assert_eq!(consumed, left, "no event, so the whole input is consumed"),
                Some(Ok(message)) => {
                    assert!(consumed > 0, "an event consumes bytes");
                    assert!(run.error.is_none(), "event after an error");
                    run.events.push((index, message.into()));
                }
                Some(Err(error)) => {
                    assert_eq!(consumed, left, "an error consumes everything");
                    assert!(run.error.is_none(), "second error after poisoning");
                    run.error = Some((index, error));
                }
            }
            offset += consumed;
        }
    }
    decoder.release();
    if decoder.is_idle() {
        assert_eq!(
            decoder.heap_bytes(),
            0,
            "an idle decoder owns no heap memory"
        );
    }
    run
}

fn split(stream: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut sizes = sizes.iter().cycle();
    let mut chunks = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let size = (*sizes.next().unwrap_or(&usize::MAX)).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(size);
        chunks.push(chunk.to_vec());
        rest = tail;
    }
    chunks
}

/// The stream in one chunk, in 1-byte chunks, and cut in two at every position: all must agree.
fn run_all_ways(config: &DecoderConfig, stream: &[u8]) -> (Vec<Owned>, Option<WsError>) {
    let whole = run_chunks(config, &[stream.to_vec()]);
    let expected = (whole.messages(), whole.error.map(|(_, e)| e));
    let bytes = run_chunks(config, &split(stream, &[1]));
    assert_eq!((bytes.messages(), bytes.error.map(|(_, e)| e)), expected);
    for cut in 0..=stream.len() {
        let (a, b) = stream.split_at(cut);
        let two = run_chunks(config, &[a.to_vec(), b.to_vec()]);
        assert_eq!(
            (two.messages(), two.error.map(|(_, e)| e)),
            expected,
            "cut at {cut}"
        );
    }
    expected
}

fn decode_all(stream: &[u8]) -> (Vec<Owned>, Option<WsError>) {
    run_all_ways(&CFG, stream)
}

fn error_of(stream: &[u8]) -> WsError {
    error_with(&CFG, stream)
}

fn error_with(config: &DecoderConfig, stream: &[u8]) -> WsError {
    match run_all_ways(config, stream).1 {
        Some(error) => error,
        None => panic!("expected an error for {stream:x?}"),
    }
}

/// The error returned by a single `decode` of exactly `bytes` (to show *when* it is detected).
fn error_on_exactly(config: &DecoderConfig, bytes: &[u8]) -> Option<WsError> {
    let mut decoder = Decoder::new();
    let mut input = bytes.to_vec();
    match decoder.decode(config, &mut input) {
        (_, Some(Err(error))) => Some(error),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Layout and memory.

#[test]
fn decoder_is_small() {
    let size = std::mem::size_of::<Decoder>();
    println!("size_of::<Decoder>() = {size}");
    assert!(size <= 64, "Decoder is {size} bytes");
}

#[test]
fn single_frame_messages_are_borrowed_from_the_input() {
    for (opcode, payload) in [
        (0x1, &b"hello"[..]),
        (0x2, &[0u8, 1, 2, 255][..]),
        (0x9, &b"ping"[..]),
        (0xA, &b"pong"[..]),
        (0x8, &[0x03, 0xE8, b'o', b'k'][..]),
    ] {
        let mut input = frame(true, opcode, payload);
        let input_len = input.len();
        let range = input.as_ptr_range();
        let mut decoder = Decoder::new();
        let (consumed, event) = decoder.decode(&CFG, &mut input);
        let bytes: &[u8] = match event {
            Some(Ok(Message::Text(text))) => text.as_bytes(),
            Some(Ok(Message::Binary(b) | Message::Ping(b) | Message::Pong(b))) => b,
            Some(Ok(Message::Close { reason, .. })) => reason.as_bytes(),
            other => panic!("{other:?}"),
        };
        assert!(
            range.contains(&bytes.as_ptr()),
            "opcode {opcode} was copied"
        );
        assert_eq!(consumed, input_len);
        assert_eq!(decoder.heap_bytes(), 0);
        assert!(decoder.is_idle());
    }
}

#[test]
fn message_split_across_calls_is_freed_afterwards() {
    let stream = frame(true, 0x1, "x".repeat(10_000).as_bytes());
    let (a, b) = stream.split_at(5000);
    let mut decoder = Decoder::new();
    let mut a = a.to_vec();
    assert_eq!(decoder.decode(&CFG, &mut a), (5000, None));
    assert!(!decoder.is_idle());
    assert!(decoder.heap_bytes() > 0);
    let mut b = b.to_vec();
    let b_len = b.len();
    let (consumed, event) = decoder.decode(&CFG, &mut b);
    assert_eq!(consumed, b_len);
    assert!(matches!(event, Some(Ok(Message::Text(t))) if t.len() == 10_000));
    assert!(decoder.is_idle());
    decoder.release();
    assert_eq!(decoder.heap_bytes(), 0);
    // The next call frees it too.
    let mut decoder2 = Decoder::new();
    let mut a = stream[..5000].to_vec();
    let mut b = stream[5000..].to_vec();
    decoder2.decode(&CFG, &mut a);
    decoder2.decode(&CFG, &mut b);
    assert_eq!(decoder2.decode(&CFG, &mut []), (0, None));
    assert_eq!(decoder2.heap_bytes(), 0);
}

#[test]
fn split_control_frame_inside_a_fragmented_message_keeps_the_message() {
    let mut stream = frame(false, 0x1, b"hel");
    let ping = frame(true, 0x9, b"are you there");
    let ping_start = stream.len();
    stream.extend_from_slice(&ping);
    stream.extend(frame(true, 0x0, b"lo"));
    // Cut inside the ping's payload.
    let cut = ping_start + ping.len() - 3;
    let run = run_chunks(&CFG, &[stream[..cut].to_vec(), stream[cut..].to_vec()]);
    assert_eq!(
        run.messages(),
        vec![
            Owned::Ping(b"are you there".to_vec()),
            Owned::Text("hello".into())
        ]
    );
    assert_eq!(run.error, None);
}

#[test]
fn header_arriving_one_byte_at_a_time() {
    for form in [LenForm::Minimal, LenForm::Ext16, LenForm::Ext64] {
        let stream = raw_frame(true, 0, 0x2, MASK, form, b"abc");
        assert_eq!(
            decode_all(&stream),
            (vec![Owned::Binary(b"abc".to_vec())], None)
        );
    }
}

#[test]
fn length_encodings_switch_at_the_rfc_boundaries() {
    for len in [0, 1, 125, 126, 127, 65535, 65536, 70_000] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let stream = frame(true, 0x2, &payload);
        let run = run_chunks(&CFG, &split(&stream, &[7, 1, 4096]));
        assert_eq!(run.messages(), vec![Owned::Binary(payload)], "len {len}");
    }
}

#[test]
fn unmask_matches_the_bytewise_definition_at_every_offset() {
    let mask = [0x12, 0x34, 0x56, 0x78];
    for offset in 0..4u8 {
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut fast = data.clone();
            let next = unmask(&mut fast, mask, offset);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[(i + offset as usize) % 4])
                .collect();
            assert_eq!(fast, slow, "offset {offset} len {len}");
            assert_eq!(usize::from(next), (offset as usize + len) % 4);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Error cases.

#[test]
fn unmasked_client_frame_is_a_protocol_error() {
    let stream = raw_frame(true, 0, 0x1, None, LenForm::Minimal, b"hi");
    assert_eq!(error_of(&stream).code, 1002);
    // Detected at the second byte.
    assert_eq!(
        error_on_exactly(&CFG, &stream[..2]).map(|e| e.code),
        Some(1002)
    );
}

#[test]
fn reserved_bits_are_a_protocol_error() {
    for rsv in [1, 2, 4, 7] {
        let stream = raw_frame(true, rsv, 0x1, MASK, LenForm::Minimal, b"hi");
        assert_eq!(error_of(&stream).code, 1002, "rsv {rsv}");
        assert_eq!(
            error_on_exactly(&CFG, &stream[..1]).map(|e| e.code),
            Some(1002)
        );
    }
}

#[test]
fn reserved_opcodes_are_a_protocol_error() {
    for opcode in (3..=7).chain(0xB..=0xF) {
        let stream = frame(true, opcode, b"");
        assert_eq!(error_of(&stream).code, 1002, "opcode {opcode:#x}");
    }
}

#[test]
fn fragmented_control_frames_are_a_protocol_error() {
    for opcode in [0x8, 0x9, 0xA] {
        assert_eq!(
            error_of(&frame(false, opcode, b"")).code,
            1002,
            "{opcode:#x}"
        );
    }
}

#[test]
fn control_payload_over_125_is_a_protocol_error() {
    for opcode in [0x8, 0x9, 0xA] {
        let mut ok = vec![0x03, 0xE8];
        ok.resize(125, b'a');
        let (messages, error) = decode_all(&frame(true, opcode, &ok));
        assert_eq!((messages.len(), error), (1, None));
        let mut too_long = ok.clone();
        too_long.push(b'a');
        assert_eq!(error_of(&frame(true, opcode, &too_long)).code, 1002);
        // 125 bytes written with a 16-bit length is still a control frame over the 7-bit limit.
        let stream = raw_frame(true, 0, opcode, MASK, LenForm::Ext16, &ok);
        assert_eq!(error_of(&stream).code, 1002);
    }
}

#[test]
fn sixty_four_bit_length_with_the_high_bit_is_a_protocol_error() {
    let mut stream = vec![0x82, 0x80 | 127];
    stream.extend_from_slice(&(1u64 << 63).to_be_bytes());
    stream.extend_from_slice(&[1, 2, 3, 4]);
    let config = DecoderConfig {
        max_message_size: usize::MAX,
        accept_binary: true,
    };
    assert_eq!(error_with(&config, &stream).code, 1002);
    // The largest legal length is only too big.
    let mut stream = vec![0x82, 0x80 | 127];
    stream.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
    stream.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(error_of(&stream).code, 1009);
}

#[test]
fn continuation_without_a_message_is_a_protocol_error() {
    assert_eq!(error_of(&frame(true, 0x0, b"x")).code, 1002);
    assert_eq!(error_of(&frame(false, 0x0, b"x")).code, 1002);
    // Also right after a complete message.
    let mut stream = frame(true, 0x1, b"done");
    stream.extend(frame(true, 0x0, b"x"));
    let (messages, error) = decode_all(&stream);
    assert_eq!(messages, vec![Owned::Text("done".into())]);
    assert_eq!(error.map(|e| e.code), Some(1002));
}

#[test]
fn new_message_inside_a_fragmented_message_is_a_protocol_error() {
    for opcode in [0x1, 0x2] {
        let mut stream = frame(false, 0x1, b"a");
        stream.extend(frame(true, opcode, b"b"));
        let (messages, error) = decode_all(&stream);
        assert!(messages.is_empty());
        assert_eq!(error.map(|e| e.code), Some(1002));
    }
}

#[test]
fn control_frames_inside_a_fragmented_message_are_delivered_at_once() {
    let mut stream = frame(false, 0x1, b"fr");
    stream.extend(frame(true, 0x9, b"p1"));
    stream.extend(frame(false, 0x0, b"ag"));
    stream.extend(frame(true, 0xA, b"p2"));
    stream.extend(frame(true, 0x8, &close_payload(1000, b"")));
    stream.extend(frame(true, 0x0, "ment€".as_bytes()));
    assert_eq!(
        decode_all(&stream),
        (
            vec![
                Owned::Ping(b"p1".to_vec()),
                Owned::Pong(b"p2".to_vec()),
                Owned::Close(Some(1000), String::new()),
                Owned::Text("fragment€".into()),
            ],
            None
        )
    );
}

#[test]
fn message_size_limit_is_enforced_at_the_header() {
    let config = DecoderConfig {
        max_message_size: 100,
        accept_binary: true,
    };
    // Exactly the limit passes, one byte more fails.
    let (messages, error) = run_all_ways(&config, &frame(true, 0x2, &[7; 100]));
    assert_eq!((messages.len(), error), (1, None));
    let stream = frame(true, 0x2, &[7; 101]);
    assert_eq!(error_with(&config, &stream).code, 1009);
    // Detected from the header alone, with none of the payload given.
    assert_eq!(
        error_on_exactly(&config, &stream[..8]).map(|e| e.code),
        Some(1009)
    );

    // Fragments count together; control frames do not count.
    let mut ok = frame(false, 0x1, &[b'a'; 60]);
    ok.extend(frame(true, 0x9, &[0; 125]));
    ok.extend(frame(true, 0x0, &[b'b'; 40]));
    let (messages, error) = run_all_ways(&config, &ok);
    assert_eq!((messages.len(), error), (2, None));

    let first = frame(false, 0x1, &[b'a'; 60]);
    let second = frame(true, 0x0, &[b'b'; 41]);
    let mut stream = first.clone();
    stream.extend_from_slice(&second);
    assert_eq!(error_with(&config, &stream).code, 1009);
    // Fails on the second header, before its payload, and without having buffered it.
    let mut decoder = Decoder::new();
    let mut input = first.clone();
    assert_eq!(decoder.decode(&config, &mut input), (first.len(), None));
    let mut header = second[..6].to_vec();
    let (_, event) = decoder.decode(&config, &mut header);
    assert_eq!(event.map(|r| r.map_err(|e| e.code)), Some(Err(1009)));
    assert_eq!(decoder.heap_bytes(), 0, "poisoning frees the buffer");
}

#[test]
fn binary_frames_fail_with_1003_when_not_accepted() {
    let config = DecoderConfig {
        max_message_size: 1000,
        accept_binary: false,
    };
    let stream = frame(true, 0x2, b"bin");
    assert_eq!(error_with(&config, &stream).code, 1003);
    assert_eq!(
        error_on_exactly(&config, &stream[..1]).map(|e| e.code),
        Some(1003)
    );
    // Text still works.
    let (messages, error) = run_all_ways(&config, &frame(true, 0x1, b"text"));
    assert_eq!((messages, error), (vec![Owned::Text("text".into())], None));
}

#[test]
fn invalid_utf8_in_a_single_frame_is_1007() {
    for payload in [
        &b"\xFF"[..],
        b"ok\xC0\xAF",
        b"\xED\xA0\x80",
        b"\xF4\x90\x80\x80",
        b"abc\xE2\x82",
    ] {
        assert_eq!(
            error_of(&frame(true, 0x1, payload)).code,
            1007,
            "{payload:x?}"
        );
    }
}

#[test]
fn invalid_utf8_fails_fast_across_fragments() {
    // "κόσμε" then an overlong prefix cut across two fragments: E0 | 80.
    let mut first = frame(false, 0x1, "κόσμε".as_bytes());
    first.extend(frame(false, 0x0, b"\xE0"));
    let second = frame(false, 0x0, b"\x80 and more");
    let mut decoder = Decoder::new();
    let mut input = first.clone();
    assert_eq!(decoder.decode(&CFG, &mut input), (first.len(), None));
    // The error comes with the header and the first payload byte of the next fragment, without
    // waiting for the rest of the fragment or for its end.
    let mut input = second[..7].to_vec();
    let (_, event) = decoder.decode(&CFG, &mut input);
    assert_eq!(event.map(|r| r.map_err(|e| e.code)), Some(Err(1007)));
}

#[test]
fn code_point_split_across_fragments_is_fine() {
    let text = "€𝄞";
    for cut in 0..=text.len() {
        let (a, b) = text.as_bytes().split_at(cut);
        let mut stream = frame(false, 0x1, a);
        stream.extend(frame(true, 0x9, b""));
        stream.extend(frame(true, 0x0, b));
        assert_eq!(
            decode_all(&stream),
            (vec![Owned::Ping(vec![]), Owned::Text(text.into())], None)
        );
    }
}

#[test]
fn incomplete_code_point_at_the_end_of_the_message_is_1007() {
    let mut stream = frame(false, 0x1, b"ab\xF0\x9F");
    stream.extend(frame(true, 0x0, b"\x98"));
    assert_eq!(error_of(&stream).code, 1007);
    assert_eq!(error_of(&frame(true, 0x1, b"ab\xF0\x9F\x98")).code, 1007);
}

#[test]
fn empty_messages() {
    let mut stream = frame(true, 0x1, b"");
    stream.extend(frame(false, 0x2, b""));
    stream.extend(frame(true, 0x0, b""));
    stream.extend(frame(true, 0x9, b""));
    assert_eq!(
        decode_all(&stream),
        (
            vec![
                Owned::Text(String::new()),
                Owned::Binary(vec![]),
                Owned::Ping(vec![])
            ],
            None
        )
    );
}

#[test]
fn close_frame_payloads() {
    assert_eq!(
        decode_all(&frame(true, 0x8, b"")),
        (vec![Owned::Close(None, String::new())], None)
    );
    assert_eq!(error_of(&frame(true, 0x8, &[0x03])).code, 1002);
    assert_eq!(
        decode_all(&frame(true, 0x8, &close_payload(1001, "bye ✓".as_bytes()))),
        (vec![Owned::Close(Some(1001), "bye ✓".into())], None)
    );
    assert_eq!(
        error_of(&frame(true, 0x8, &close_payload(1000, b"\xCE\xBA\xFF"))).code,
        1007
    );
    // A reason cut inside a code point is invalid too.
    assert_eq!(
        error_of(&frame(true, 0x8, &close_payload(1000, b"\xE2\x82"))).code,
        1007
    );
}

#[test]
fn close_code_boundaries() {
    for (code, valid) in [
        (0, false),
        (999, false),
        (1000, true),
        (1003, true),
        (1004, false),
        (1005, false),
        (1006, false),
        (1007, true),
        (1011, true),
        (1014, true),
        (1015, false),
        (1016, false),
        (2999, false),
        (3000, true),
        (4999, true),
        (5000, false),
        (u16::MAX, false),
    ] {
        let stream = frame(true, 0x8, &close_payload(code, b"r"));
        let result = decode_all(&stream);
        if valid {
            assert_eq!(
                result,
                (vec![Owned::Close(Some(code), "r".into())], None),
                "{code}"
            );
        } else {
            assert_eq!(result.0, vec![], "{code}");
            assert_eq!(result.1.map(|e| e.code), Some(1002), "{code}");
        }
    }
}

#[test]
fn a_poisoned_decoder_consumes_everything_and_says_nothing() {
    let mut decoder = Decoder::new();
    let mut bad = raw_frame(true, 0, 0x1, None, LenForm::Minimal, b"x");
    let bad_len = bad.len();
    let (consumed, event) = decoder.decode(&CFG, &mut bad);
    assert_eq!(consumed, bad_len);
    assert!(matches!(event, Some(Err(WsError { code: 1002, .. }))));
    let mut good = frame(true, 0x1, b"hello");
    let good_len = good.len();
    assert_eq!(decoder.decode(&CFG, &mut good), (good_len, None));
    assert_eq!(decoder.heap_bytes(), 0);
}

#[test]
fn errors_found_while_building_the_event_poison_too() {
    let mut decoder = Decoder::new();
    let mut stream = frame(true, 0x8, &[0x03]);
    stream.extend(frame(true, 0x1, b"after"));
    let stream_len = stream.len();
    let (consumed, event) = decoder.decode(&CFG, &mut stream);
    assert_eq!(consumed, stream_len);
    assert!(matches!(event, Some(Err(WsError { code: 1002, .. }))));
    let mut more = frame(true, 0x1, b"more");
    let more_len = more.len();
    assert_eq!(decoder.decode(&CFG, &mut more), (more_len, None));
}

// ---------------------------------------------------------------------------------------------
// Property tests.

/// A message the test sends, and how it is cut into frames.
#[derive(Debug, Clone)]
enum Sent {
    Data {
        message: Owned,
        /// Payload bytes per fragment (the last fragment takes the rest).
        cuts: Vec<usize>,
        /// Control frames sent after fragment `i` (for all but the last fragment).
        interleaved: Vec<Vec<Owned>>,
    },
    Control(Owned),
}

fn control_message() -> impl Strategy<Value = Owned> {
    let close_code = prop_oneof![1000u16..=1003, 1007u16..=1014, 3000u16..=4999];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..=125).prop_map(Owned::Ping),
        prop::collection::vec(any::<u8>(), 0..=125).prop_map(Owned::Pong),
        Just(Owned::Close(None, String::new())),
        (close_code, "\\PC{0,30}").prop_map(|(code, reason)| Owned::Close(Some(code), reason)),
    ]
}

fn sent_message() -> impl Strategy<Value = Sent> {
    let data = prop_oneof![
        "\\PC{0,200}".prop_map(Owned::Text),
        any::<String>().prop_map(Owned::Text),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Owned::Binary),
    ];
    prop_oneof![
        3 => (
            data,
            prop::collection::vec(0usize..80, 0..5),
            prop::collection::vec(prop::collection::vec(control_message(), 0..3), 5),
        )
            .prop_map(|(message, cuts, interleaved)| Sent::Data {
                message,
                cuts,
                interleaved,
            }),
        1 => control_message().prop_map(Sent::Control),
    ]
}

fn control_frame_of(message: &Owned, mask: [u8; 4]) -> Vec<u8> {
    let (opcode, payload) = match message {
        Owned::Ping(p) => (0x9, p.clone()),
        Owned::Pong(p) => (0xA, p.clone()),
        Owned::Close(None, _) => (0x8, vec![]),
        Owned::Close(Some(code), reason) => (0x8, close_payload(*code, reason.as_bytes())),
        other => unreachable!("{other:?}"),
    };
    raw_frame(true, 0, opcode, Some(mask), LenForm::Minimal, &payload)
}

/// Encodes the messages as masked client frames; returns the stream and the events expected.
fn encode_sent(sent: &[Sent], masks: &[[u8; 4]]) -> (Vec<u8>, Vec<Owned>) {
    let mut masks = masks.iter().copied().cycle();
    let mut next_mask = move || masks.next().unwrap_or([1, 2, 3, 4]);
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    for item in sent {
        match item {
            Sent::Control(message) => {
                stream.extend(control_frame_of(message, next_mask()));
                expected.push(message.clone());
            }
            Sent::Data {
                message,
                cuts,
                interleaved,
            } => {
                let (opcode, payload) = match message {
                    Owned::Text(t) => (0x1, t.as_bytes()),
                    Owned::Binary(b) => (0x2, b.as_slice()),
                    other => unreachable!("{other:?}"),
                };
                let mut rest = payload;
                let mut fragments = Vec::new();
                for &cut in cuts {
                    let (fragment, tail) = rest.split_at(cut.min(rest.len()));
                    fragments.push(fragment);
                    rest = tail;
                }
                fragments.push(rest);
                let last = fragments.len() - 1;
                for (i, fragment) in fragments.iter().enumerate() {
                    let op = if i == 0 { opcode } else { 0x0 };
                    let form = [LenForm::Minimal, LenForm::Ext16, LenForm::Ext64][i % 3];
                    stream.extend(raw_frame(
                        i == last,
                        0,
                        op,
                        Some(next_mask()),
                        form,
                        fragment,
                    ));
                    if i != last {
                        for control in interleaved.get(i).into_iter().flatten() {
                            stream.extend(control_frame_of(control, next_mask()));
                            expected.push(control.clone());
                        }
                    }
                }
                expected.push(message.clone());
            }
        }
    }
    (stream, expected)
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        prop::collection::vec(1usize..16, 1..20),
        prop::collection::vec(1usize..300, 1..10),
        Just(vec![1]),
        Just(vec![usize::MAX]),
    ]
}

/// Test-side parser of one unmasked server frame: (fin, opcode, payload, frame length).
fn parse_server_frame(bytes: &[u8]) -> Option<(bool, u8, Vec<u8>, usize)> {
    let (&b0, rest) = bytes.split_first()?;
    let (&b1, rest) = rest.split_first()?;
    if b1 & 0x80 != 0 {
        return None; // server frames are never masked
    }
    let (len, rest, header) = match b1 & 0x7F {
        126 => {
            let (l, rest) = rest.split_at_checked(2)?;
            let len = u16::from_be_bytes([l[0], l[1]]) as usize;
            if len < 126 {
                return None; // not minimal
            }
            (len, rest, 4)
        }
        127 => {
            let (l, rest) = rest.split_at_checked(8)?;
            let len = u64::from_be_bytes(l.try_into().ok()?) as usize;
            if len <= 0xFFFF {
                return None;
            }
            (len, rest, 10)
        }
        n => (usize::from(n), rest, 2),
    };
    let payload = rest.get(..len)?.to_vec();
    Some((b0 & 0x80 != 0, b0 & 0x0F, payload, header + len))
}

/// A server frame re-sent as a client frame: same header fields, masked with `mask`.
fn mask_server_frame(bytes: &[u8], mask: [u8; 4]) -> Option<Vec<u8>> {
    let (fin, opcode, payload, _) = parse_server_frame(bytes)?;
    Some(raw_frame(
        fin,
        0,
        opcode,
        Some(mask),
        LenForm::Minimal,
        &payload,
    ))
}

/// Reference: the index of the first byte after which `bytes` stops being a prefix of valid
/// UTF-8 (std reports an unfinished but valid tail with `error_len() == None`).
fn first_invalid_utf8(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len()).find(
        |&end| matches!(std::str::from_utf8(&bytes[..=end]), Err(e) if e.error_len().is_some()),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// (a) Any messages, fragmented anywhere (even inside code points) with control frames
    /// between the fragments, in any chunking: exactly the original events, in order.
    #[test]
    fn any_messages_in_any_chunking(
        sent in prop::collection::vec(sent_message(), 0..8),
        masks in prop::collection::vec(any::<[u8; 4]>(), 1..5),
        sizes in chunk_sizes(),
    ) {
        let (stream, expected) = encode_sent(&sent, &masks);
        let run = run_chunks(&CFG, &split(&stream, &sizes));
        prop_assert_eq!(run.error, None);
        prop_assert_eq!(run.messages(), expected);
    }

    /// (b) What the encoder produces parses back, and decodes once masked.
    #[test]
    fn encoder_round_trip(
        opcode in prop_oneof![Just(OpCode::Text), Just(OpCode::Binary), Just(OpCode::Ping), Just(OpCode::Pong)],
        text in any::<String>(),
        bytes in prop::collection::vec(any::<u8>(), 0..70_000),
        reason in "\\PC{0,80}",
        code in prop_oneof![1000u16..=1003, 1007u16..=1014, 3000u16..=4999],
        mask in any::<[u8; 4]>(),
    ) {
        let payload: Vec<u8> = match opcode {
            OpCode::Text => text.clone().into_bytes(),
            OpCode::Ping | OpCode::Pong => bytes.iter().copied().take(125).collect(),
            _ => bytes.clone(),
        };
        let encoded = encoder::encode_frame(opcode, &payload);
        let parsed = parse_server_frame(&encoded);
        prop_assert_eq!(parsed, Some((true, opcode as u8, payload.clone(), encoded.len())));
        prop_assert_eq!(encoded.len(), encoder::header_len(payload.len()) + payload.len());
        let client = mask_server_frame(&encoded, mask).unwrap_or_default();
        let run = run_chunks(&CFG, &split(&client, &[4093]));
        let expected = match opcode {
            OpCode::Text => Owned::Text(text),
            OpCode::Binary => Owned::Binary(payload),
            OpCode::Ping => Owned::Ping(payload),
            _ => Owned::Pong(payload),
        };
        prop_assert_eq!(run.messages(), vec![expected]);

        let close = encoder::close_frame(code, &reason);
        let client = mask_server_frame(&close, mask).unwrap_or_default();
        let run = run_chunks(&CFG, &[client]);
        let mut cut = reason.len().min(123);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        prop_assert_eq!(run.messages(), vec![Owned::Close(Some(code), reason[..cut].to_owned())]);

        let text_frame = encoder::text_frame(&reason);
        let run = run_chunks(&CFG, &[mask_server_frame(&text_frame, mask).unwrap_or_default()]);
        prop_assert_eq!(run.messages(), vec![Owned::Text(reason)]);
    }

    /// (c) An invalid UTF-8 text message, fragmented and chunked anyhow (with pings between the
    /// fragments), fails with 1007 while decoding exactly the chunk holding the first invalid
    /// byte: not before (the prefix is valid), and not later (fail fast).
    #[test]
    fn invalid_utf8_fails_on_the_chunk_with_the_first_bad_byte(
        prefix in "\\PC{0,40}",
        bad in prop_oneof![
            Just(vec![0x80u8]), Just(vec![0xBF]), Just(vec![0xC0, 0x80]), Just(vec![0xC1]),
            Just(vec![0xF5]), Just(vec![0xFF]), Just(vec![0xE0, 0x80]), Just(vec![0xE0, 0x9F, 0xBF]),
            Just(vec![0xED, 0xA0, 0x80]), Just(vec![0xF0, 0x8F]), Just(vec![0xF4, 0x90, 0x80, 0x80]),
            Just(vec![0xC3, b'a']), Just(vec![0xE2, 0x82, b'a']), Just(vec![0xF0, 0x9F, 0x98, 0xC0]),
        ],
        suffix in prop::collection::vec(any::<u8>(), 0..20),
        cuts in prop::collection::vec(0usize..30, 0..5),
        mask in any::<[u8; 4]>(),
        sizes in chunk_sizes(),
    ) {
        let mut payload = prefix.into_bytes();
        payload.extend_from_slice(&bad);
        payload.extend_from_slice(&suffix);
        let first_bad = first_invalid_utf8(&payload).unwrap_or(usize::MAX);
        prop_assert!(first_bad < payload.len());

        // Build the fragments by hand to know where each payload byte lands in the stream.
        let mut stream = Vec::new();
        let mut bad_at = None;
        let mut done = 0;
        let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(payload.len())).collect();
        bounds.sort_unstable();
        bounds.push(payload.len());
        let fragment_count = bounds.len();
        for (i, &end) in bounds.iter().enumerate() {
            let fragment = &payload[done..end.max(done)];
            let op = if i == 0 { 0x1 } else { 0x0 };
            let bytes = raw_frame(i + 1 == fragment_count, 0, op, Some(mask), LenForm::Minimal, fragment);
            let payload_start = stream.len() + bytes.len() - fragment.len();
            if (done..done + fragment.len()).contains(&first_bad) {
                bad_at = Some(payload_start + first_bad - done);
            }
            stream.extend(bytes);
            if i + 1 != fragment_count {
                stream.extend(frame(true, 0x9, b"keepalive"));
            }
            done += fragment.len();
        }
        let bad_at = bad_at.unwrap_or(usize::MAX);
        let chunks = split(&stream, &sizes);
        let mut start = 0;
        let bad_chunk = chunks.iter().position(|c| {
            start += c.len();
            bad_at < start
        });
        let run = run_chunks(&CFG, &chunks);
        prop_assert!(run.events.iter().all(|(_, m)| matches!(m, Owned::Ping(_))));
        let (chunk, error) = run.error.unwrap_or((usize::MAX, WsError::protocol("none")));
        prop_assert_eq!(error.code, 1007);
        prop_assert_eq!(Some(chunk), bad_chunk);
    }

    /// (d) Arbitrary bytes never make it panic (or loop, or break the calling contract).
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        sizes in chunk_sizes(),
        max in prop_oneof![Just(0usize), 0usize..200, Just(usize::MAX)],
        accept_binary in any::<bool>(),
    ) {
        let config = DecoderConfig { max_message_size: max, accept_binary };
        run_chunks(&config, &split(&bytes, &sizes));
    }

    /// (d') Frame-shaped garbage: well-formed-looking headers with random fields, so that the
    /// deeper states are reached too.
    #[test]
    fn random_frames_never_panic(
        frames in prop::collection::vec(
            (any::<bool>(), 0u8..8, 0u8..16, any::<bool>(), prop::collection::vec(any::<u8>(), 0..140), 0usize..3),
            0..10,
        ),
        sizes in chunk_sizes(),
        max in prop_oneof![0usize..200, Just(usize::MAX)],
    ) {
        let mut stream = Vec::new();
        for (fin, rsv, opcode, masked, payload, form) in frames {
            let rsv = if rsv < 6 { 0 } else { rsv };
            let mask = if masked { MASK } else { None };
            let form = [LenForm::Minimal, LenForm::Ext16, LenForm::Ext64][form];
            stream.extend(raw_frame(fin, rsv, opcode, mask, form, &payload));
        }
        let config = DecoderConfig { max_message_size: max, accept_binary: true };
        run_chunks(&config, &split(&stream, &sizes));
    }
}
