//! Signed updates of the clients, for a sealed host nobody logs into: the
//! operator signs a clients file with minisign's secret key (kept offline),
//! `minisign -S -s KEY -m F && cat F.minisig F > F.signed`, and the server
//! checks the document against the public key CRYPTOSERVER_CLIENTS_SIGNER
//! names. The document is minisign's four signature lines followed by the
//! exact bytes of the file; its serial (the file's `serial=` line) orders
//! documents. The newest accepted one is kept in CRYPTOSERVER_STATE_DIR, so
//! that a restart starts with it unless the clients file is newer.

use std::fmt;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use minisign_verify::{PublicKey, Signature};

use crate::clients::{Clients, LineProblem};

/// The kept document's name in the state directory.
const KEPT_NAME: &str = "clients.signed";
/// The lines of minisign's signature: untrusted comment, signature, trusted
/// comment, global signature.
const SIGNATURE_LINES: usize = 4;
/// Length of the base64 public key line in `minisign.pub`.
const PUBLIC_KEY_LEN: usize = 56;
/// How the base64 of a minisign secret key starts (algorithm `Ed`, then the
/// key derivation `Sc` or none): given instead of the public key, it must not
/// be echoed anywhere.
const SECRET_KEY_STARTS: [&str; 2] = ["RWRTY", "RWQAA"];

/// The operator's public key, from CRYPTOSERVER_CLIENTS_SIGNER.
#[derive(Clone, Debug)]
pub struct Signer(PublicKey);

impl Signer {
    /// The base64 line minisign writes second in `minisign.pub`.
    pub fn parse(text: &str) -> Result<Signer, SignerError> {
        let text = text.trim();
        PublicKey::from_base64(text)
            .ok()
            .filter(|_| text.len() == PUBLIC_KEY_LEN)
            .map(Signer)
            .ok_or_else(|| SignerError::Malformed {
                length: text.chars().count(),
                looks_secret: SECRET_KEY_STARTS
                    .iter()
                    .any(|start| text.starts_with(start)),
            })
    }
}

/// Why signed updates cannot be set up; the server does not start then. No
/// variant holds the value given: it may be a secret key pasted by mistake.
#[derive(Debug)]
pub enum SignerError {
    Malformed {
        length: usize,
        looks_secret: bool,
    },
    /// A signer without a clients file: a signed update replaces the file's set.
    NoClientsFile,
    StateDir {
        path: PathBuf,
        source: io::Error,
    },
}

impl fmt::Display for SignerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignerError::Malformed {
                length,
                looks_secret,
            } => {
                write!(
                    f,
                    "CRYPTOSERVER_CLIENTS_SIGNER is not a minisign public key: expected the line \
                     minisign writes second in minisign.pub ({PUBLIC_KEY_LEN} base64 characters \
                     starting with RW), got {length} characters"
                )?;
                if *looks_secret {
                    f.write_str(
                        "; this looks like a minisign SECRET key: give the server the public key \
                         (minisign.pub), keep the secret key offline, and make a new key pair if \
                         this one was exposed",
                    )?;
                }
                Ok(())
            }
            SignerError::NoClientsFile => f.write_str(
                "CRYPTOSERVER_CLIENTS_SIGNER is set without a clients file: signed updates replace \
                 the clients of CRYPTOSERVER_TOKENS_FILE, so set it too (the first clients, \
                 unsigned)",
            ),
            SignerError::StateDir { path, source } => write!(
                f,
                "{}: the state directory (CRYPTOSERVER_STATE_DIR), where signed clients updates \
                 are kept, is not a directory: {source}; create it (systemd: \
                 StateDirectory=cryptoserver)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for SignerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SignerError::StateDir { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Why a document is refused.
#[derive(Debug)]
pub enum DocumentError {
    /// Not minisign's signature lines followed by a file: what is wrong.
    NotADocument(&'static str),
    /// Signed with another key than the signer's.
    OtherKey,
    /// The signature does not verify: the file, the signature or its trusted
    /// comment changed since it was signed.
    Altered,
    /// The file is signed, but the parser refuses its line `line` (numbered
    /// from 1 in the file, after the signature's lines); `None` for a file
    /// without any digest.
    Refused {
        line: usize,
        problem: Option<LineProblem>,
    },
    /// The file is signed, but not UTF-8 text.
    NotText,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocumentError::NotADocument(what) => write!(
                f,
                "not a signed clients document ({what}): send minisign's signature followed by \
                 the clients file, `minisign -S -s KEY -m F && cat F.minisig F > F.signed`"
            ),
            DocumentError::OtherKey => f.write_str(
                "signed with another key than CRYPTOSERVER_CLIENTS_SIGNER's: sign with the \
                 secret key of that public key",
            ),
            DocumentError::Altered => f.write_str(
                "the signature does not verify: the file, the signature or its trusted comment \
                 changed after signing; sign the file again",
            ),
            DocumentError::Refused {
                line,
                problem: Some(problem),
            } => write!(f, "the signed clients file's line {line}: {problem}"),
            DocumentError::Refused { problem: None, .. } => f.write_str(
                "the signed clients file holds no token digest, so nobody could call the server",
            ),
            DocumentError::NotText => f.write_str("the signed clients file is not UTF-8 text"),
        }
    }
}

impl std::error::Error for DocumentError {}

/// The signer and where accepted documents are kept.
#[derive(Debug)]
pub struct SignedUpdates {
    signer: Signer,
    kept: PathBuf,
    /// One change of the clients at a time: each checks its serial against
    /// the set it replaces.
    changing: Mutex<()>,
}

impl SignedUpdates {
    /// Signed updates kept in `state_dir`, which must be a directory.
    pub fn new(signer: Signer, state_dir: &Path) -> Result<SignedUpdates, SignerError> {
        let state_error = |source| SignerError::StateDir {
            path: state_dir.to_owned(),
            source,
        };
        let metadata = std::fs::metadata(state_dir).map_err(state_error)?;
        if !metadata.is_dir() {
            return Err(state_error(io::Error::from(io::ErrorKind::NotADirectory)));
        }
        Ok(SignedUpdates {
            signer,
            kept: state_dir.join(KEPT_NAME),
            changing: Mutex::new(()),
        })
    }

    /// Held while the clients in force are compared with others and replaced.
    pub fn changing(&self) -> MutexGuard<'_, ()> {
        self.changing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The clients of a document the signer signed.
    pub fn open(&self, document: &[u8]) -> Result<Clients, DocumentError> {
        let (signature, file) = split(document)?;
        let signature = std::str::from_utf8(signature)
            .ok()
            .and_then(|text| Signature::decode(text).ok())
            .ok_or(DocumentError::NotADocument(
                "its first four lines are not a minisign signature",
            ))?;
        self.signer
            .0
            .verify(file, &signature, true)
            .map_err(|error| match error {
                minisign_verify::Error::UnexpectedKeyId => DocumentError::OtherKey,
                _ => DocumentError::Altered,
            })?;
        let text = std::str::from_utf8(file).map_err(|_| DocumentError::NotText)?;
        Clients::parse(text).map_err(|(line, problem)| DocumentError::Refused { line, problem })
    }

    /// Keeps `document` for the next start: written whole under another name,
    /// synced, renamed over the kept one, and the rename synced, so a crash
    /// leaves the old document or the new one, never a part.
    pub fn keep(&self, document: &[u8]) -> io::Result<()> {
        let directory = self
            .kept
            .parent()
            .expect("the kept file is in the state directory");
        let mut file = tempfile::NamedTempFile::new_in(directory)?;
        file.write_all(document)?;
        file.as_file().sync_all()?;
        file.persist(&self.kept).map_err(|error| error.error)?;
        std::fs::File::open(directory)?.sync_all()
    }

    pub fn kept_path(&self) -> &Path {
        &self.kept
    }

    /// The newer of the clients file's set and the kept document's (whose
    /// signature is checked again), by serial; the file's on a tie. A kept
    /// document that cannot be read or opened is logged and left out.
    pub fn newest(&self, file: Clients) -> Clients {
        let kept = match std::fs::read(&self.kept) {
            Ok(document) => self.open(&document).map_err(|error| error.to_string()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => return file,
            Err(error) => Err(error.to_string()),
        };
        match kept {
            Ok(kept) if kept.serial() > file.serial() => {
                tracing::info!(
                    serial = kept.serial(),
                    file_serial = file.serial(),
                    kept = %self.kept.display(),
                    "the kept signed clients document is newer than the clients file: it is in force"
                );
                kept
            }
            Ok(_) => file,
            Err(error) => {
                tracing::warn!(
                    kept = %self.kept.display(),
                    %error,
                    "the kept signed clients document is invalid and ignored"
                );
                file
            }
        }
    }
}

/// The signature's lines and the file after them.
fn split(document: &[u8]) -> Result<(&[u8], &[u8]), DocumentError> {
    let mut end = 0;
    for _ in 0..SIGNATURE_LINES {
        let line_end =
            document[end..]
                .iter()
                .position(|&b| b == b'\n')
                .ok_or(DocumentError::NotADocument(
                    "fewer than the four lines of a minisign signature",
                ))?;
        end += line_end + 1;
    }
    if end == document.len() {
        return Err(DocumentError::NotADocument(
            "nothing after the signature's four lines: append the clients file",
        ));
    }
    Ok(document.split_at(end))
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    /// Made once with `minisign -G -W` (the secret keys were not kept) and
    /// `minisign -S`: a file of serial 7 allowing the token `tok` as billing.
    const SIGNER: &str = "RWRgWJPvorhPZTm6sw6UC3T/1lJz5MajAUCIqXCqj2DwCH8ft7HWaAGo";
    const OTHER_SIGNER: &str = "RWSbNxy5ulbTnvi9VItTh3cQMyHu52Y9gSZ1v1VFoe11pDoEZpollsAQ";
    const SIGNED: &str = concat!(
        "untrusted comment: signature from minisign secret key\n",
        "RURgWJPvorhPZew1N3sq04gEnxW299DfZBBnSk78FGx65kLnsofQMRY5tAFf4ziXJVNeGEu0G0mqw082rSre8MOzo0dX0h4s6w8=\n",
        "trusted comment: clients v7\n",
        "J1jEeHDSDmj4BUX+5iuTJlHmdRBeneCXkJv90pnbxKKBSW1jKdTarqTsWWx07K/H5lseurvNuxSfbMFNF1gWCg==\n",
        "serial=7\n",
        "# ops\n",
        "1a7674eb4ee78df7e1ac439a93c3fa8e3c945784d4dec9fd8e3011738b2f1d62 billing namespace=billing\n",
    );
    /// Signed by SIGNER, but its second line is no digest.
    const SIGNED_BUT_REFUSED: &str = concat!(
        "untrusted comment: signature from minisign secret key\n",
        "RURgWJPvorhPZQObDSt62mILEOhKTNhqdQEHEc04HwoSCCBm0kyAJIc/kkD5w4YqqyMkXi/xHyLASuZtzqaLvJUE6HA/qW7kTQw=\n",
        "trusted comment: timestamp:1796644047\tfile:G\thashed\n",
        "hTyOIAuEXxYQ4ImImMkrgV963W/qyH8lIKTcSJSACCNCSx/EY12KqS6yylgZyTN/7XiMlAb8PhyBPCkSWPlJDw==\n",
        "serial=8\n",
        "not-a-digest app\n",
    );

    fn updates(signer: &str, state_dir: &Path) -> SignedUpdates {
        SignedUpdates::new(Signer::parse(signer).unwrap(), state_dir).unwrap()
    }

    fn file_of_serial(serial: u64) -> Clients {
        let digest = hex::encode(Sha256::digest(b"other"));
        Clients::parse(&format!("serial={serial}\n{digest}\n")).unwrap()
    }

    #[test]
    fn a_signer_is_minisigns_public_key_line_and_never_echoed() {
        assert!(Signer::parse(SIGNER).is_ok());
        assert!(Signer::parse(&format!(" {SIGNER}\n")).is_ok());
        for bad in [
            "",
            "RW",
            &SIGNER[..40],
            &format!("{SIGNER}AAAA"),
            "untrusted comment: minisign public key",
        ] {
            let error = Signer::parse(bad).unwrap_err();
            assert!(
                matches!(
                    error,
                    SignerError::Malformed {
                        looks_secret: false,
                        ..
                    }
                ),
                "{bad}"
            );
        }
        let secret = format!("RWQAAEIy{}", "A".repeat(150));
        let error = Signer::parse(&secret).unwrap_err().to_string();
        assert!(
            error.contains("SECRET key") && error.contains("158 characters"),
            "{error}"
        );
        assert!(!error.contains(&secret[..20]), "{error}");
    }

    #[test]
    fn a_document_the_signer_signed_opens_to_its_clients() {
        let dir = tempfile::tempdir().unwrap();
        let clients = updates(SIGNER, dir.path()).open(SIGNED.as_bytes()).unwrap();
        assert_eq!(clients.serial(), 7);
        let client = clients.check(Some(b"Bearer tok")).unwrap();
        assert_eq!(
            (client.label.as_str(), client.namespace.as_deref()),
            ("billing", Some("billing"))
        );
    }

    #[test]
    fn documents_are_refused_for_what_is_wrong_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let updates = updates(SIGNER, dir.path());
        let other = self::updates(OTHER_SIGNER, dir.path());
        assert!(matches!(
            other.open(SIGNED.as_bytes()),
            Err(DocumentError::OtherKey)
        ));
        let altered_file = SIGNED.replace("serial=7", "serial=9");
        let altered_comment = SIGNED.replace("clients v7", "clients v9");
        for altered in [altered_file, altered_comment] {
            assert!(matches!(
                updates.open(altered.as_bytes()),
                Err(DocumentError::Altered)
            ));
        }
        let file = SIGNED.splitn(5, '\n').last().unwrap();
        for not_a_document in [
            "",
            &SIGNED[..SIGNED.len() - file.len()],
            file,
            &SIGNED
                .splitn(4, '\n')
                .take(3)
                .collect::<Vec<_>>()
                .join("\n"),
            &format!("a\nb\nc\nd\n{file}"),
        ] {
            let error = updates.open(not_a_document.as_bytes()).unwrap_err();
            assert!(
                matches!(error, DocumentError::NotADocument(_)),
                "{not_a_document:?}: {error}"
            );
        }
        let error = updates.open(SIGNED_BUT_REFUSED.as_bytes()).unwrap_err();
        assert!(matches!(
            error,
            DocumentError::Refused {
                line: 2,
                problem: Some(LineProblem::NotADigest)
            }
        ));
        assert!(!error.to_string().contains("not-a-digest"), "{error}");
    }

    #[test]
    fn the_kept_document_is_in_force_when_newer_than_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let updates = updates(SIGNER, dir.path());
        assert_eq!(updates.newest(file_of_serial(3)).serial(), 3);
        updates.keep(SIGNED.as_bytes()).unwrap();
        assert_eq!(
            std::fs::read_to_string(updates.kept_path()).unwrap(),
            SIGNED
        );
        assert_eq!(updates.newest(file_of_serial(3)).serial(), 7);
        assert_eq!(updates.newest(file_of_serial(8)).serial(), 8);
        // On a tie, the file: both are the operator's, the file the one at hand.
        let tie = updates.newest(file_of_serial(7));
        assert!(tie.check(Some(b"Bearer other")).is_some());
        std::fs::write(
            updates.kept_path(),
            SIGNED.replace("billing\n", "billing rate=1\n"),
        )
        .unwrap();
        assert_eq!(updates.newest(file_of_serial(3)).serial(), 3);
        let entries = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(entries, 1, "no temporary file is left behind");
    }

    #[test]
    fn the_state_directory_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        for missing in [
            dir.path().join("absent"),
            updates(SIGNER, dir.path()).kept_path().to_owned(),
        ] {
            std::fs::write(dir.path().join("clients.signed"), "x").unwrap();
            let error = SignedUpdates::new(Signer::parse(SIGNER).unwrap(), &missing).unwrap_err();
            assert!(
                error.to_string().contains("CRYPTOSERVER_STATE_DIR"),
                "{error}"
            );
        }
    }
}
