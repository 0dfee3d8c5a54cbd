//! Any `:authority` on the Unix socket. gRPC C-core clients (Python, C++, Ruby, PHP,
//! grpc-health-probe builds) send the socket path, percent-encoded (`tmp%2Fberth%2Fapi.sock`),
//! as the HTTP/2 `:authority` of every call on a `unix:` channel. The HTTP/2 server under tonic
//! (h2) refuses any authority that is not a valid URI authority and resets the stream, so those
//! clients could not call the speaker at all. On a Unix socket the authority names nothing (no
//! virtual hosts, no TLS names), so this filter, on the bytes the client sends, replaces every
//! character that makes such an authority invalid with `_`, before h2 reads them.
//!
//! The rewrite keeps every length: the frames and the HPACK dynamic table (whose entry sizes
//! count the value's length) stay exactly as the client built them, so nothing else in the
//! connection has to be re-encoded. It touches literal `:authority` values sent as plain
//! octets (what C-core sends); a Huffman-coded one is left as it is. Input this filter does not
//! understand is passed through untouched for h2 to judge.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http::uri::Authority;
use tonic::transport::server::Connected;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;
/// HTTP/2 frame header length.
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// A header block held longer than this is passed through unexamined (h2 caps it far lower).
const MAX_HELD: usize = 1 << 20;
/// `:authority`'s index in the HPACK static table (RFC 7541 Appendix A).
const AUTHORITY_INDEX: usize = 1;

/// Rewrites invalid `:authority` values in the client-to-server byte stream of one HTTP/2
/// connection. Pure: bytes in, bytes out.
#[derive(Debug)]
pub struct AuthorityFilter {
    /// Preface bytes still to pass.
    preface_left: usize,
    /// Received bytes not yet passed on (an incomplete frame).
    pending: Vec<u8>,
    /// A header block's frames, held until the one with END_HEADERS.
    held: Vec<u8>,
    /// Where each fragment of the held block sits in `held`: (offset, length).
    fragments: Vec<(usize, usize)>,
    /// Gave up on this connection (input not understood): pass everything through.
    passthrough: bool,
}

impl Default for AuthorityFilter {
    fn default() -> Self {
        AuthorityFilter {
            preface_left: PREFACE_LEN,
            pending: Vec::new(),
            held: Vec::new(),
            fragments: Vec::new(),
            passthrough: false,
        }
    }
}

impl AuthorityFilter {
    /// Takes `input` and appends to `out` every byte that may now go to the HTTP/2 server.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.passthrough {
            out.extend_from_slice(input);
            return;
        }
        self.pending.extend_from_slice(input);
        let mut at = 0;
        if self.preface_left > 0 {
            let n = self.preface_left.min(self.pending.len());
            out.extend_from_slice(&self.pending[..n]);
            self.preface_left -= n;
            at = n;
        }
        while self.preface_left == 0 && self.pending.len() - at >= FRAME_HEADER {
            let h = &self.pending[at..at + FRAME_HEADER];
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            let (kind, flags) = (h[3], h[4]);
            if self.pending.len() - at < FRAME_HEADER + len {
                break;
            }
            let frame = at..at + FRAME_HEADER + len;
            at = frame.end;
            let in_block = !self.fragments.is_empty();
            if !in_block && kind != HEADERS {
                out.extend_from_slice(&self.pending[frame]);
                continue;
            }
            let payload = &self.pending[frame.start + FRAME_HEADER..frame.end];
            let Some((start, flen)) = fragment(kind, flags, payload) else {
                // Not a frame that may continue a header block, or a malformed HEADERS: h2
                // reports it; this filter steps aside.
                self.give_up(out);
                out.extend_from_slice(&self.pending[frame]);
                break;
            };
            self.fragments
                .push((self.held.len() + FRAME_HEADER + start, flen));
            self.held.extend_from_slice(&self.pending[frame]);
            if flags & END_HEADERS != 0 {
                rewrite_block(&mut self.held, &self.fragments);
                out.append(&mut self.held);
                self.fragments.clear();
            } else if self.held.len() > MAX_HELD {
                self.give_up(out);
                break;
            }
        }
        self.pending.drain(..at);
        if self.passthrough {
            out.append(&mut self.pending);
        }
    }

    /// Passes what is held and everything after it through unexamined.
    fn give_up(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
        self.fragments.clear();
        self.passthrough = true;
    }
}

/// Where the header block fragment sits in a HEADERS or CONTINUATION payload.
fn fragment(kind: u8, flags: u8, payload: &[u8]) -> Option<(usize, usize)> {
    match kind {
        CONTINUATION => Some((0, payload.len())),
        HEADERS => {
            let mut start = 0;
            let mut end = payload.len();
            if flags & PADDED != 0 {
                let pad = usize::from(*payload.first()?);
                start = 1;
                end = end.checked_sub(pad)?;
            }
            if flags & PRIORITY != 0 {
                start += 5;
            }
            (start <= end).then_some((start, end - start))
        }
        _ => None,
    }
}

/// Rewrites the invalid `:authority` values of the header block whose fragments lie at
/// `fragments` in `held`.
fn rewrite_block(held: &mut [u8], fragments: &[(usize, usize)]) {
    let block: Vec<u8> = fragments
        .iter()
        .flat_map(|&(at, len)| held[at..at + len].iter().copied())
        .collect();
    let mut fixed = block.clone();
    for (start, end) in authority_values(&block) {
        fix_authority(&mut fixed[start..end]);
    }
    // Put the block back where its fragments came from (same length, same places).
    let mut from = 0;
    for &(at, len) in fragments {
        held[at..at + len].copy_from_slice(&fixed[from..from + len]);
        from += len;
    }
}

/// Makes `value` a valid URI authority if it is not one, keeping its length.
pub fn fix_authority(value: &mut [u8]) {
    if value.is_empty() || Authority::try_from(&value[..]).is_ok() {
        return;
    }
    for b in value.iter_mut() {
        if !(b.is_ascii_alphanumeric() || b"-._~".contains(b)) {
            *b = b'_';
        }
    }
}

/// The byte ranges, in an HPACK header block (RFC 7541 §6), of the plain-octet values of
/// `:authority` fields whose name is the static table's or a literal one. Empty when the block
/// cannot be parsed (h2 will say why).
pub fn authority_values(block: &[u8]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut at = 0;
    while at < block.len() {
        let first = block[at];
        let prefix = if first & 0x80 != 0 {
            // Indexed field: no literal.
            let Some((_, next)) = integer(block, at, 7) else {
                return Vec::new();
            };
            at = next;
            continue;
        } else if first & 0xc0 == 0x40 {
            6
        } else if first & 0xe0 == 0x20 {
            // Dynamic table size update.
            let Some((_, next)) = integer(block, at, 5) else {
                return Vec::new();
            };
            at = next;
            continue;
        } else {
            4
        };
        let Some((index, next)) = integer(block, at, prefix) else {
            return Vec::new();
        };
        at = next;
        let is_authority = if index == 0 {
            let Some((name, huffman, next)) = string(block, at) else {
                return Vec::new();
            };
            at = next;
            !huffman && &block[name.0..name.1] == b":authority"
        } else {
            index == AUTHORITY_INDEX
        };
        let Some((value, huffman, next)) = string(block, at) else {
            return Vec::new();
        };
        at = next;
        if is_authority && !huffman {
            found.push(value);
        }
    }
    found
}

/// An HPACK integer with an `n`-bit prefix starting at `at` (RFC 7541 §5.1): its value and the
/// offset after it.
fn integer(block: &[u8], at: usize, n: u32) -> Option<(usize, usize)> {
    let max = (1usize << n) - 1;
    let mut value = usize::from(*block.get(at)?) & max;
    let mut at = at + 1;
    if value < max {
        return Some((value, at));
    }
    let mut shift = 0u32;
    loop {
        let b = *block.get(at)?;
        at += 1;
        value = value.checked_add(usize::from(b & 0x7f).checked_shl(shift)?)?;
        if b & 0x80 == 0 {
            return Some((value, at));
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
}

/// An HPACK string literal starting at `at` (RFC 7541 §5.2): its octets' range, whether they
/// are Huffman-coded, and the offset after it.
fn string(block: &[u8], at: usize) -> Option<((usize, usize), bool, usize)> {
    let huffman = *block.get(at)? & 0x80 != 0;
    let (len, start) = integer(block, at, 7)?;
    let end = start.checked_add(len)?;
    (end <= block.len()).then_some(((start, end), huffman, end))
}

/// A Unix-socket connection whose client bytes pass through an [`AuthorityFilter`].
#[derive(Debug)]
pub struct AnyAuthority<S> {
    inner: S,
    filter: AuthorityFilter,
    /// Filtered bytes not yet read by the server, from `ready_at`.
    ready: Vec<u8>,
    ready_at: usize,
}

impl<S> AnyAuthority<S> {
    /// Wraps an accepted connection.
    pub fn new(inner: S) -> Self {
        AnyAuthority {
            inner,
            filter: AuthorityFilter::default(),
            ready: Vec::new(),
            ready_at: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AnyAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_at < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_at);
                buf.put_slice(&this.ready[this.ready_at..this.ready_at + n]);
                this.ready_at += n;
                return Poll::Ready(Ok(()));
            }
            this.ready.clear();
            this.ready_at = 0;
            let mut raw = [0u8; 16 * 1024];
            let mut raw_buf = ReadBuf::new(&mut raw);
            match Pin::new(&mut this.inner).poll_read(cx, &mut raw_buf) {
                Poll::Ready(Ok(())) if raw_buf.filled().is_empty() => {
                    // End of stream: whatever is still held goes to h2 as it is.
                    this.filter.give_up(&mut this.ready);
                    this.ready.append(&mut this.filter.pending);
                    if this.ready.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Ok(())) => this.filter.feed(raw_buf.filled(), &mut this.ready),
                other => return other,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AnyAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: Connected> Connected for AnyAuthority<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests;
