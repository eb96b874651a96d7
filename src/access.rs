//! Who may call the server: bearer tokens, checked against a file of their SHA-256 digests.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub type TokenDigest = [u8; 32];

/// Why the tokens file cannot be used; the server does not start then.
#[derive(Debug)]
pub enum TokensError {
    Read {
        path: PathBuf,
        source: io::Error,
    },
    /// A line that is not a SHA-256 hex digest (numbered from 1).
    NotADigest {
        path: PathBuf,
        line: usize,
    },
    /// No digest at all: nobody could call the server.
    Empty {
        path: PathBuf,
    },
}

impl fmt::Display for TokensError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokensError::Read { path, source } => write!(
                f,
                "{}: cannot read the tokens file (CRYPTOSERVER_TOKENS_FILE): {source}",
                path.display()
            ),
            TokensError::NotADigest { path, line } => write!(
                f,
                "{}:{line}: not a SHA-256 hex digest (64 hex digits); the file holds token digests, \
                 never tokens: `cargo xtask gen-token` prints both",
                path.display()
            ),
            TokensError::Empty { path } => write!(
                f,
                "{}: holds no token digest, so nobody could call the server; add one with `cargo xtask gen-token`",
                path.display()
            ),
        }
    }
}

impl std::error::Error for TokensError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TokensError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The allowed tokens, as digests only: the file never holds a token in clear.
pub struct Tokens {
    digests: Vec<TokenDigest>,
}

impl Tokens {
    /// Reads one lower-case or upper-case SHA-256 hex digest per line; blank lines
    /// and lines starting with `#` are ignored.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut digests = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let digest = hex::decode(line)
                .ok()
                .and_then(|bytes| TokenDigest::try_from(bytes).ok())
                .ok_or_else(|| TokensError::NotADigest {
                    path: path.to_owned(),
                    line: number + 1,
                })?;
            digests.push(digest);
        }
        if digests.is_empty() {
            return Err(TokensError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Tokens { digests })
    }

    /// The digest of the presented bearer token when it is allowed. Every allowed
    /// digest is compared, in constant time, whatever matches.
    pub fn check(&self, authorization: Option<&[u8]>) -> Option<TokenDigest> {
        let token = bearer_token(authorization?)?;
        let presented: TokenDigest = Sha256::digest(token).into();
        let matched = self
            .digests
            .iter()
            .fold(subtle::Choice::from(0), |found, allowed| {
                found | allowed.ct_eq(&presented)
            });
        bool::from(matched).then_some(presented)
    }
}

/// A new random token (32 bytes from the OS CSPRNG, as 64 hex digits) and the
/// line that allows it in the tokens file (its SHA-256).
pub fn generate_token() -> Result<(String, String), getrandom::Error> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut())?;
    let token = hex::encode(bytes.as_ref());
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    Ok((token, digest))
}

fn bearer_token(authorization: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = authorization.split_at_checked(7)?;
    (scheme.eq_ignore_ascii_case(b"bearer ") && !token.is_empty()).then_some(token.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens_file(text: &str) -> (tempfile::NamedTempFile, Result<Tokens, TokensError>) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        let tokens = Tokens::load(file.path());
        (file, tokens)
    }

    #[test]
    fn allowed_tokens_pass_and_others_do_not() {
        let digest = hex::encode(Sha256::digest(b"s3cret-token"));
        let (_file, tokens) = tokens_file(&format!("# ops team\n\n{digest}\n"));
        let tokens = tokens.unwrap();
        assert!(tokens.check(Some(b"Bearer s3cret-token")).is_some());
        assert!(tokens.check(Some(b"bearer s3cret-token")).is_some());
        assert!(tokens.check(Some(b"Bearer s3cret-tokem")).is_none());
        assert!(tokens.check(Some(b"Basic czNjcmV0LXRva2Vu")).is_none());
        assert!(tokens.check(Some(b"Bearer ")).is_none());
        assert!(tokens.check(None).is_none());
    }

    #[test]
    fn generated_tokens_pass_with_their_line() {
        let (token, line) = generate_token().unwrap();
        let (_file, tokens) = tokens_file(&line);
        assert!(tokens
            .unwrap()
            .check(Some(format!("Bearer {token}").as_bytes()))
            .is_some());
        assert_ne!(generate_token().unwrap().0, token);
    }

    #[test]
    fn bad_files_are_refused_naming_the_line() {
        let (_file, tokens) = tokens_file("# first\nabc\n");
        assert!(matches!(
            tokens,
            Err(TokensError::NotADigest { line: 2, .. })
        ));
        let (_file, tokens) = tokens_file("# nothing\n");
        assert!(matches!(tokens, Err(TokensError::Empty { .. })));
    }
}
