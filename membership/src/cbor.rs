//! The strict subset of CBOR the log speaks, over minicbor: definite-length arrays, unsigned
//! integers, byte and text strings, null, booleans. Every read checks a named bound before it
//! allocates; there is no recursion on input, so nesting is bounded by the format itself (at
//! most 4 levels, well under the 16 of ML-10).

use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

/// Malformed or non-canonical CBOR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CborError {
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    #[error("indefinite-length item")]
    Indefinite,
    #[error("array of unexpected length")]
    UnexpectedLength,
    #[error("string longer than allowed")]
    TooLong,
    #[error("trailing bytes after the item")]
    TrailingBytes,
    #[error("non-canonical encoding")]
    NonCanonical,
}

pub struct Reader<'b> {
    decoder: Decoder<'b>,
}

impl<'b> Reader<'b> {
    pub fn new(bytes: &'b [u8]) -> Self {
        Self { decoder: Decoder::new(bytes) }
    }

    /// An array of exactly `len` items.
    pub fn array(&mut self, len: usize) -> Result<(), CborError> {
        if self.array_up_to(len)? != len {
            return Err(CborError::UnexpectedLength);
        }
        Ok(())
    }

    /// An array of at most `max` items; returns its length.
    pub fn array_up_to(&mut self, max: usize) -> Result<usize, CborError> {
        let len = self.decoder.array().map_err(malformed)?.ok_or(CborError::Indefinite)?;
        usize::try_from(len).ok().filter(|len| *len <= max).ok_or(CborError::UnexpectedLength)
    }

    pub fn u64(&mut self) -> Result<u64, CborError> {
        self.decoder.u64().map_err(malformed)
    }

    pub fn bool(&mut self) -> Result<bool, CborError> {
        self.decoder.bool().map_err(malformed)
    }

    pub fn bytes(&mut self) -> Result<&'b [u8], CborError> {
        self.expect(Type::Bytes)?;
        self.decoder.bytes().map_err(malformed)
    }

    pub fn fixed_bytes<const N: usize>(&mut self) -> Result<[u8; N], CborError> {
        self.bytes()?.try_into().map_err(|_| CborError::UnexpectedLength)
    }

    pub fn str(&mut self, max_len: usize) -> Result<&'b str, CborError> {
        self.expect(Type::String)?;
        let text = self.decoder.str().map_err(malformed)?;
        if text.len() > max_len {
            return Err(CborError::TooLong);
        }
        Ok(text)
    }

    /// Consumes a null and returns true, or leaves anything else in place and returns false.
    pub fn is_null(&mut self) -> Result<bool, CborError> {
        if self.decoder.datatype().map_err(malformed)? == Type::Null {
            self.decoder.null().map_err(malformed)?;
            return Ok(true);
        }
        Ok(false)
    }

    pub fn finish(self) -> Result<(), CborError> {
        if self.decoder.position() != self.decoder.input().len() {
            return Err(CborError::TrailingBytes);
        }
        Ok(())
    }

    fn expect(&mut self, expected: Type) -> Result<(), CborError> {
        let actual = self.decoder.datatype().map_err(malformed)?;
        if actual != expected {
            return Err(CborError::Malformed(format!("expected {expected}, found {actual}")));
        }
        Ok(())
    }
}

/// Writes canonical CBOR; writing to a `Vec` cannot fail.
pub struct Writer {
    encoder: Encoder<Vec<u8>>,
}

impl Writer {
    pub fn new() -> Self {
        Self { encoder: Encoder::new(Vec::new()) }
    }

    pub fn array(&mut self, len: usize) {
        let _ = self.encoder.array(len as u64);
    }

    pub fn u64(&mut self, value: u64) {
        let _ = self.encoder.u64(value);
    }

    pub fn bool(&mut self, value: bool) {
        let _ = self.encoder.bool(value);
    }

    pub fn bytes(&mut self, value: &[u8]) {
        let _ = self.encoder.bytes(value);
    }

    pub fn str(&mut self, value: &str) {
        let _ = self.encoder.str(value);
    }

    pub fn null(&mut self) {
        let _ = self.encoder.null();
    }

    pub fn finish(self) -> Vec<u8> {
        self.encoder.into_writer()
    }
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

fn malformed(error: minicbor::decode::Error) -> CborError {
    CborError::Malformed(error.to_string())
}
