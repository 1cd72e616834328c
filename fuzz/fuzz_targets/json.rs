//! Fuzzes the json reader directly (no format detection).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xstate::cpuid::parse::DumpFormat;

mod common;

fuzz_target!(|data: &[u8]| common::run(data, Some(DumpFormat::Json)));
