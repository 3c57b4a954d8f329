//! The web pages: in a real browser, their forms' CSRF defences, and escaping.

mod browser;
mod escaping;
mod login_csrf;
