//! `pki/kpki.toml` is user input: parsing and validating it must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = kpki::config::Config::parse(text, std::path::Path::new("fuzz.toml"));
});
