//! The framing invite and request codes share: a prefix, then base32 without padding of bytes
//! read front to back — fixed-size fields and fields prefixed by a one-byte length. Base32 is
//! case-insensitive, so a code read back from a QR code (upper case) decodes too.

use anyhow::Result;

/// `prefix` followed by `bytes` in lower-case base32.
pub(crate) fn encode(prefix: &str, bytes: &[u8]) -> String {
    format!("{prefix}{}", data_encoding::BASE32_NOPAD.encode(bytes).to_ascii_lowercase())
}

/// Appends `item` after its one-byte length (callers keep items under 256 bytes).
pub(crate) fn push_prefixed(bytes: &mut Vec<u8>, item: &[u8]) {
    bytes.push(item.len() as u8);
    bytes.extend_from_slice(item);
}

/// Reads a code's bytes; every shortfall is `garbled()`.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    garbled: &'a dyn Fn() -> anyhow::Error,
}

/// The bytes of `code` after `prefix`, in either case, with surrounding whitespace ignored.
pub(crate) fn body(code: &str, prefix: &str, garbled: &dyn Fn() -> anyhow::Error) -> Result<Vec<u8>> {
    let code = code.trim().to_ascii_uppercase();
    let body = code.strip_prefix(&prefix.to_ascii_uppercase()).ok_or_else(garbled)?;
    data_encoding::BASE32_NOPAD.decode(body.as_bytes()).map_err(|_| garbled())
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], garbled: &'a dyn Fn() -> anyhow::Error) -> Self {
        Self { rest: bytes, garbled }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err((self.garbled)());
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    pub(crate) fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    /// A field after its one-byte length.
    pub(crate) fn prefixed(&mut self) -> Result<&'a [u8]> {
        let len = usize::from(self.byte()?);
        self.take(len)
    }

    /// A count no larger than `max`.
    pub(crate) fn count(&mut self, max: usize) -> Result<usize> {
        let count = usize::from(self.byte()?);
        if count > max {
            return Err((self.garbled)());
        }
        Ok(count)
    }

    /// Fails on trailing bytes.
    pub(crate) fn finish(self) -> Result<()> {
        if self.rest.is_empty() { Ok(()) } else { Err((self.garbled)()) }
    }
}
