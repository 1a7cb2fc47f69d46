-- 010_validate: input checks shared by mta.enqueue() and mta.submit. Every
-- check raises invalid_parameter_value with a message naming the field and the
-- offending value, so the whole enqueue is refused and nothing is stored.

-- A value as shown in an error message: quoted, control characters as \xNN,
-- cut after 200 characters.
CREATE OR REPLACE FUNCTION mta.show(p_value text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v text := p_value;
    o text := '';
    c text;
BEGIN
    IF v IS NULL THEN
        RETURN 'NULL';
    END IF;
    IF length(v) > 200 THEN
        v := left(v, 200);
    END IF;
    IF v ~ '[\x01-\x1f\x7f]' THEN
        FOREACH c IN ARRAY regexp_split_to_array(v, '') LOOP
            IF ascii(c) < 32 OR ascii(c) = 127 THEN
                o := o || '\x' || lpad(to_hex(ascii(c)), 2, '0');
            ELSE
                o := o || c;
            END IF;
        END LOOP;
        v := o;
    END IF;
    RETURN '"' || v || '"' || CASE WHEN length(p_value) > 200 THEN '...' ELSE '' END;
END
$$;

CREATE OR REPLACE FUNCTION mta.address_error(p_field text, p_addr text, p_why text)
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RAISE EXCEPTION 'invalid % %: %', p_field, mta.show(p_addr), p_why
        USING ERRCODE = 'invalid_parameter_value';
END
$$;

-- The full check of one address (RFC 5321 §4.1.2, §4.5.3.1, with RFC 6531's
-- UTF-8 in local parts and domains). Returns the lower-cased domain; raises a
-- precise error otherwise. p_field names the field in the message, e.g.
-- 'rcpt_to[3]'. Forms accepted:
--   local@domain          local is a dot-atom: atext (printable ASCII except
--                         ()<>[]:;@\,." and space) or non-ASCII characters,
--                         separated by single dots
--   "quoted local"@domain printable ASCII or non-ASCII inside the quotes, \ and "
--                         only as a quoted pair, never '<' or '>'
--   local@[192.0.2.1]     an address literal, IPv4 or [IPv6:...]
-- domain: labels of letters, digits, '-' (not first or last) or non-ASCII
-- characters, 1..63 octets each, 255 octets at most in total, no trailing dot.
CREATE OR REPLACE FUNCTION mta.address_domain_full(p_addr text, p_field text)
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    local text;
    dom text;
    lbl text;
    at int;
    m text[];
BEGIN
    IF p_addr IS NULL THEN
        RAISE EXCEPTION '% is NULL', p_field USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_addr = '' THEN
        PERFORM mta.address_error(p_field, p_addr, 'empty address');
    END IF;
    IF p_addr ~ '[\r\n]' THEN
        PERFORM mta.address_error(p_field, p_addr, 'contains CR or LF');
    END IF;
    IF p_addr ~ '[\x01-\x1f\x7f]' THEN
        PERFORM mta.address_error(p_field, p_addr, 'contains a control character');
    END IF;
    IF p_addr ~ '[<>]' THEN
        PERFORM mta.address_error(p_field, p_addr, 'contains ''<'' or ''>''');
    END IF;
    IF octet_length(p_addr) > 254 THEN
        PERFORM mta.address_error(p_field, p_addr,
            format('address is %s octets long, at most 254 allowed', octet_length(p_addr)));
    END IF;
    IF left(p_addr, 1) = '"' THEN
        m := regexp_match(p_addr, '^("(?:[^"\\]|\\.)*")@(.*)$');
        IF m IS NULL THEN
            PERFORM mta.address_error(p_field, p_addr,
                'quoted local part not closed or not followed by ''@''');
        END IF;
        local := m[1];
        dom := m[2];
        IF local = '""' THEN
            PERFORM mta.address_error(p_field, p_addr, 'empty local part');
        END IF;
        IF local ~ '\\[^\x20-\x7e]' THEN
            PERFORM mta.address_error(p_field, p_addr,
                'backslash in the quoted local part not followed by a printable character');
        END IF;
    ELSE
        at := length(p_addr) - position('@' IN reverse(p_addr)) + 1;
        IF position('@' IN p_addr) = 0 THEN
            PERFORM mta.address_error(p_field, p_addr, 'no ''@''');
        END IF;
        local := left(p_addr, at - 1);
        dom := substr(p_addr, at + 1);
        IF position('@' IN local) > 0 THEN
            PERFORM mta.address_error(p_field, p_addr,
                'more than one ''@'' outside a quoted local part');
        END IF;
        IF local = '' THEN
            PERFORM mta.address_error(p_field, p_addr, 'empty local part');
        END IF;
        IF local ~ ' ' THEN
            PERFORM mta.address_error(p_field, p_addr, 'space outside quotes');
        END IF;
        IF local ~ '["(),:;\[\]\\]' THEN
            PERFORM mta.address_error(p_field, p_addr,
                'local part contains a special character ("(),:;[]\) outside quotes');
        END IF;
        IF local ~ '^\.|\.$|\.\.' THEN
            PERFORM mta.address_error(p_field, p_addr,
                'local part starts or ends with ''.'' or has ''..''');
        END IF;
    END IF;
    IF octet_length(local) > 64 THEN
        PERFORM mta.address_error(p_field, p_addr,
            format('local part is %s octets long, at most 64 allowed', octet_length(local)));
    END IF;
    IF dom = '' THEN
        PERFORM mta.address_error(p_field, p_addr, 'empty domain');
    END IF;
    IF octet_length(dom) > 255 THEN
        PERFORM mta.address_error(p_field, p_addr,
            format('domain is %s octets long, at most 255 allowed', octet_length(dom)));
    END IF;
    IF left(dom, 1) = '[' THEN
        IF dom ~ '^\[[0-9]{1,3}(\.[0-9]{1,3}){3}\]$' THEN
            IF EXISTS (SELECT 1 FROM unnest(string_to_array(btrim(dom, '[]'), '.')) o
                       WHERE o::int > 255) THEN
                PERFORM mta.address_error(p_field, p_addr, 'invalid IPv4 address literal');
            END IF;
            RETURN dom;
        END IF;
        IF dom ~* '^\[ipv6:[0-9a-f:.]+\]$' THEN
            BEGIN
                PERFORM substr(dom, 7, length(dom) - 7)::inet;
            EXCEPTION WHEN invalid_text_representation THEN
                PERFORM mta.address_error(p_field, p_addr, 'invalid IPv6 address literal');
            END;
            RETURN lower(dom);
        END IF;
        PERFORM mta.address_error(p_field, p_addr, 'invalid address literal');
    END IF;
    IF dom ~ ' ' THEN
        PERFORM mta.address_error(p_field, p_addr, 'space in the domain');
    END IF;
    FOREACH lbl IN ARRAY string_to_array(dom, '.') LOOP
        IF lbl = '' THEN
            PERFORM mta.address_error(p_field, p_addr, 'empty label in the domain');
        END IF;
        IF octet_length(lbl) > 63 THEN
            PERFORM mta.address_error(p_field, p_addr,
                format('domain label is %s octets long, at most 63 allowed', octet_length(lbl)));
        END IF;
        IF lbl !~ '^([-A-Za-z0-9]|[^\x00-\x7f])+$' THEN
            PERFORM mta.address_error(p_field, p_addr,
                'domain has a character other than letters, digits, ''-'' and ''.''');
        END IF;
        IF lbl ~ '^-|-$' THEN
            PERFORM mta.address_error(p_field, p_addr,
                'domain label starts or ends with ''-''');
        END IF;
    END LOOP;
    RETURN lower(dom);
END
$$;

-- True for a plain ASCII address that is certainly valid: a dot-atom local part
-- of at most 64 octets and a domain of LDH labels of at most 63 octets (almost
-- all addresses). False or NULL means "look closer" with
-- mta.address_domain_full(), which accepts the rarer forms and explains what is
-- wrong. Kept to one simple regular expression: this runs for every recipient
-- of a bulk load, and bounded repetitions ({0,61}) make PostgreSQL's regex
-- engine several times slower; the label length is checked apart, and only
-- for domains longer than 63 octets.
CREATE OR REPLACE FUNCTION mta.address_plain(p_addr text)
RETURNS bool LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT octet_length(p_addr) <= 254
       AND position('@' IN p_addr) <= 65
       AND p_addr ~ '^[-A-Za-z0-9!#$%&''*+/=?^_`{|}~]+(\.[-A-Za-z0-9!#$%&''*+/=?^_`{|}~]+)*@[A-Za-z0-9]+(-+[A-Za-z0-9]+)*(\.[A-Za-z0-9]+(-+[A-Za-z0-9]+)*)*$'
       AND (octet_length(p_addr) - position('@' IN p_addr) <= 63 OR p_addr !~ '[^.@]{64}')
$$;

-- The domain part as stored (lower-cased) of an address already known to be
-- valid: what follows the '@' (the last one when the local part is quoted and
-- may itself contain '@'; a domain never does).
CREATE OR REPLACE FUNCTION mta.address_domain_of(p_addr text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT lower(CASE WHEN left(p_addr, 1) = '"' THEN substring(p_addr FROM '@([^@]*)$')
                      ELSE substr(p_addr, strpos(p_addr, '@') + 1) END)
$$;

-- The lower-cased domain of a valid address, or an error.
CREATE OR REPLACE FUNCTION mta.address_domain(p_addr text, p_field text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN mta.address_plain(p_addr) THEN mta.address_domain_of(p_addr)
                ELSE mta.address_domain_full(p_addr, p_field) END
$$;

-- The envelope sender: '' (the null sender) or a valid address. Returns it.
CREATE OR REPLACE FUNCTION mta.check_sender(p_addr text)
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_addr IS NULL THEN
        RAISE EXCEPTION 'mail_from is NULL (use '''' for the null sender)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_addr <> '' THEN
        PERFORM mta.address_domain(p_addr, 'mail_from');
    END IF;
    RETURN p_addr;
END
$$;

-- Message content: not NULL, not empty, at most 64 MB. Returns it.
CREATE OR REPLACE FUNCTION mta.check_content(p_content bytea)
RETURNS bytea LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_content IS NULL THEN
        RAISE EXCEPTION 'content is NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF octet_length(p_content) = 0 THEN
        RAISE EXCEPTION 'content is empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF octet_length(p_content) > 67108864 THEN
        RAISE EXCEPTION 'content is % octets, at most 67108864 (64 MB) allowed',
            octet_length(p_content) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN p_content;
END
$$;

-- A virtual MTA name: NULL or '' (none) or 1..64 of letters, digits, '-', '_',
-- '.'. Returns the stored form ('' for none).
CREATE OR REPLACE FUNCTION mta.check_vmta(p_vmta text)
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_vmta IS NULL OR p_vmta = '' THEN
        RETURN '';
    END IF;
    IF p_vmta !~ '^[A-Za-z0-9._-]{1,64}$' THEN
        RAISE EXCEPTION 'invalid vmta %: only letters, digits, ''-'', ''_'' and ''.'' are allowed (at most 64)',
            mta.show(p_vmta) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN p_vmta;
END
$$;

-- A job id: NULL (none) or 1..200 characters without control characters (it
-- is a key of mta.job and of indexes on recipients and acct). Returns it.
CREATE OR REPLACE FUNCTION mta.check_job_id(p_job_id text)
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_job_id IS NULL THEN
        RETURN NULL;
    END IF;
    IF p_job_id = '' THEN
        RAISE EXCEPTION 'invalid job_id "": empty (use NULL for none)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF length(p_job_id) > 200 THEN
        RAISE EXCEPTION 'invalid job_id %: % characters long, at most 200 allowed',
            mta.show(p_job_id), length(p_job_id) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_job_id ~ '[\x01-\x1f\x7f]' THEN
        RAISE EXCEPTION 'invalid job_id %: contains a control character', mta.show(p_job_id)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN p_job_id;
END
$$;

-- An envelope id (the DSN ENVID, RFC 3461): NULL (none) or printable ASCII
-- (space included) whose xtext form ('+', '=', space and control characters
-- as "+XX") is 1..100 characters, as the ESMTP ENVID parameter allows.
-- Returns it.
CREATE OR REPLACE FUNCTION mta.check_envid(p_envid text)
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_envid IS NULL THEN
        RETURN NULL;
    END IF;
    IF p_envid !~ '^[\x20-\x7e]+$' THEN
        RAISE EXCEPTION 'invalid envid %: only printable ASCII is allowed', mta.show(p_envid)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF length(p_envid) + 2 * length(regexp_replace(p_envid, '[^ +=]', '', 'g')) > 100 THEN
        RAISE EXCEPTION 'invalid envid %: longer than 100 characters as xtext (RFC 3461)',
            mta.show(p_envid) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN p_envid;
END
$$;

-- A queue's domain as given to the admin functions: a valid domain (the
-- rules of an address's domain) or an error naming p_field. Returns it
-- lower-cased.
CREATE OR REPLACE FUNCTION mta.check_domain(p_domain text, p_field text DEFAULT 'domain')
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_domain IS NULL THEN
        RAISE EXCEPTION '% is NULL', p_field USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF mta.address_plain('x@' || p_domain) THEN
        RETURN lower(p_domain);
    END IF;
    BEGIN
        RETURN mta.address_domain_full('x@' || p_domain, p_field);
    EXCEPTION WHEN invalid_parameter_value THEN
        RAISE EXCEPTION 'invalid % %: not a valid domain', p_field, mta.show(p_domain)
            USING ERRCODE = 'invalid_parameter_value';
    END;
END
$$;

-- The pipe to use: p_pipe if it is registered, the default pipe if p_pipe is NULL.
CREATE OR REPLACE FUNCTION mta.resolve_pipe(p_pipe text)
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    v text;
BEGIN
    IF p_pipe IS NULL THEN
        SELECT name INTO v FROM mta.pipes WHERE is_default;
        IF v IS NULL THEN
            RAISE EXCEPTION 'pipe is NULL and no default pipe is registered'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        RETURN v;
    END IF;
    PERFORM 1 FROM mta.pipes WHERE name = p_pipe;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown pipe %', mta.show(p_pipe)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN p_pipe;
END
$$;

-- The Message-ID header of a message, NULL if it has none. Only the header
-- section (up to the first empty line, at most 64 KB) is looked at. The bytes
-- are read through encode(..., 'escape'), which turns NUL and 8-bit bytes into
-- \nnn, so any content can be searched (a Message-ID is ASCII). Plain string
-- functions rather than a regular expression: this runs for every message.
CREATE OR REPLACE FUNCTION mta.header_message_id(p_content bytea)
RETURNS text LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    head bytea := substr(p_content, 1, 65536);
    h text;
    p int;
    l1 text;
    l2 text;
BEGIN
    h := E'\n' || encode(substr(head, 1, coalesce(least(
             nullif(position('\x0a0d0a'::bytea IN head), 0),
             nullif(position('\x0a0a'::bytea IN head), 0)), 65536)), 'escape');
    p := position(E'\nmessage-id:' IN lower(h));
    IF p = 0 THEN
        RETURN NULL;
    END IF;
    h := substr(h, p + 12);
    l1 := split_part(h, E'\n', 1);
    IF btrim(l1, E' \t\r') = '' THEN
        -- Folded: the value is on the continuation line.
        l2 := split_part(h, E'\n', 2);
        IF left(l2, 1) IN (' ', E'\t') THEN
            l1 := l2;
        END IF;
    END IF;
    RETURN nullif(btrim(l1, E' \t\r'), '');
END
$$;
