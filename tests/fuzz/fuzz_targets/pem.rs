//! Certificates, keys and age files come from disk and may be damaged or hostile: loading them
//! must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod load;

fuzz_target!(|data: &[u8]| load::load(data));
