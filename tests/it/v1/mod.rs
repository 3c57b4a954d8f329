//! People and escalations over HTTP: `/v1`, sign-in, sessions and the token exchange.

mod agent_owners;
mod control_characters;
mod escalations;
mod people;
mod sign_in_throttling;
mod step_up;
mod totp_enrolment;
