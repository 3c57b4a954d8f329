-- Every agent answers to a person, its owner, fixed at registration. The owner is the
-- sponsor of the agent's escalation requests: their approval is recorded but never
-- counts toward the agent's quorum. Agents registered before owners existed keep a
-- null owner and keep working.
alter table agents add column owner_user_id blob references users (id);
