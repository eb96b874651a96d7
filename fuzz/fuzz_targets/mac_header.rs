//! The `X-Cryptoserver-Mac` decoder: any header value is either refused or read
//! as a MAC written in exactly one of the accepted forms; it never panics.

#![no_main]

use base64::Engine as _;
use cryptoserver::mac::{parse_mac, Mac, BASE64, MAC_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &[u8]| {
    if let Some(mac) = parse_mac(text) {
        check_accepted(text, &mac);
    }
    if let Some(mac) = text.first_chunk::<MAC_LEN>() {
        check_every_form_reads_back(mac);
    }
});

/// An accepted value is the MAC's hex (either case) or its base64 (padded or
/// not), give or take surrounding whitespace: nothing else decodes to a MAC.
fn check_accepted(text: &[u8], mac: &Mac) {
    let written = text.trim_ascii();
    let base64 = BASE64.encode(mac);
    assert!(
        written.eq_ignore_ascii_case(hex::encode(mac).as_bytes())
            || written == base64.as_bytes()
            || written == base64.trim_end_matches('=').as_bytes(),
        "{text:?} was read as MAC {} but is none of its written forms",
        hex::encode(mac)
    );
}

fn check_every_form_reads_back(mac: &Mac) {
    let base64 = BASE64.encode(mac);
    let forms = [
        hex::encode(mac),
        hex::encode_upper(mac),
        base64.trim_end_matches('=').to_owned(),
        format!(" {base64}\t"),
        base64,
    ];
    for form in forms {
        assert_eq!(parse_mac(form.as_bytes()), Some(*mac), "{form:?}");
    }
}
