//! The committed fuzz corpora replayed on stable Rust: every input that `cargo fuzz` found
//! interesting keeps loading without a panic.

use std::path::Path;

#[path = "../fuzz/fuzz_targets/load.rs"]
mod load;

#[path = "../fuzz/fuzz_targets/render.rs"]
mod render;

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(name);
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect()
}

#[test]
fn the_fuzz_corpora_load_without_panics() {
    let pem = corpus("pem");
    assert!(pem.len() >= 6);
    for input in &pem {
        load::load(input);
    }
    let kubeconfigs = corpus("kubeconfig");
    assert!(kubeconfigs.len() >= 6);
    for input in &kubeconfigs {
        render::render(input);
    }
    let configs = corpus("config");
    assert!(!configs.is_empty());
    for input in configs {
        let _ =
            kpki::config::Config::parse(&String::from_utf8_lossy(&input), Path::new("corpus.toml"));
    }
}
