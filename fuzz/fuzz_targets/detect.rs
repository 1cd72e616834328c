//! Fuzzes format detection and whichever reader it picks (`CpuidDump::parse`).
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| common::run(data, None));
