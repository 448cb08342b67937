//! The policy loader on arbitrary text: refuses or loads, never panics, within its budgets.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = aip::policy::load_str(text, "fuzz.yaml");
    }
});
