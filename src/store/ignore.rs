//! Whether git would ignore the plaintext kpki writes under `pki/`, by git's own rules: `git
//! check-ignore` inside a repository (tracked files, nested and negated patterns, excludes),
//! else the `.gitignore` files of the cluster directory read with the `ignore` crate.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::Store;
use crate::error::{Error, Result};

/// `pki/.gitignore` as it must read, when it does not: kpki's own when missing, or when it is
/// kpki's and older (without a rule added since, such as `*.der` for etcd's revocation list).
/// A user's own file is left alone.
pub fn pki_gitignore_update(store: &Store) -> Result<Option<&'static str>> {
    let current = store.read_text(&store.pki_path(".gitignore"))?;
    let header = super::PKI_GITIGNORE.lines().next().unwrap_or_default();
    Ok(match current {
        None => Some(super::PKI_GITIGNORE),
        Some(text) if text.starts_with(header) && text != super::PKI_GITIGNORE => {
            Some(super::PKI_GITIGNORE)
        }
        Some(_) => None,
    })
}

/// Refuses when git would not ignore one of `paths` (plaintext files below `pki/`), naming it
/// and the rule that lets it in.
pub fn plaintext_ignored(store: &Store, paths: &[&Path]) -> Result<()> {
    if paths.is_empty() {
        return Ok(());
    }
    let git = in_work_tree(store.root())
        .then(|| check_with_git(store, paths))
        .flatten();
    let verdicts = git.unwrap_or_else(|| check_with_files(store, paths));
    match verdicts.into_iter().find(|(_, why)| why.is_some()) {
        None => Ok(()),
        Some((path, why)) => Err(Error::Unprotected {
            message: format!(
                "git would not ignore this plaintext file ({}), so it could be committed",
                why.unwrap_or_default()
            ),
            path,
            hint: "pki/.gitignore must ignore *.pem, *.der, *.agekey, *.kubeconfig and .kpki/ everywhere below pki/, with no '!' exceptions"
                .into(),
        }),
    }
}

/// Whether `dir` may be inside a git work tree: a `.git` in it or above, or git pointed
/// elsewhere by the environment. Spares starting git (milliseconds) where it has no verdict.
fn in_work_tree(dir: &Path) -> bool {
    std::env::var_os("GIT_DIR").is_some()
        || std::fs::canonicalize(dir)
            .unwrap_or_else(|_| dir.to_path_buf())
            .ancestors()
            .any(|d| d.join(".git").symlink_metadata().is_ok())
}

/// Per path, why git would not ignore it (`None`: ignored); `None` overall outside a git work
/// tree or without git. Patterns are asked with `--no-index` and tracked files listed apart:
/// without it git compares every path with every entry of the index (6 s for 20,000 paths in
/// a repository of 20,000 secrets, against 0.13 s), and a tracked file is what `git add -A`
/// stages whatever the patterns say.
fn check_with_git(store: &Store, paths: &[&Path]) -> Option<Vec<(PathBuf, Option<String>)>> {
    let tracked: std::collections::HashSet<String> =
        tracked(store, &store.pki_dir()).into_iter().collect();
    let mut child = Command::new("git")
        .arg("-C")
        .arg(store.root())
        .args(["check-ignore", "--no-index", "--stdin", "-z", "-v", "-n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut input = Vec::new();
    for path in paths {
        let rel = path.strip_prefix(store.root()).unwrap_or(path);
        input.extend_from_slice(rel.as_os_str().as_encoded_bytes());
        input.push(0);
    }
    let mut stdin = child.stdin.take()?;
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().ok()?;
    writer.join().ok()?.ok()?;
    // 0: some are ignored, 1: none is; anything else (128: not a repository) means no verdict.
    if !matches!(out.status.code(), Some(0 | 1)) {
        return None;
    }
    let fields: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
    let verdicts = fields
        .chunks(4)
        .filter(|c| c.len() == 4)
        .map(|c| {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            let (source, line, pattern, path) = (text(c[0]), text(c[1]), text(c[2]), text(c[3]));
            let why = if tracked.contains(&path) {
                Some("git tracks it: git rm --cached it".to_string())
            } else if source.is_empty() {
                Some("no rule ignores it".to_string())
            } else if pattern.starts_with('!') {
                Some(format!("{source}:{line}: {pattern}"))
            } else {
                None
            };
            (store.root().join(path), why)
        })
        .collect::<Vec<_>>();
    (verdicts.len() == paths.len()).then_some(verdicts)
}

/// The same verdicts from the `.gitignore` files between the cluster directory and each path.
fn check_with_files(store: &Store, paths: &[&Path]) -> Vec<(PathBuf, Option<String>)> {
    let mut matchers: std::collections::HashMap<PathBuf, Option<Gitignore>> = Default::default();
    paths
        .iter()
        .map(|path| {
            let dirs: Vec<&Path> = path
                .ancestors()
                .skip(1)
                .take_while(|d| d.starts_with(store.root()))
                .collect();
            let mut verdict = None;
            for dir in &dirs {
                let matcher = matchers
                    .entry(dir.to_path_buf())
                    .or_insert_with(|| load(dir));
                if let Some(m) = matcher {
                    match m.matched_path_or_any_parents(path, false) {
                        Match::Ignore(_) => verdict = verdict.or(Some(None)),
                        Match::Whitelist(glob) => {
                            verdict = verdict.or(Some(Some(format!(
                                "{}: {}",
                                dir.join(".gitignore").display(),
                                glob.original()
                            ))))
                        }
                        Match::None => {}
                    }
                }
            }
            let why = verdict.unwrap_or(Some("no rule ignores it".into()));
            (path.to_path_buf(), why)
        })
        .collect()
}

/// The `.gitignore` of `dir`, if it has one.
fn load(dir: &Path) -> Option<Gitignore> {
    let file = dir.join(".gitignore");
    if !file.is_file() {
        return None;
    }
    let mut builder = GitignoreBuilder::new(dir);
    builder.add(&file);
    builder.build().ok()
}

/// The files below `dir` (a directory of the cluster directory) that git tracks, relative to
/// the cluster directory; empty outside a git work tree or without git.
pub fn tracked(store: &Store, dir: &Path) -> Vec<String> {
    if !in_work_tree(store.root()) {
        return Vec::new();
    }
    let rel = dir.strip_prefix(store.root()).unwrap_or(dir);
    let out = Command::new("git")
        .arg("-C")
        .arg(store.root())
        .args(["ls-files", "-z", "--"])
        .arg(rel)
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .split('\0')
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}
