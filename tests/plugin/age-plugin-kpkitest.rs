//! `age-plugin-kpkitest`: an age plugin for kpki's tests, standing in for a hardware token
//! (age-plugin-yubikey). Its recipient and identity carry an age X25519 recipient and identity
//! inside the plugin encodings (`age1kpkitest1…`, `AGE-PLUGIN-KPKITEST-1…`); it wraps file keys
//! as X25519 does, under its own stanza type. Each run appends its state machine to the file
//! `$KPKI_TEST_PLUGIN_LOG` (so a test can count touches), and with `KPKI_TEST_PLUGIN_REFUSE` set
//! it refuses to unwrap, as a token whose PIN was wrong would.
//!
//! `age-plugin-kpkitest --keygen` prints a new identity file.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};

use age::{Identity as _, Recipient as _};
use age_core::format::{FileKey, Stanza};
use age_plugin::identity::{self, IdentityPluginV1};
use age_plugin::recipient::{self, RecipientPluginV1};
use age_plugin::{Callbacks, PluginHandler, print_new_identity, run_state_machine};

const NAME: &str = "kpkitest";

fn log(event: &str) {
    if let Some(path) = std::env::var_os("KPKI_TEST_PLUGIN_LOG") {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("the plugin log opens");
        // One write: runs in parallel append whole lines.
        file.write_all(format!("{event}\n").as_bytes())
            .expect("the plugin log is written");
    }
}

struct Handler;

impl PluginHandler for Handler {
    type RecipientV1 = Wrapper;
    type IdentityV1 = Unwrapper;

    fn recipient_v1(self) -> io::Result<Wrapper> {
        Ok(Wrapper(Vec::new()))
    }

    fn identity_v1(self) -> io::Result<Unwrapper> {
        Ok(Unwrapper(Vec::new()))
    }
}

/// The X25519 recipients the plugin wraps to.
struct Wrapper(Vec<age::x25519::Recipient>);

impl RecipientPluginV1 for Wrapper {
    fn add_recipient(
        &mut self,
        index: usize,
        _plugin_name: &str,
        bytes: &[u8],
    ) -> Result<(), recipient::Error> {
        let parsed = std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok());
        let recipient = parsed.ok_or_else(|| recipient::Error::Recipient {
            index,
            message: "not a kpkitest recipient".into(),
        })?;
        self.0.push(recipient);
        Ok(())
    }

    fn add_identity(
        &mut self,
        index: usize,
        _plugin_name: &str,
        _bytes: &[u8],
    ) -> Result<(), recipient::Error> {
        Err(recipient::Error::Identity {
            index,
            message: "kpkitest wraps to recipients only".into(),
        })
    }

    fn labels(&mut self) -> HashSet<String> {
        HashSet::new()
    }

    fn wrap_file_keys(
        &mut self,
        file_keys: Vec<FileKey>,
        _callbacks: impl Callbacks<recipient::Error>,
    ) -> io::Result<Result<Vec<Vec<Stanza>>, Vec<recipient::Error>>> {
        log("recipient-v1");
        let mut wrapped = Vec::new();
        for file_key in &file_keys {
            let mut stanzas = Vec::new();
            for recipient in &self.0 {
                let (inner, _) = recipient
                    .wrap_file_key(file_key)
                    .map_err(|e| io::Error::other(e.to_string()))?;
                stanzas.extend(inner.into_iter().map(|s| Stanza {
                    tag: NAME.into(),
                    ..s
                }));
            }
            wrapped.push(stanzas);
        }
        Ok(Ok(wrapped))
    }
}

/// The X25519 identities the plugin unwraps with.
struct Unwrapper(Vec<age::x25519::Identity>);

impl IdentityPluginV1 for Unwrapper {
    fn add_identity(
        &mut self,
        index: usize,
        _plugin_name: &str,
        bytes: &[u8],
    ) -> Result<(), identity::Error> {
        let parsed = std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok());
        let identity = parsed.ok_or_else(|| identity::Error::Identity {
            index,
            message: "not a kpkitest identity".into(),
        })?;
        self.0.push(identity);
        Ok(())
    }

    fn unwrap_file_keys(
        &mut self,
        files: Vec<Vec<Stanza>>,
        mut callbacks: impl Callbacks<identity::Error>,
    ) -> io::Result<HashMap<usize, Result<FileKey, Vec<identity::Error>>>> {
        log("identity-v1");
        let _ = callbacks.message("touch the kpkitest token")?;
        let refuse = std::env::var_os("KPKI_TEST_PLUGIN_REFUSE").is_some();
        let mut keys = HashMap::new();
        for (index, stanzas) in files.into_iter().enumerate() {
            if refuse {
                let error = identity::Error::Identity {
                    index: 0,
                    message: "the token refused (wrong PIN)".into(),
                };
                keys.insert(index, Err(vec![error]));
                continue;
            }
            let unwrapped = stanzas
                .iter()
                .filter(|s| s.tag == NAME)
                .map(|s| Stanza {
                    tag: "X25519".into(),
                    args: s.args.clone(),
                    body: s.body.clone(),
                })
                .find_map(|s| self.0.iter().find_map(|id| id.unwrap_stanza(&s)?.ok()));
            if let Some(key) = unwrapped {
                keys.insert(index, Ok(key));
            }
        }
        Ok(keys)
    }
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--keygen") => {
            let identity = age::x25519::Identity::generate();
            let secret = identity.to_string();
            use age::secrecy::ExposeSecret;
            print_new_identity(
                NAME,
                secret.expose_secret().as_bytes(),
                identity.to_public().to_string().as_bytes(),
            );
            Ok(())
        }
        Some(flag) if flag.starts_with("--age-plugin=") => {
            run_state_machine(flag.trim_start_matches("--age-plugin="), Handler)
        }
        _ => Err(io::Error::other("usage: age-plugin-kpkitest --keygen")),
    }
}
