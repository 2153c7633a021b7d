//! Owner tokens: the value stored in the lock key.
//!
//! 128 bits from the operating system's CSPRNG per acquisition, as 32 hex digits. Guessing a
//! live token is hopeless, so only the owner can pass the compare-and-act scripts that extend
//! or release a lock.

use std::fmt;

use crate::error::{Error, Result};

/// A per-acquisition owner token.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Token(String);

impl Token {
    /// Draws a fresh token from the OS random source.
    pub fn generate() -> Result<Token> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)
            .map_err(|e| Error::Internal(format!("OS random source failed: {e}")))?;
        Ok(Token(format!("{:032x}", u128::from_be_bytes(bytes))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Tokens are credentials for the lock they guard: keep them out of logs.
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}…)", &self.0[..6])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_32_hex_digits_and_distinct() {
        let a = Token::generate().expect("random");
        let b = Token::generate().expect("random");
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(!format!("{a:?}").contains(a.as_str()));
    }
}
