#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The header block grpcio 1.85 (C-core) sent for Health/Check on `unix:/tmp/bt/d.sock`.
fn c_core_block() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"@\x05:path\x1c/grpc.health.v1.Health/Check");
    b.extend_from_slice(b"@\n:authority\x11tmp%2Fbt%2Fd.sock");
    b.extend_from_slice(b"\x83\x86");
    b.extend_from_slice(b"@\x0ccontent-type\x10application/grpc");
    b.extend_from_slice(b"@\x02te\x08trailers");
    b
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn connection(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut c = PREFACE.to_vec();
    c.extend_from_slice(&frame(0x4, 0, 0, &[])); // SETTINGS
    for f in frames {
        c.extend_from_slice(f);
    }
    c
}

fn filtered(input: &[u8], chunk: usize) -> Vec<u8> {
    let mut filter = AuthorityFilter::default();
    let mut out = Vec::new();
    for piece in input.chunks(chunk) {
        filter.feed(piece, &mut out);
    }
    out
}

fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = hay
        .windows(from.len())
        .position(|w| w == from)
        .expect("present");
    let mut v = hay[..at].to_vec();
    v.extend_from_slice(to);
    v.extend_from_slice(&hay[at + from.len()..]);
    v
}

#[test]
fn c_core_socket_path_becomes_a_valid_authority_of_the_same_length() {
    let input = connection(&[
        frame(HEADERS, END_HEADERS, 1, &c_core_block()),
        frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0]),
    ]);
    let expected = replace(&input, b"tmp%2Fbt%2Fd.sock", b"tmp_2Fbt_2Fd.sock");
    // Whole, and in every chunking down to single bytes: the same result.
    for chunk in [input.len(), 7, 1] {
        assert_eq!(filtered(&input, chunk), expected, "chunk {chunk}");
    }
    assert!(Authority::try_from(&b"tmp_2Fbt_2Fd.sock"[..]).is_ok());
    assert!(Authority::try_from(&b"tmp%2Fbt%2Fd.sock"[..]).is_err());
}

#[test]
fn a_valid_authority_and_other_headers_are_untouched() {
    let block = replace(
        &c_core_block(),
        b"\x11tmp%2Fbt%2Fd.sock",
        b"\x0flocalhost:50051",
    );
    let input = connection(&[frame(HEADERS, END_HEADERS, 1, &block)]);
    assert_eq!(filtered(&input, 3), input);
}

#[test]
fn static_table_name_padding_priority_and_continuation_are_followed() {
    // :authority by static index 1 (literal without indexing), "/x%y" split across a HEADERS
    // frame with padding and priority and a CONTINUATION.
    let block = b"\x82\x01\x04/x%y".to_vec();
    let mut headers = vec![2u8]; // pad length
    headers.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
    headers.extend_from_slice(&block[..4]);
    headers.extend_from_slice(&[0, 0]); // padding
    let input = connection(&[
        frame(HEADERS, PADDED | PRIORITY, 3, &headers),
        frame(CONTINUATION, END_HEADERS, 3, &block[4..]),
    ]);
    let out = filtered(&input, 5);
    assert_eq!(out.len(), input.len());
    let expected = replace(&replace(&input, b"\x04/", b"\x04_"), b"x%y", b"x_y");
    assert_eq!(out, expected);
}

#[test]
fn huffman_values_and_other_names_are_left_alone() {
    // A Huffman-coded :authority (H bit) and a literal "x-path" carrying a '%'.
    let block = b"\x41\x83\xaa\xbb\xcc\x40\x06x-path\x03a%b".to_vec();
    assert!(authority_values(&block).is_empty());
    let input = connection(&[frame(HEADERS, END_HEADERS, 1, &block)]);
    assert_eq!(filtered(&input, 1), input);
}

#[test]
fn a_block_that_does_not_parse_is_passed_through() {
    // A string length running past the end.
    let block = b"\x40\x0a:authority\x7f\x01ab".to_vec();
    assert!(authority_values(&block).is_empty());
    let input = connection(&[frame(HEADERS, END_HEADERS, 1, &block)]);
    assert_eq!(filtered(&input, 2), input);
}

#[test]
fn a_frame_interrupting_a_header_block_ends_the_filtering() {
    let input = connection(&[
        frame(HEADERS, 0, 1, b"\x40\x0a:authority"),
        frame(0x0, 0, 1, b"data"),
        frame(HEADERS, END_HEADERS, 3, &c_core_block()),
    ]);
    assert_eq!(filtered(&input, 4), input);
}

#[test]
fn multi_byte_integers_are_decoded() {
    // A 200-octet :authority value: its length needs a continuation octet (127 + 73).
    let mut block = b"\x01\x7f\x49".to_vec();
    block.extend(std::iter::repeat_n(b'%', 200));
    assert_eq!(authority_values(&block), vec![(3, 203)]);
}
