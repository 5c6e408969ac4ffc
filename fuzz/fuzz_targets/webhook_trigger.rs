//! Fuzzes `targets::webhook_trigger`.
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::webhook_trigger(data));
