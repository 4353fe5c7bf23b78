//! age: parsing recipients and identities, encrypting (armored) and decrypting one file.

use std::io::{Read, Write};
use std::path::Path;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// A parsed recipient, shareable across the threads that encrypt.
pub type Recipient = std::sync::Arc<dyn age::Recipient + Send + Sync>;
/// A parsed identity.
pub type Identity = Box<dyn age::Identity + Send + Sync>;

/// A recipient in its canonical form: `age1…`, or `TYPE BASE64` with the SSH comment dropped, so
/// that editing a key's comment neither re-encrypts anything nor changes `secrets.nix`.
pub fn canonical(recipient: &str) -> String {
    let mut words = recipient.split_whitespace();
    match (words.next(), words.next()) {
        (Some(kind), Some(key)) if kind.starts_with("ssh-") => [kind, " ", key].concat(),
        (Some(one), _) => one.to_string(),
        _ => String::new(),
    }
}

/// Checks that `s` is a recipient kpki can encrypt to: an age X25519 key (`age1…`) or an SSH
/// `ssh-ed25519` / `ssh-rsa` (at least 2048 bits) public key. The message never repeats a
/// private key pasted by mistake.
pub fn check_recipient(s: &str) -> std::result::Result<(), String> {
    parse(s).map(|_| ())
}

/// Parses a recipient; `what` names it in the error.
pub fn parse_recipient(recipient: &str, what: &str) -> Result<Recipient> {
    parse(recipient).map_err(|e| {
        Error::usage(
            format!("{what}: {e}"),
            Some("use an age1... recipient or an ssh-ed25519 / ssh-rsa public key".into()),
        )
    })
}

/// The smallest RSA modulus accepted for an `ssh-rsa` recipient.
const MIN_RSA_BITS: usize = 2048;

/// Parses a recipient once per process: the config's validation and the sealing both need it,
/// and an SSH key costs a curve conversion (a thousand host keys at fleet size).
fn parse(recipient: &str) -> std::result::Result<Recipient, String> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Parsed = std::result::Result<Recipient, String>;
    static PARSED: OnceLock<Mutex<HashMap<String, Parsed>>> = OnceLock::new();
    if looks_private(recipient) {
        return Err(
            "this is a private key, not a public one (it is not repeated here); use its public key"
                .into(),
        );
    }
    let text = canonical(recipient);
    let cache = PARSED.get_or_init(Mutex::default);
    if let Some(done) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&text) {
        return done.clone();
    }
    let done = parse_canonical(&text);
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(text, done.clone());
    done
}

/// Parses a recipient in canonical form.
fn parse_canonical(text: &str) -> std::result::Result<Recipient, String> {
    if text.starts_with("age1") {
        if let Ok(x25519) = text.parse::<age::x25519::Recipient>() {
            return Ok(std::sync::Arc::new(x25519));
        }
        return text
            .parse::<age::plugin::Recipient>()
            .map(|r| std::sync::Arc::new(PluginRecipient::new(r)) as Recipient)
            .map_err(|_| {
                format!(
                    "\"{}\" is not a valid age recipient (X25519 age1..., or a plugin's age1NAME1...)",
                    shown(text)
                )
            });
    }
    if let Some(bits) = rsa_bits(text).filter(|b| *b < MIN_RSA_BITS) {
        return Err(format!(
            "an RSA key of {bits} bits is too weak (use ssh-ed25519, or RSA of at least {MIN_RSA_BITS} bits)"
        ));
    }
    text.parse::<age::ssh::Recipient>()
        .map(|r| std::sync::Arc::new(r) as Recipient)
        .map_err(|_| {
            format!(
                "\"{}\" is not an age (age1...) or SSH (ssh-ed25519, ssh-rsa) public key",
                shown(text)
            )
        })
}

/// A recipient of an age plugin (`age1yubikey1…`): wrapping to it runs `age-plugin-NAME`, found
/// on `PATH` the first time a file is sealed, so that commands that seal nothing (status) need
/// no plugin.
struct PluginRecipient {
    recipient: age::plugin::Recipient,
    plugin: std::sync::OnceLock<
        std::result::Result<age::plugin::RecipientPluginV1<Terminal>, age::plugin::ResolveError>,
    >,
}

impl PluginRecipient {
    fn new(recipient: age::plugin::Recipient) -> PluginRecipient {
        PluginRecipient {
            recipient,
            plugin: std::sync::OnceLock::new(),
        }
    }
}

impl age::Recipient for PluginRecipient {
    fn wrap_file_key(
        &self,
        file_key: &age_core::format::FileKey,
    ) -> std::result::Result<
        (
            Vec<age_core::format::Stanza>,
            std::collections::HashSet<String>,
        ),
        age::EncryptError,
    > {
        let name = self.recipient.plugin();
        let plugin = self.plugin.get_or_init(|| {
            age::plugin::RecipientPluginV1::new(
                name,
                std::slice::from_ref(&self.recipient),
                &[],
                Terminal,
            )
        });
        match plugin {
            Ok(plugin) => plugin.wrap_file_key(file_key),
            Err(e) => Err(age::EncryptError::PluginResolve(e.clone())),
        }
    }
}

/// What a plugin shows and asks (a PIN, a touch), on the terminal: messages on stderr, answers
/// read from `/dev/tty`; without a terminal nothing can be answered (a plugin that needs an
/// answer then fails with its own error).
#[derive(Clone, Copy)]
pub struct Terminal;

impl Terminal {
    /// A line typed on the terminal after `prompt`, if there is a terminal.
    fn line(prompt: &str) -> Option<String> {
        use std::io::BufRead;
        let tty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .ok()?;
        let mut out = &tty;
        write!(out, "{prompt} ").ok()?;
        let mut answer = String::new();
        std::io::BufReader::new(&tty).read_line(&mut answer).ok()?;
        Some(answer.trim_end_matches(['\r', '\n']).to_string())
    }
}

impl age::Callbacks for Terminal {
    fn display_message(&self, message: &str) {
        eprintln!("kpki: {message}");
    }

    fn confirm(&self, message: &str, yes: &str, no: Option<&str>) -> Option<bool> {
        let choices = match no {
            Some(no) => format!("[{yes}/{no}]"),
            None => format!("[{yes}]"),
        };
        let answer = Terminal::line(&format!("{message} {choices}"))?;
        Some(answer == yes || no.is_none())
    }

    fn request_public_string(&self, description: &str) -> Option<String> {
        Terminal::line(description)
    }

    fn request_passphrase(&self, description: &str) -> Option<age::secrecy::SecretString> {
        rpassword::prompt_password(format!("{description} "))
            .ok()
            .map(age::secrecy::SecretString::from)
    }
}

/// Whether `s` holds a private key: an age identity, an OpenSSH or PEM private key.
pub fn looks_private(s: &str) -> bool {
    let upper = s.to_ascii_uppercase();
    upper.contains("AGE-SECRET-KEY-")
        || upper.contains("PRIVATE KEY")
        || upper.contains("AGE-PLUGIN-")
}

/// The plugin binary an encryption error says is missing.
fn missing_plugin(e: &age::EncryptError) -> Option<String> {
    match e {
        age::EncryptError::PluginResolve(age::plugin::ResolveError::MissingPlugin {
            binary_name,
        }) => Some(binary_name.clone()),
        _ => None,
    }
}

/// An age error as plain text: age's messages wrap the values they quote in Unicode isolation
/// marks (U+2068, U+2069), which a terminal shows as stray characters.
fn plain(e: &dyn std::fmt::Display) -> String {
    e.to_string().replace(['\u{2068}', '\u{2069}'], "")
}

/// The first characters of a value, for an error message.
fn shown(s: &str) -> String {
    let short: String = s.chars().take(40).collect();
    if short.len() < s.len() {
        format!("{short}...")
    } else {
        short
    }
}

/// The modulus size of an `ssh-rsa` public key, read from its wire encoding.
fn rsa_bits(text: &str) -> Option<usize> {
    use base64::Engine;
    let blob = text.strip_prefix("ssh-rsa ")?;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .ok()?;
    let mut rest = blob.as_slice();
    let mut field = || {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let value = rest.get(4..4 + len)?;
        rest = &rest[4 + len..];
        Some(value)
    };
    (field()? == b"ssh-rsa").then_some(())?;
    let _exponent = field()?;
    let modulus = field()?;
    let significant = modulus.iter().skip_while(|b| **b == 0).count();
    let top = modulus.iter().find(|b| **b != 0)?;
    Some(significant * 8 - top.leading_zeros() as usize)
}

/// Encrypts `plaintext` to `recipients`, ASCII-armored.
pub fn encrypt(plaintext: &[u8], recipients: &[&Recipient], what: &str) -> Result<Vec<u8>> {
    let fail = |e: &dyn std::fmt::Display| Error::crypto(format!("encrypting {what}"), plain(e));
    let missing = |binary_name: &str| {
        Error::usage(
            format!(
                "{binary_name} is not on PATH: a recipient of {what} is that age plugin's, and encrypting to it runs the plugin"
            ),
            Some(format!(
                "install {binary_name}, or run kpki where it is installed"
            )),
        )
    };
    let encryptor = age::Encryptor::with_recipients(
        recipients.iter().map(|r| r.as_ref() as &dyn age::Recipient),
    )
    .map_err(|e| match missing_plugin(&e) {
        Some(binary_name) => missing(&binary_name),
        None => fail(&e),
    })?;
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

/// A binary age file to read from, whose first `read_until` yields its whole header at once.
/// age's buffered header parser reads a line at a time and parses the header again from the
/// start after each line: quadratic in the stanzas, seconds for a file sealed to 5,000 hosts.
/// Handed the whole header (up to and including its MAC line), it parses it once. Nothing is
/// parsed here; the payload is read as from any slice.
struct WholeHeader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// The end of the header's last line (`--- MAC\n`); 0 when it cannot be found (age then
    /// reads line by line and reports the damage itself).
    header_end: usize,
}

impl<'a> WholeHeader<'a> {
    fn new(bytes: &'a [u8]) -> WholeHeader<'a> {
        let header_end = bytes
            .windows(4)
            .position(|w| w == b"\n---")
            .and_then(|at| Some(at + 1 + bytes[at + 1..].iter().position(|b| *b == b'\n')? + 1))
            .unwrap_or(0);
        WholeHeader {
            bytes,
            pos: 0,
            header_end,
        }
    }
}

impl Read for WholeHeader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (&self.bytes[self.pos..]).read(buf)?;
        self.pos += n;
        Ok(n)
    }
}

impl std::io::BufRead for WholeHeader<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        Ok(&self.bytes[self.pos..])
    }

    fn consume(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.bytes.len());
    }

    fn read_until(&mut self, byte: u8, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        let rest = &self.bytes[self.pos..];
        let end = match self.pos {
            0 if self.header_end > 0 => self.header_end,
            _ => rest
                .iter()
                .position(|b| *b == byte)
                .map_or(rest.len(), |i| i + 1),
        };
        buf.extend_from_slice(&rest[..end]);
        self.pos += end;
        Ok(end)
    }
}

/// Said of a file that none of the identities at hand can decrypt.
pub const NOT_A_RECIPIENT: &str = "none of the given identities can decrypt it";

/// Decrypts the age file `ciphertext` (armored or binary) read from `path` with `identities`,
/// which `source` describes in errors.
/// Why a file is not age, on one line (age's own messages may span several).
fn invalid_age(e: &dyn std::fmt::Display) -> String {
    let why: Vec<String> = e
        .to_string()
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    format!("is not a valid age file ({})", why.join(" "))
}

pub fn decrypt(
    ciphertext: &[u8],
    identities: &[Identity],
    path: &Path,
    source: &str,
) -> Result<Zeroizing<Vec<u8>>> {
    let invalid = |e: &dyn std::fmt::Display| Error::file(path, invalid_age(e));
    let mut binary = Zeroizing::new(Vec::new());
    age::armor::ArmoredReader::new(ciphertext)
        .read_to_end(&mut binary)
        .map_err(|e| invalid(&e))?;
    let decryptor =
        age::Decryptor::new_buffered(WholeHeader::new(&binary)).map_err(|e| invalid(&e))?;
    let mut stream = decryptor
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => Error::file(
                path,
                format!("{source} cannot decrypt it: {NOT_A_RECIPIENT}"),
            ),
            e => Error::file(path, format!("cannot be decrypted ({})", plain(&e))),
        })?;
    let mut plaintext = Zeroizing::new(Vec::new());
    stream
        .read_to_end(&mut plaintext)
        .map_err(|e| Error::file(path, format!("is damaged or was tampered with ({e})")))?;
    Ok(plaintext)
}

/// The identities in `path`: an age identity file or an unencrypted OpenSSH private key.
pub fn load_identities(path: &Path) -> Result<Vec<Identity>> {
    let hint = "use an age identity (age-keygen) or an unencrypted OpenSSH ed25519/rsa key";
    let unusable =
        |why: &str| Error::usage(format!("{}: {why}", path.display()), Some(hint.into()));
    let text = match crate::store::read_regular(path, crate::store::PEM_LIMIT) {
        Ok(Some(bytes)) => Zeroizing::new(bytes),
        Ok(None) => return Err(unusable("no such identity file")),
        Err(e) => return Err(Error::usage(e.to_string(), Some(hint.into()))),
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
    let file = age::IdentityFile::from_buffer(&text[..])
        .map_err(|_| unusable("not an age identity file or SSH private key"))?
        .with_callbacks(Terminal);
    let identities = file.into_identities().map_err(|e| match e {
        age::DecryptError::PluginResolve(age::plugin::ResolveError::MissingPlugin {
            binary_name,
        }) => Error::usage(
            format!(
                "{}: holds an identity of an age plugin, and {binary_name} is not on PATH",
                path.display()
            ),
            Some(format!(
                "install {binary_name} (the plugin that holds the key)"
            )),
        ),
        _ => unusable("not an age identity file or SSH private key"),
    })?;
    if identities.is_empty() {
        return Err(unusable("holds no identity"));
    }
    let plugin = text.windows(11).any(|w| w == b"AGE-PLUGIN-");
    Ok(match plugin {
        false => identities,
        true => identities
            .into_iter()
            .map(|i| Box::new(OneAtATime(i)) as Identity)
            .collect(),
    })
}

/// An identity of an age plugin: one decryption at a time, so that a token's prompts (a PIN,
/// a touch) come one after another, never from parallel threads at once.
struct OneAtATime(Identity);

static PLUGIN_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl age::Identity for OneAtATime {
    fn unwrap_stanza(
        &self,
        stanza: &age_core::format::Stanza,
    ) -> Option<std::result::Result<age_core::format::FileKey, age::DecryptError>> {
        let _turn = PLUGIN_TURN.lock().unwrap_or_else(|e| e.into_inner());
        self.0.unwrap_stanza(stanza)
    }

    fn unwrap_stanzas(
        &self,
        stanzas: &[age_core::format::Stanza],
    ) -> Option<std::result::Result<age_core::format::FileKey, age::DecryptError>> {
        let _turn = PLUGIN_TURN.lock().unwrap_or_else(|e| e.into_inner());
        self.0.unwrap_stanzas(stanzas)
    }
}

/// The recipient of an age X25519 identity file, derived from the identity itself (its
/// `# public key:` comment is not trusted).
pub fn identity_recipient(text: &str) -> std::result::Result<String, String> {
    let mut keys = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("AGE-SECRET-KEY-"))
        .map(|l| l.parse::<age::x25519::Identity>());
    match (keys.next(), keys.next()) {
        (Some(Ok(identity)), None) => Ok(identity.to_public().to_string()),
        (None, _) => Err("holds no age identity (AGE-SECRET-KEY-1...)".into()),
        (Some(_), Some(_)) => Err("holds more than one age identity".into()),
        (Some(Err(_)), None) => Err("holds an age identity that does not parse".into()),
    }
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
        .map_err(|e| invalid_age(&e))?;
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
        .filter(|r| !is_plugin(r))
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

/// Whether a canonical recipient is an age plugin's: its stanzas have the plugin's own type,
/// which the header check cannot predict, so it does not count them.
pub fn is_plugin(recipient: &str) -> bool {
    recipient.starts_with("age1") && recipient.parse::<age::x25519::Recipient>().is_err()
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;

    use super::*;

    #[test]
    fn the_whole_header_is_handed_to_age_at_once_and_the_file_still_decrypts() {
        let identities: Vec<age::x25519::Identity> =
            (0..50).map(|_| age::x25519::Identity::generate()).collect();
        let recipients: Vec<age::x25519::Recipient> =
            identities.iter().map(|i| i.to_public()).collect();
        let refs: Vec<&dyn age::Recipient> = recipients
            .iter()
            .map(|r| r as &dyn age::Recipient)
            .collect();
        let mut binary = Vec::new();
        let mut writer = age::Encryptor::with_recipients(refs.into_iter())
            .unwrap()
            .wrap_output(&mut binary)
            .unwrap();
        writer.write_all(b"payload").unwrap();
        writer.finish().unwrap();

        let mut first = Vec::new();
        WholeHeader::new(&binary)
            .read_until(b'\n', &mut first)
            .unwrap();
        let header = String::from_utf8(first).unwrap();
        assert!(header.starts_with("age-encryption.org/v1\n"));
        assert_eq!(header.matches("\n-> X25519 ").count(), 50);
        assert!(header.rsplit('\n').nth(1).unwrap().starts_with("--- "));

        let last: Vec<Identity> = vec![Box::new(identities[49].clone())];
        let plain = decrypt(&binary, &last, Path::new("x.age"), "test").unwrap();
        assert_eq!(plain.as_slice(), b"payload");
    }
}
