-- 097_inbound_grants: the inbound listener (role mta_node) stores reports
-- through mta.inbound_report only; mta_monitor reads what was kept
-- unmatched. mta_admin has every table through sql/090_roles.sql.
REVOKE ALL ON FUNCTION mta.inbound_report(jsonb, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mta.inbound_report(jsonb, text) TO mta_node, mta_admin;
GRANT SELECT ON mta.inbound_unmatched, mta.hard_bounces TO mta_monitor;
