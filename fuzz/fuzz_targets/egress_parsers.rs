//! The egress parsers (DNS queries, HTTP proxy requests, SOCKS5, TLS ClientHello, host rules)
//! on arbitrary bytes: no panic, bounded work.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((which, rest)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => aip::egress::fuzzing::dns_query(rest),
        1 => aip::egress::fuzzing::http_request(rest),
        2 => aip::egress::fuzzing::socks5(rest),
        3 => aip::egress::fuzzing::tls_client_hello(rest),
        _ => aip::egress::fuzzing::host(rest),
    }
});
