//! API server URLs and kubeconfig values come from the config and the command line: parsing
//! them must never panic, and no value may turn into more of the kubeconfig than itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod render;

fuzz_target!(|data: &[u8]| render::render(data));
