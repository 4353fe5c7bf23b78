//! `pki/.kpki/cache`: which committed state the plaintext in `pki/` reflects, and which
//! encrypted files kpki last wrote or checked. Local and git-ignored: it tells a stale cache (a
//! teammate committed since) from plaintext changed outside kpki, and lets kpki skip reading
//! files that have not changed since. Losing it costs time, never correctness.

use std::collections::HashMap;

/// A map keyed by paths, hashed with a per-process random seed (foldhash): keys a pusher
/// chooses cannot be made to collide, and it costs a fraction of SipHash at 20,000 files.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The set kind of [`FastMap`].
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

use crate::store::{Stamp, Store};

/// The record's name under `pki/.kpki/`.
pub const FILE: &str = crate::store::RECORD_FILE;

const HEADER: &str = "kpki cache 3";

/// The line between the files and the directory listings (a record without it has none).
const DIRS: &str = "dirs";

/// What kpki knew of one file when it last synced `pki/` with `secrets/`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// The fingerprint of its public material (as the manifest recorded it then).
    pub public: String,
    /// The stamp of `pki/REL` then, if it existed.
    pub plain: Option<Stamp>,
    /// The SHA-256 and stamp of `secrets/REL.age` then, if kpki had written or checked it.
    pub sealed: Option<(String, Stamp)>,
}

/// What the manifest, `secrets.nix` and `kpki.nix` were last written from, and their stamps
/// then: while neither changed, they need not be rendered again to know they are current.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outputs {
    /// The config's fingerprint.
    pub config: String,
    pub stamps: Vec<Option<Stamp>>,
}

/// The whole record.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// The fingerprint of the manifest `pki/` was synced to; `None` without a record.
    pub manifest: Option<String>,
    pub outputs: Option<Outputs>,
    pub files: FastMap<String, Known>,
    /// Directories of `secrets/` (relative to it) whose names kpki listed: the stamp then and
    /// the [`listing_hash`] of the names.
    pub dirs: FastMap<String, (Stamp, String)>,
}

/// The fingerprint of a directory's sorted entry names, each ended by a NUL: the one byte no
/// file name holds, so no crafted name (one with a newline, say) reads as several.
pub fn listing_hash<'a>(sorted: impl IntoIterator<Item = &'a str>) -> String {
    let mut text = String::new();
    for name in sorted {
        text.push_str(name);
        text.push('\0');
    }
    crate::pem::fingerprint(text.as_bytes())
}

impl Record {
    /// The record on disk; empty when missing or unreadable (it is only a cache).
    pub fn load(store: &Store) -> Record {
        let path = store.state_path(FILE);
        let text = match store.read_text(&path) {
            Ok(Some(text)) => text,
            _ => return Record::default(),
        };
        Record::parse(&text).unwrap_or_default()
    }

    fn parse(text: &str) -> Option<Record> {
        let mut lines = text.lines();
        (lines.next()? == HEADER).then_some(())?;
        let manifest = match lines.next()?.strip_prefix("manifest ")? {
            "-" => None,
            fp => Some(fp.to_string()),
        };
        let mut words = lines.next()?.strip_prefix("outputs ")?.split(' ');
        let config = words.next()?.to_string();
        let outputs = (config != "-").then(|| Outputs {
            config,
            stamps: words.map(Stamp::parse).collect(),
        });
        let mut files = FastMap::default();
        let mut dirs = FastMap::default();
        for line in lines.by_ref() {
            if line == DIRS {
                break;
            }
            let f: Vec<&str> = line.split('\t').collect();
            let [rel, public, plain, hash, sealed] = f.as_slice() else {
                return None;
            };
            crate::manifest::safe_path(rel).then_some(())?;
            let sealed = match (*hash, Stamp::parse(sealed)) {
                ("-", _) | (_, None) => None,
                (hash, Some(stamp)) => Some((hash.to_string(), stamp)),
            };
            files.insert(
                rel.to_string(),
                Known {
                    public: public.to_string(),
                    plain: Stamp::parse(plain),
                    sealed,
                },
            );
        }
        for line in lines {
            let [dir, stamp, hash] = line.split('\t').collect::<Vec<_>>()[..] else {
                return None;
            };
            crate::manifest::safe_path(dir).then_some(())?;
            dirs.insert(dir.to_string(), (Stamp::parse(stamp)?, hash.to_string()));
        }
        Some(Record {
            manifest,
            outputs,
            files,
            dirs,
        })
    }

    /// The record as written: one tab-separated line per file, sorted.
    pub fn render(&self) -> String {
        let mut rels: Vec<&String> = self.files.keys().collect();
        rels.sort();
        let stamp = |s: Option<&Stamp>| s.map(Stamp::render).unwrap_or_else(|| "-".into());
        let outputs = match &self.outputs {
            Some(o) => std::iter::once(o.config.clone())
                .chain(o.stamps.iter().map(|s| stamp(s.as_ref())))
                .collect::<Vec<_>>()
                .join(" "),
            None => "-".into(),
        };
        let mut out = format!(
            "{HEADER}\nmanifest {}\noutputs {outputs}\n",
            self.manifest.as_deref().unwrap_or("-")
        );
        for rel in rels {
            let k = &self.files[rel];
            let (hash, sealed) = match &k.sealed {
                Some((hash, stamp)) => (hash.as_str(), stamp.render()),
                None => ("-", "-".into()),
            };
            out.push_str(&format!(
                "{rel}\t{}\t{}\t{hash}\t{sealed}\n",
                k.public,
                stamp(k.plain.as_ref())
            ));
        }
        out.push_str(DIRS);
        out.push('\n');
        let mut dirs: Vec<(&String, &(Stamp, String))> = self.dirs.iter().collect();
        dirs.sort_by_key(|(dir, _)| *dir);
        for (dir, (stamp, hash)) in dirs {
            out.push_str(&format!("{dir}\t{}\t{hash}\n", stamp.render()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back() {
        let stamp = Stamp {
            ino: 7,
            len: 512,
            mtime_ns: 1_700_000_000_123_456_789,
            ctime_ns: 1_700_000_001_123_456_789,
        };
        let mut record = Record {
            manifest: Some("sha256:ab".into()),
            outputs: Some(Outputs {
                config: "sha256:cd".into(),
                stamps: vec![Some(stamp), None],
            }),
            files: FastMap::default(),
            dirs: FastMap::default(),
        };
        record
            .dirs
            .insert("node-01".into(), (stamp, listing_hash(["a.pem.age"])));
        record.files.insert(
            "etcd/ca.pem".into(),
            Known {
                public: "sha256:01".into(),
                plain: Some(stamp),
                sealed: Some(("sha256:02".into(), stamp)),
            },
        );
        record.files.insert(
            "etcd/ca-key.pem".into(),
            Known {
                public: "sha256:03".into(),
                plain: None,
                sealed: None,
            },
        );
        let again = Record::parse(&record.render()).unwrap();
        assert_eq!(again.manifest, record.manifest);
        assert_eq!(again.outputs, record.outputs);
        assert_eq!(again.files, record.files);
        assert_eq!(again.dirs, record.dirs);
        assert!(Record::parse("kpki cache 2\n").is_none());
        // One crafted name never hashes as the two names it spells.
        assert_ne!(
            listing_hash(["a.pem.age\nb.pem.age"]),
            listing_hash(["a.pem.age", "b.pem.age"])
        );
        // A record made before anything was committed reads back as such.
        let empty = Record::default().render();
        assert_eq!(Record::parse(&empty).unwrap().manifest, None);
    }
}
