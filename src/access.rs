//! Bearer tokens: what a request presents, and the digests the clients file
//! holds instead of the tokens themselves.

use sha2::{Digest, Sha256};

pub type TokenDigest = [u8; 32];

/// The SHA-256 of the bearer token in an `Authorization` header, if it holds one.
pub fn presented_digest(authorization: &[u8]) -> Option<TokenDigest> {
    let (scheme, token) = authorization.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token_digest(token))?
}

/// The SHA-256 of a token sent bare (as Vault's `X-Vault-Token`), surrounding
/// whitespace ignored; `None` for an empty one.
pub fn token_digest(token: &[u8]) -> Option<TokenDigest> {
    let token = token.trim_ascii();
    (!token.is_empty()).then(|| Sha256::digest(token).into())
}

/// A new random token (32 bytes from the OS CSPRNG, as 64 hex digits) and the
/// line that allows it in the clients file (its SHA-256).
pub fn generate_token() -> Result<(String, String), getrandom::Error> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut())?;
    let token = hex::encode(bytes.as_ref());
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    Ok((token, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bearer_tokens_are_presented() {
        let digest: TokenDigest = Sha256::digest(b"s3cret-token").into();
        assert_eq!(presented_digest(b"Bearer s3cret-token"), Some(digest));
        assert_eq!(presented_digest(b"bearer s3cret-token "), Some(digest));
        assert_ne!(presented_digest(b"Bearer s3cret-tokem"), Some(digest));
        assert_eq!(presented_digest(b"Basic czNjcmV0LXRva2Vu"), None);
        assert_eq!(presented_digest(b"Bearer "), None);
        assert_eq!(token_digest(b" s3cret-token\t"), Some(digest));
        assert_eq!(token_digest(b"  "), None);
    }

    #[test]
    fn generated_tokens_match_their_line() {
        let (token, line) = generate_token().unwrap();
        let digest = presented_digest(format!("Bearer {token}").as_bytes()).unwrap();
        assert_eq!(hex::encode(digest), line);
        assert_ne!(generate_token().unwrap().0, token);
    }
}
