-- RFC 8628 section 5.4: the device approval page shows which program asked for the
-- code (its User-Agent, bounded and cleaned before it is stored) beside its address,
-- and warns when either differs from the approving browser's.
alter table device_codes add column client_user_agent text;
