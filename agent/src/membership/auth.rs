//! Authenticated framing of membership datagrams: a shared-key HMAC-SHA256 tag on every datagram.
//!
//! Frame: `"BM"` magic (2 bytes), version (1 byte), key id (4 bytes: the first bytes of
//! SHA-256(key), so a receiver can tell "another key" from "tampered"), the SWIM payload, and
//! the 32-byte HMAC-SHA256 tag over everything before it. The tag is verified in constant time
//! before a single payload byte is decoded.
//!
//! This authenticates (only holders of the key can make the cluster believe anything) but does
//! not encrypt, and does not stop a replay of a captured datagram; SWIM's probe numbers and
//! incarnations make replays stale (an old Ack does not answer a new probe, an old Alive does not
//! override a newer Suspect or Down).

use std::path::Path;

use ring::{digest, hmac};

/// The shortest key accepted: 128 bits.
pub const MIN_KEY_LEN: usize = 16;
/// Bytes added to every datagram: header plus tag.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

const MAGIC: [u8; 2] = *b"BM";
const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;
const HEADER_LEN: usize = MAGIC.len() + 1 + KEY_ID_LEN;
const TAG_LEN: usize = 32;

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key is shorter than [`MIN_KEY_LEN`].
    #[error(
        "the membership key is {len} bytes long; it needs at least {MIN_KEY_LEN} random bytes \
         (for example: head -c 32 /dev/urandom > key, then store it in the agents' Secret)"
    )]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// The key file could not be read.
    #[error("cannot read the membership key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Shorter than header plus tag.
    #[error("datagram too short ({0} bytes)")]
    Short(usize),
    /// Not a Berth membership frame, or an unknown version.
    #[error("not a Berth membership datagram (bad magic or version)")]
    BadHeader,
    /// Signed with another key (the sender's key id differs from ours).
    #[error("signed with another key (key id {0:08x})")]
    OtherKey(u32),
    /// The tag does not match: tampered, or a key-id collision.
    #[error("bad authentication tag")]
    BadTag,
}

/// The shared key every agent of a cluster holds.
#[derive(Clone)]
pub struct AuthKey {
    key: hmac::Key,
    id: [u8; KEY_ID_LEN],
}

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material; the id is enough to compare two agents' keys.
        write!(f, "AuthKey(id {:08x})", self.id())
    }
}

impl AuthKey {
    /// A key from raw bytes; at least [`MIN_KEY_LEN`] of them.
    pub fn new(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort { len: bytes.len() });
        }
        let d = digest::digest(&digest::SHA256, bytes);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&d.as_ref()[..KEY_ID_LEN]);
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
            id,
        })
    }

    /// Reads a key file (a mounted Secret); a trailing newline is part of the key, as written.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::new(&bytes)
    }

    /// Reads the raw bytes of a key file, checking its length, for [`super::MembershipConfig::key`].
    pub fn read_file(path: &Path) -> Result<Vec<u8>, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::new(&bytes)?;
        Ok(bytes)
    }

    /// A short public fingerprint of the key (to compare agents' keys in logs).
    pub fn id(&self) -> u32 {
        u32::from_be_bytes(self.id)
    }

    /// Frames `payload`: header, payload, tag.
    pub fn seal(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + OVERHEAD);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(payload);
        let tag = hmac::sign(&self.key, &out);
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Checks a datagram and returns its payload; never panics, whatever the bytes.
    pub fn open<'a>(&self, datagram: &'a [u8]) -> Result<&'a [u8], AuthError> {
        if datagram.len() < OVERHEAD {
            return Err(AuthError::Short(datagram.len()));
        }
        let (signed, tag) = datagram.split_at(datagram.len() - TAG_LEN);
        let (header, payload) = signed.split_at(HEADER_LEN);
        if header[..MAGIC.len()] != MAGIC || header[MAGIC.len()] != VERSION {
            return Err(AuthError::BadHeader);
        }
        let id = &header[MAGIC.len() + 1..];
        if id != self.id {
            let mut other = [0u8; KEY_ID_LEN];
            other.copy_from_slice(id);
            return Err(AuthError::OtherKey(u32::from_be_bytes(other)));
        }
        hmac::verify(&self.key, signed, tag).map_err(|_| AuthError::BadTag)?;
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> AuthKey {
        AuthKey::new(&[b; 32]).unwrap()
    }

    #[test]
    fn a_sealed_datagram_opens_to_its_payload() {
        let k = key(1);
        let d = k.seal(b"hello swim");
        assert_eq!(d.len(), b"hello swim".len() + OVERHEAD);
        assert_eq!(k.open(&d).unwrap(), b"hello swim");
        assert_eq!(k.open(&k.seal(b"")).unwrap(), b"");
    }

    #[test]
    fn every_tampered_byte_is_rejected() {
        let k = key(1);
        let d = k.seal(b"payload bytes");
        for i in 0..d.len() {
            let mut t = d.clone();
            t[i] ^= 0x01;
            assert!(k.open(&t).is_err(), "flipping byte {i} went unnoticed");
        }
    }

    #[test]
    fn short_and_foreign_datagrams_are_rejected_with_their_reason() {
        let k = key(1);
        let d = k.seal(b"x");
        assert_eq!(
            k.open(&d[..OVERHEAD - 1]),
            Err(AuthError::Short(OVERHEAD - 1))
        );
        assert_eq!(k.open(&[]), Err(AuthError::Short(0)));
        let other = key(2);
        assert_eq!(
            other.open(&d),
            Err(AuthError::OtherKey(k.id())),
            "another key's datagram names the sender's key id"
        );
        let mut truncated = d.clone();
        truncated.pop();
        assert!(k.open(&truncated).is_err());
        let mut extended = d;
        extended.push(0);
        assert!(k.open(&extended).is_err());
    }

    #[test]
    fn short_keys_are_refused_with_a_helpful_error() {
        let e = AuthKey::new(b"").unwrap_err();
        assert!(e.to_string().contains("0 bytes"), "{e}");
        assert!(e.to_string().contains("at least 16"), "{e}");
        assert!(AuthKey::new(&[7; 15]).is_err());
        assert!(AuthKey::new(&[7; 16]).is_ok());
        let missing = AuthKey::read_file(Path::new("/nonexistent/berth-key")).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/berth-key"),
            "{missing}"
        );
    }

    #[test]
    fn debug_output_shows_the_key_id_not_the_key() {
        let k = AuthKey::new(b"0123456789abcdef-secret").unwrap();
        let s = format!("{k:?}");
        assert!(!s.contains("secret"), "{s}");
        assert!(s.contains(&format!("{:08x}", k.id())), "{s}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_open_and_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let k = key(3);
            prop_assert!(k.open(&bytes).is_err());
        }

        #[test]
        fn any_payload_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let k = key(4);
            let sealed = k.seal(&payload);
            prop_assert_eq!(k.open(&sealed).unwrap(), &payload[..]);
        }
    }
}
