//! Administration of people: the first admin, creating, disabling and resetting people.

use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use super::sign_in::{SignInError, normalize_username};
use crate::domain::{NewAuditEvent, Outcome, User};
use crate::password::{PasswordError, check_policy};
use crate::state::AppState;
use crate::store::{StoreError, UserChange};

/// Why an administrative or self-service change failed.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    /// Bad input; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// No such person.
    #[error("no such user")]
    NotFound,
    /// Taken, or not allowed in the current state.
    #[error("{0}")]
    Conflict(String),
    /// Hashing queue full.
    #[error("too busy; retry shortly")]
    Busy,
    /// The store failed.
    #[error("the store is unavailable")]
    Unavailable,
    /// Too many wrong codes: retry after this many seconds.
    #[error("too many failed attempts; try again in {0} seconds")]
    Throttled(u64),
}

impl From<SignInError> for ManageError {
    fn from(e: SignInError) -> Self {
        match e {
            SignInError::Throttled(s) => ManageError::Throttled(s),
            SignInError::Busy => ManageError::Busy,
            _ => ManageError::Unavailable,
        }
    }
}

impl From<StoreError> for ManageError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ManageError::NotFound,
            StoreError::Conflict => ManageError::Conflict("that username is taken".into()),
            _ => ManageError::Unavailable,
        }
    }
}

impl From<PasswordError> for ManageError {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::Busy => ManageError::Busy,
            PasswordError::Internal => ManageError::Unavailable,
        }
    }
}

fn check_roles(state: &AppState, roles: &[String]) -> Result<(), ManageError> {
    for r in roles {
        if !state.settings.roles.contains_key(r) {
            return Err(ManageError::Invalid(format!(
                "unknown role {r:?}; configured roles: {}",
                state
                    .settings
                    .roles
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(())
}

async fn new_user(
    state: &AppState,
    raw_username: &str,
    password: &SecretString,
    roles: Vec<String>,
) -> Result<User, ManageError> {
    let username = normalize_username(raw_username).ok_or_else(|| {
        ManageError::Invalid(
            "usernames are 1-64 characters of a-z, 0-9 and '._-@', not starting with agt_".into(),
        )
    })?;
    check_policy(
        &username,
        password.expose_secret(),
        state.settings.auth.password_min_length,
    )
    .map_err(ManageError::Invalid)?;
    check_roles(state, &roles)?;
    let hash = state.passwords.hash(password.clone()).await?;
    let at = state.now();
    Ok(User {
        id: Uuid::new_v4(),
        username,
        password_hash: hash,
        roles,
        totp_sealed: None,
        totp_pending_sealed: None,
        totp_last_step: None,
        disabled: false,
        created_at: at,
        updated_at: at,
    })
}

/// Create the first admin (store-direct; refused once anyone holds an admin role).
pub async fn bootstrap_admin(
    state: &AppState,
    username: &str,
    password: &SecretString,
    actor: &str,
) -> Result<User, ManageError> {
    let admin_roles: Vec<String> = state
        .settings
        .roles
        .iter()
        .filter(|(_, r)| r.admin)
        .map(|(n, _)| n.clone())
        .collect();
    let role = admin_roles
        .first()
        .cloned()
        .ok_or_else(|| ManageError::Invalid("no role has admin = true in the configuration".into()))?;
    let user = new_user(state, username, password, vec![role]).await?;
    let event = NewAuditEvent::new("user.bootstrapped", actor, Outcome::Success)
        .subject(user.username.clone())
        .detail("roles", user.roles.clone());
    match state.store.bootstrap_admin(&user, &admin_roles, event).await {
        Ok(()) => Ok(user),
        Err(StoreError::Conflict) => Err(ManageError::Conflict(
            "an admin already exists (or the username is taken); bootstrap only creates the first admin"
                .into(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Create a person.
pub async fn create_user(
    state: &AppState,
    actor: &str,
    username: &str,
    password: &SecretString,
    roles: Vec<String>,
) -> Result<User, ManageError> {
    let user = new_user(state, username, password, roles).await?;
    let event = NewAuditEvent::new("user.created", actor, Outcome::Success)
        .subject(user.username.clone())
        .detail("roles", user.roles.clone());
    state.store.create_user(&user, event).await?;
    Ok(user)
}

/// Look a person up by username.
pub async fn find_user(state: &AppState, username: &str) -> Result<User, ManageError> {
    let u = normalize_username(username).ok_or(ManageError::NotFound)?;
    Ok(state.store.user_by_username(&u).await?)
}

/// Disable (ending every session at once) or enable a person.
pub async fn set_user_disabled(
    state: &AppState,
    actor: &str,
    username: &str,
    disabled: bool,
) -> Result<User, ManageError> {
    let user = find_user(state, username).await?;
    let kind = if disabled { "user.disabled" } else { "user.enabled" };
    let event = NewAuditEvent::new(kind, actor, Outcome::Success).subject(user.username.clone());
    Ok(state
        .store
        .update_user(user.id, UserChange::Disabled(disabled), event)
        .await?)
}

/// Reset a person: a new password (ends their sessions) and/or remove their TOTP.
pub async fn reset_user(
    state: &AppState,
    actor: &str,
    username: &str,
    password: Option<&SecretString>,
    reset_totp: bool,
    roles: Option<Vec<String>>,
) -> Result<User, ManageError> {
    let mut user = find_user(state, username).await?;
    if password.is_none() && !reset_totp && roles.is_none() {
        return Err(ManageError::Invalid(
            "nothing to reset: give a password, reset_totp or roles".into(),
        ));
    }
    if let Some(p) = password {
        check_policy(
            &user.username,
            p.expose_secret(),
            state.settings.auth.password_min_length,
        )
        .map_err(ManageError::Invalid)?;
        let hash = state.passwords.hash(p.clone()).await?;
        let event =
            NewAuditEvent::new("user.password_reset", actor, Outcome::Success).subject(user.username.clone());
        user = state
            .store
            .update_user(user.id, UserChange::Password(hash), event)
            .await?;
    }
    if reset_totp {
        let event =
            NewAuditEvent::new("user.totp_reset", actor, Outcome::Success).subject(user.username.clone());
        user = state
            .store
            .update_user(user.id, UserChange::TotpReset, event)
            .await?;
    }
    if let Some(roles) = roles {
        check_roles(state, &roles)?;
        let event = NewAuditEvent::new("user.roles_changed", actor, Outcome::Success)
            .subject(user.username.clone())
            .detail("roles", roles.clone());
        user = state
            .store
            .update_user(user.id, UserChange::Roles(roles), event)
            .await?;
    }
    Ok(user)
}
