-- 096_inject_grants: rights on the HTTP injection statement of 026_inject.sql
-- with metadata. After 090_roles, which creates the roles and takes every
-- function in schema mta away from PUBLIC (grants to the roles stay).
GRANT EXECUTE ON FUNCTION
    mta.inject_batch(text, bytea[], text[], int[], text, text, text, text, jsonb, text[])
    TO mta_node;
