//! Arbitrary bytes from a peer, under any negotiated context: decoding never panics, and
//! whatever decodes also encodes and decodes again without panicking.
#![no_main]

use berth_bgp_wire::{DecodeContext, EncodeContext, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut buf)) = data.split_first() else {
        return;
    };
    let ctx = DecodeContext {
        four_octet_as: flags & 1 != 0,
        add_path: [flags & 2 != 0, flags & 4 != 0],
        extended_message: flags & 8 != 0,
    };
    let enc = EncodeContext {
        four_octet_as: ctx.four_octet_as,
        add_path: ctx.add_path,
        extended_message: ctx.extended_message,
    };
    while let Ok(Some((msg, n))) = Message::decode(buf, &ctx) {
        let again = msg.to_bytes(&enc);
        let _ = Message::decode(&again, &ctx);
        buf = buf.get(n..).unwrap_or_default();
    }
});
