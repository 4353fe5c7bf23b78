//! age: parsing recipients and identities, encrypting (armored) and decrypting one file.

use std::io::{Read, Write};
use std::path::Path;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// A parsed recipient, shareable across the threads that encrypt.
pub type Recipient = Box<dyn age::Recipient + Send + Sync>;
/// A parsed identity.
pub type Identity = Box<dyn age::Identity + Send + Sync>;

/// A recipient in its canonical form: `age1…`, or `TYPE BASE64` with the SSH comment dropped, so
/// that editing a key's comment neither re-encrypts anything nor changes `secrets.nix`.
pub fn canonical(recipient: &str) -> String {
    let mut words = recipient.split_whitespace();
    match (words.next(), words.next()) {
        (Some(kind), Some(key)) if kind.starts_with("ssh-") => format!("{kind} {key}"),
        (Some(one), _) => one.to_string(),
        _ => String::new(),
    }
}

/// Parses an age X25519 or SSH public key; `what` names it in the error.
pub fn parse_recipient(recipient: &str, what: &str) -> Result<Recipient> {
    let text = canonical(recipient);
    let parsed: Option<Recipient> = if text.starts_with("age1") {
        text.parse::<age::x25519::Recipient>()
            .ok()
            .map(|r| Box::new(r) as Recipient)
    } else {
        text.parse::<age::ssh::Recipient>()
            .ok()
            .map(|r| Box::new(r) as Recipient)
    };
    parsed.ok_or_else(|| {
        Error::usage(
            format!("{what}: not an age or SSH public key"),
            Some("use an age1... recipient or an ssh-ed25519 / ssh-rsa public key".into()),
        )
    })
}

/// Encrypts `plaintext` to `recipients`, ASCII-armored.
pub fn encrypt(plaintext: &[u8], recipients: &[&Recipient], what: &str) -> Result<Vec<u8>> {
    let fail = |e: &dyn std::fmt::Display| Error::crypto(format!("encrypting {what}"), e);
    let encryptor = age::Encryptor::with_recipients(
        recipients.iter().map(|r| r.as_ref() as &dyn age::Recipient),
    )
    .map_err(|e| fail(&e))?;
    let mut out = Vec::with_capacity(plaintext.len() * 2 + 512);
    let armor = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)
        .map_err(|e| fail(&e))?;
    let mut writer = encryptor.wrap_output(armor).map_err(|e| fail(&e))?;
    writer.write_all(plaintext).map_err(|e| fail(&e))?;
    writer
        .finish()
        .and_then(|armor| armor.finish())
        .map_err(|e| fail(&e))?;
    Ok(out)
}

/// Decrypts the age file `ciphertext` (armored or binary) read from `path`.
pub fn decrypt(
    ciphertext: &[u8],
    identities: &[Identity],
    path: &Path,
) -> Result<Zeroizing<Vec<u8>>> {
    let reader = age::armor::ArmoredReader::new(ciphertext);
    let decryptor = age::Decryptor::new(reader)
        .map_err(|e| Error::file(path, format!("not a valid age file ({e})")))?;
    let mut stream = decryptor
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => Error::usage(
                format!(
                    "{}: none of the given identities can decrypt it",
                    path.display()
                ),
                Some("pass an admin identity with -i FILE or KPKI_IDENTITY".into()),
            ),
            e => Error::file(path, format!("cannot be decrypted ({e})")),
        })?;
    let mut plaintext = Zeroizing::new(Vec::new());
    stream
        .read_to_end(&mut plaintext)
        .map_err(|e| Error::file(path, format!("is damaged or was tampered with ({e})")))?;
    Ok(plaintext)
}

/// The identities in `path`: an age identity file or an unencrypted OpenSSH private key.
pub fn load_identities(path: &Path) -> Result<Vec<Identity>> {
    let text = Zeroizing::new(std::fs::read(path).map_err(|e| Error::io(path, e))?);
    let unusable = |why: &str| {
        Error::usage(
            format!("{}: {why}", path.display()),
            Some(
                "use an age identity (age-keygen) or an unencrypted OpenSSH ed25519/rsa key".into(),
            ),
        )
    };
    if text.starts_with(b"-----BEGIN") {
        let filename = Some(path.display().to_string());
        return match age::ssh::Identity::from_buffer(&text[..], filename) {
            Ok(age::ssh::Identity::Unencrypted(key)) => {
                Ok(vec![Box::new(age::ssh::Identity::from(key))])
            }
            Ok(age::ssh::Identity::Encrypted(_)) => {
                Err(unusable("the SSH key is passphrase-protected"))
            }
            _ => Err(unusable("not an SSH private key age supports")),
        };
    }
    let identities = age::IdentityFile::from_buffer(&text[..])
        .ok()
        .and_then(|file| file.into_identities().ok())
        .filter(|ids| !ids.is_empty())
        .ok_or_else(|| unusable("not an age identity file or SSH private key"))?;
    Ok(identities)
}

/// A new age X25519 identity: the file text (with its public key as a comment) and the recipient.
pub fn generate_identity() -> (Zeroizing<String>, String) {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let text = format!(
        "# kpki admin identity: decrypts everything in secrets/. Keep it safe and backed up.\n# public key: {recipient}\n{}\n",
        identity.to_string().expose_secret()
    );
    (Zeroizing::new(text), recipient)
}

/// The recipient stanzas of an age file's header as `(type, tag)`: SSH stanzas name the key by
/// a tag, X25519 stanzas name nothing. Read without decrypting; grease stanzas are skipped.
pub fn header_stanzas(
    ciphertext: &[u8],
) -> std::result::Result<Vec<(String, Option<String>)>, String> {
    let mut binary = Vec::new();
    age::armor::ArmoredReader::new(ciphertext)
        .read_to_end(&mut binary)
        .map_err(|e| format!("is not a valid age file ({e})"))?;
    let text = String::from_utf8_lossy(&binary);
    let header = text
        .split("\n--- ")
        .next()
        .filter(|h| h.starts_with("age-encryption.org/v1\n"))
        .ok_or("is not an age v1 file")?;
    Ok(header
        .lines()
        .filter_map(|l| l.strip_prefix("-> "))
        .filter(|stanza| {
            ["X25519 ", "ssh-ed25519 ", "ssh-rsa "]
                .iter()
                .any(|k| stanza.starts_with(k))
        })
        .map(|stanza| {
            let mut words = stanza.split(' ');
            let kind = words.next().unwrap_or_default().to_string();
            let tag = kind
                .starts_with("ssh-")
                .then(|| words.next().unwrap_or_default().to_string());
            (kind, tag)
        })
        .collect())
}

/// The stanzas an age file encrypted to `recipients` (canonical) has, as [`header_stanzas`]
/// reports them.
pub fn expected_stanzas(recipients: &[String]) -> Vec<(String, Option<String>)> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    recipients
        .iter()
        .map(|r| {
            let mut words = r.split(' ');
            match (words.next(), words.next()) {
                (Some(kind), Some(blob)) if kind.starts_with("ssh-") => {
                    let blob = STANDARD.decode(blob).unwrap_or_default();
                    let digest = ring::digest::digest(&ring::digest::SHA256, &blob);
                    (
                        kind.to_string(),
                        Some(STANDARD_NO_PAD.encode(&digest.as_ref()[..4])),
                    )
                }
                _ => ("X25519".to_string(), None),
            }
        })
        .collect()
}
