//! The web pages: in a real browser, and their forms' CSRF defences.

mod browser;
mod login_csrf;
