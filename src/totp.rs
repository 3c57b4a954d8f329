//! RFC 6238 time-based one-time passwords (SHA-1, 6 digits, 30-second steps), as every
//! authenticator app speaks them. Codes are accepted for the current step ±1 (clock
//! drift); replay is prevented by the caller recording the last step used.

use base64::Engine as _;
use data_encoding::BASE32_NOPAD;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

/// Seconds per step.
pub const STEP_SECS: i64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;
/// Bytes of a new secret (RFC 4226 recommends 160 bits).
pub const SECRET_LEN: usize = 20;

/// A new random secret.
pub fn new_secret() -> Result<Vec<u8>, crate::secrets::SecretError> {
    let mut s = vec![0u8; SECRET_LEN];
    crate::secrets::random_bytes(&mut s)?;
    Ok(s)
}

/// The time step of a Unix time.
pub fn step_at(unix: i64) -> i64 {
    unix.div_euclid(STEP_SECS)
}

/// The code for a step (RFC 4226 dynamic truncation).
pub fn code_at(secret: &[u8], step: i64) -> String {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret).expect("any key length");
    mac.update(&(step as u64).to_be_bytes());
    let h = mac.finalize().into_bytes();
    let offset = (h[19] & 0x0f) as usize;
    let bin = u32::from_be_bytes([h[offset] & 0x7f, h[offset + 1], h[offset + 2], h[offset + 3]]);
    format!("{:0width$}", bin % 10u32.pow(DIGITS), width = DIGITS as usize)
}

/// The step (current ±1) whose code matches, compared in constant time.
pub fn matching_step(secret: &[u8], code: &str, now_unix: i64) -> Option<i64> {
    let code = code.trim().replace(' ', "");
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = step_at(now_unix);
    let mut found = None;
    for step in [now - 1, now, now + 1] {
        if bool::from(code_at(secret, step).as_bytes().ct_eq(code.as_bytes())) {
            found = Some(step);
        }
    }
    found
}

/// Base32 of the secret, as authenticator apps take it.
pub fn secret_base32(secret: &[u8]) -> String {
    BASE32_NOPAD.encode(secret)
}

/// The `otpauth://` URI for enrolment.
pub fn otpauth_uri(secret: &[u8], username: &str, issuer: &str) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        enc(issuer),
        enc(username),
        secret_base32(secret),
        enc(issuer)
    )
}

/// The URI as a QR code for a terminal (two rows per character).
pub fn qr_terminal(uri: &str) -> String {
    match qrcode::QrCode::new(uri.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .build(),
        Err(_) => String::new(),
    }
}

/// The URI as a QR code in a `data:` URL of an SVG image (for a strict CSP page).
pub fn qr_svg_data_url(uri: &str) -> String {
    match qrcode::QrCode::new(uri.as_bytes()) {
        Ok(code) => {
            let svg = code
                .render::<qrcode::render::svg::Color>()
                .min_dimensions(200, 200)
                .build();
            format!(
                "data:image/svg+xml;base64,{}",
                base64::engine::general_purpose::STANDARD.encode(svg)
            )
        }
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_rfc_6238_test_vectors() {
        // RFC 6238 appendix B, SHA-1 secret "12345678901234567890", last 6 digits.
        let secret = b"12345678901234567890";
        for (t, code) in [
            (59, "287082"),
            (1111111109, "081804"),
            (1234567890, "005924"),
            (2000000000, "279037"),
        ] {
            assert_eq!(code_at(secret, step_at(t)), code, "t={t}");
        }
    }

    #[test]
    fn one_step_of_drift_is_accepted_and_no_more() {
        let s = new_secret().unwrap();
        let now = 1_800_000_000;
        let step = step_at(now);
        assert_eq!(matching_step(&s, &code_at(&s, step), now), Some(step));
        assert_eq!(matching_step(&s, &code_at(&s, step - 1), now), Some(step - 1));
        assert_eq!(matching_step(&s, &code_at(&s, step + 1), now), Some(step + 1));
        assert_eq!(matching_step(&s, &code_at(&s, step - 2), now), None);
        assert_eq!(matching_step(&s, "12345", now), None);
        assert_eq!(matching_step(&s, "abcdef", now), None);
    }

    #[test]
    fn the_enrolment_uri_carries_the_base32_secret() {
        let uri = otpauth_uri(b"12345678901234567890", "alice", "Airlock");
        assert!(uri.starts_with(
            "otpauth://totp/Airlock:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Airlock"
        ));
        assert!(!qr_terminal(&uri).is_empty());
        assert!(qr_svg_data_url(&uri).starts_with("data:image/svg+xml;base64,"));
    }
}
