//! DESIGN.md's invariants, each attacked on its own or by random sequences of actions.

mod bound_agents;
mod escalation_props;
mod fail_closed;
