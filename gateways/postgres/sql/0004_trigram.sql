-- pg_trgm backs the lead searches' indexes (`LIKE '%text%'` over names, emails, companies and
-- phone digits). An extension is one per database, so it goes to public when missing (not to
-- this schema, which a test or an operator may drop), under a lock so that engines migrating
-- several schemas at once do not race to create it.
SELECT pg_advisory_xact_lock(hashtext('leadlog.extension.pg_trgm'));
CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public;
