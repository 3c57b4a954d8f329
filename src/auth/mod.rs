//! Every way a caller is identified: a session (CLI token or browser cookie), or any
//! bearer token (a session token, or an environment access token held by an agent or a
//! process acting for a person), and whether an access token is still live.
//!
//! Each check goes to the store on every use, so logout, revocation, disabling and an
//! ended grant take effect at once.

mod bearer;
mod session;

pub use bearer::{
    AgentKind, AgentPrincipal, AuthError, Principal, authenticate, grant_is_active, token_is_live,
    verify_env_token,
};
pub(crate) use session::check_session;
pub use session::{
    Authenticated, SessionError, authenticate_session, authenticate_web, effective_roles, is_stepped_up,
};
