-- Counters bumped in the same transaction as a change, so every process can notice
-- cheaply that cached rows are stale (agents: see store::AgentCache).
create table change_counters (
    name text primary key,
    value integer not null
);

insert into change_counters (name, value) values ('agents', 0);
