"""Migrations 7-8: the PII vault, sealed data keys, the audit log and the officers' functions."""

# Append-only: a migration, once released, is never edited; add a new one instead.
VAULT: list[tuple[int, str, str]] = [
    (
        7,
        "PII vault (encrypted originals), wrapped data keys, append-only hash-chained audit log",
        """
        CREATE TABLE IF NOT EXISTS vault_keys(
            version integer PRIMARY KEY,
            wrapped_key bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            active boolean NOT NULL DEFAULT true);
        CREATE TABLE IF NOT EXISTS pii_vault(
            field varchar(16) NOT NULL,
            token varchar(80) NOT NULL,
            ciphertext text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (field, token));
        COMMENT ON TABLE pii_vault IS
            'original ip/device_id per token, AES-GCM under a data key wrapped by ETL_VAULT_KEY';
        CREATE TABLE IF NOT EXISTS pii_audit(
            id bigserial PRIMARY KEY,
            at timestamptz NOT NULL,
            actor text NOT NULL,
            action text NOT NULL,
            field text,
            token text,
            subject text,
            reason text NOT NULL,
            outcome text NOT NULL,
            prev_hash text NOT NULL,
            hash text NOT NULL);
        CREATE OR REPLACE FUNCTION etl_audit_hash(prev text, at timestamptz, actor text, action text,
                field text, token text, subject text, reason text, outcome text) RETURNS text
            LANGUAGE sql IMMUTABLE AS $$
            SELECT encode(sha256(convert_to(concat_ws('|', prev,
                to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), actor, action,
                coalesce(field, ''), coalesce(token, ''), coalesce(subject, ''), reason, outcome),
                'UTF8')), 'hex') $$;
        CREATE OR REPLACE FUNCTION etl_audit(p_action text, p_field text, p_token text,
                p_subject text, p_reason text, p_outcome text) RETURNS bigint
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
            DECLARE prev text; ts timestamptz := date_trunc('microseconds', clock_timestamp());
                    new_id bigint;
            BEGIN
                PERFORM pg_advisory_xact_lock(hashtext('etl.audit'));
                SELECT hash INTO prev FROM pii_audit ORDER BY id DESC LIMIT 1;
                prev := coalesce(prev, repeat('0', 64));
                INSERT INTO pii_audit (at, actor, action, field, token, subject, reason, outcome, prev_hash, hash)
                VALUES (ts, session_user, p_action, p_field, p_token, p_subject, p_reason, p_outcome, prev,
                        etl_audit_hash(prev, ts, session_user, p_action, p_field, p_token, p_subject,
                                       p_reason, p_outcome))
                RETURNING id INTO new_id;
                RETURN new_id;
            END $$;
        CREATE OR REPLACE FUNCTION etl_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'pii_audit is append-only'; END $$;
        DROP TRIGGER IF EXISTS pii_audit_append_only ON pii_audit;
        CREATE TRIGGER pii_audit_append_only BEFORE UPDATE OR DELETE ON pii_audit
            FOR EACH ROW EXECUTE FUNCTION etl_audit_append_only();
        REVOKE ALL ON pii_audit, pii_vault, vault_keys FROM PUBLIC;
        """,
    ),
    (
        8,
        "PII against insiders: sealed data keys, officer-only audited reveal/erase functions owned by a"
        " NOLOGIN non-superuser, canonical audit hashing, truncate guard, rejected_messages.user_id",
        """
        DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'etl_owner') THEN
                CREATE ROLE etl_owner NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
            END IF;
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pii_officer') THEN
                CREATE ROLE pii_officer NOLOGIN;
            END IF;
        END $$;
        -- data keys of worker processes, each sealed to the vault's public key (workers insert only)
        CREATE TABLE IF NOT EXISTS public.vault_data_keys(
            key_id varchar(17) PRIMARY KEY CHECK (key_id ~ '^s[0-9a-f]{16}$'),
            sealed_key bytea NOT NULL CHECK (octet_length(sealed_key) = 92),
            recipient varchar(16) NOT NULL CHECK (recipient ~ '^[0-9a-f]{16}$'),
            created_at timestamptz NOT NULL DEFAULT now());
        COMMENT ON TABLE public.vault_data_keys IS
            'per-process vault data keys, sealed (X25519+HKDF+AES-GCM) to ETL_VAULT_PUBLIC_KEY';
        CREATE TABLE IF NOT EXISTS public.pii_reveal_requests(
            id bigserial PRIMARY KEY,
            actor text NOT NULL,
            field text NOT NULL,
            tokens text[] NOT NULL,
            reason text NOT NULL,
            at timestamptz NOT NULL DEFAULT clock_timestamp());
        CREATE TABLE IF NOT EXISTS public.pii_reveal_outcomes(
            request_id bigint NOT NULL REFERENCES public.pii_reveal_requests (id),
            token text NOT NULL,
            PRIMARY KEY (request_id, token));
        ALTER TABLE public.rejected_messages ADD COLUMN IF NOT EXISTS user_id varchar(128);
        CREATE INDEX IF NOT EXISTS rejected_messages_user_id_idx ON public.rejected_messages (user_id);
        COMMENT ON COLUMN public.rejected_messages.user_id IS
            'the body''s user_id when it has a valid one (as in user_logins), so erasure finds the body';
        ALTER TABLE public.pii_audit ADD COLUMN IF NOT EXISTS scheme smallint NOT NULL DEFAULT 1;

        -- Hash scheme 2: canonical JSON of every field (no separator ambiguity; NULL is not '').
        -- etl audit verify recomputes it outside the database (etl/crypto/auditchain.py).
        CREATE OR REPLACE FUNCTION public.etl_audit_hash_v2(prev text, at timestamptz, actor text,
                action text, field text, token text, subject text, reason text, outcome text) RETURNS text
            LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $f$
            SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.jsonb_build_array(
                prev, pg_catalog.to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), actor, action,
                field, token, subject, reason, outcome)::text, 'UTF8')), 'hex') $f$;

        CREATE OR REPLACE FUNCTION public.etl_audit(p_action text, p_field text, p_token text,
                p_subject text, p_reason text, p_outcome text) RETURNS bigint
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
            DECLARE prev text; ts timestamptz := pg_catalog.date_trunc('microseconds', pg_catalog.clock_timestamp());
                    new_id bigint;
            BEGIN
                PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('etl.audit'));
                SELECT a.hash INTO prev FROM public.pii_audit a ORDER BY a.id DESC LIMIT 1;
                prev := coalesce(prev, pg_catalog.repeat('0', 64));
                INSERT INTO public.pii_audit (at, actor, action, field, token, subject, reason, outcome,
                                              prev_hash, hash, scheme)
                VALUES (ts, session_user, p_action, p_field, p_token, p_subject, p_reason, p_outcome, prev,
                        public.etl_audit_hash_v2(prev, ts, session_user, p_action, p_field, p_token, p_subject,
                                                 p_reason, p_outcome), 2)
                RETURNING id INTO new_id;
                RETURN new_id;
            END $f$;

        -- Step 1 of a reveal: the request and its audit rows commit before any ciphertext leaves.
        -- Only well-formed tokens, at most 10,000; a refusal is one row with a count, never the
        -- values a non-officer sent (they could be raw values, and the log cannot be erased).
        CREATE OR REPLACE FUNCTION public.etl_reveal_request(p_field text, p_tokens text[], p_reason text)
                RETURNS bigint
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
            DECLARE t text; request bigint; n integer := coalesce(pg_catalog.cardinality(p_tokens), 0);
            BEGIN
                IF NOT pg_catalog.pg_has_role(session_user, 'pii_officer', 'MEMBER') THEN
                    PERFORM public.etl_audit('reveal', NULL, NULL, pg_catalog.format('%s tokens', n),
                                             p_reason, 'refused: not a pii_officer');
                    RETURN NULL;
                END IF;
                IF p_field NOT IN ('ip', 'device_id') OR n > 10000 OR EXISTS (
                        SELECT 1 FROM pg_catalog.unnest(p_tokens) AS u(x) WHERE u.x !~ '^k[0-9]+:[0-9a-f]{64}$') THEN
                    RAISE EXCEPTION 'a reveal names a field (ip, device_id) and at most 10000 tokens k<n>:<64 hex>'
                        USING ERRCODE = 'invalid_parameter_value';
                END IF;
                INSERT INTO public.pii_reveal_requests (actor, field, tokens, reason)
                VALUES (session_user, p_field, coalesce(p_tokens, '{}'), p_reason) RETURNING id INTO request;
                FOREACH t IN ARRAY coalesce(p_tokens, '{}') LOOP
                    PERFORM public.etl_audit('reveal', p_field, t, 'request ' || request, p_reason, 'requested');
                END LOOP;
                IF n = 0 THEN
                    PERFORM public.etl_audit('reveal', p_field, NULL, 'request ' || request, p_reason,
                                             'requested: no tokens selected');
                END IF;
                RETURN request;
            END $f$;

        -- Step 2: the ciphertexts (and their data keys) of a committed request, by its requester.
        CREATE OR REPLACE FUNCTION public.etl_reveal_release(p_request bigint)
                RETURNS TABLE (token text, ciphertext text, key_id text, key_material bytea, recipient text)
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
            DECLARE r public.pii_reveal_requests;
            BEGIN
                SELECT * INTO r FROM public.pii_reveal_requests q WHERE q.id = p_request;
                IF NOT FOUND OR r.actor <> session_user
                        OR r.at < pg_catalog.clock_timestamp() - interval '10 minutes' THEN
                    RAISE EXCEPTION 'no such reveal request for this user (or it expired)'
                        USING ERRCODE = 'insufficient_privilege';
                END IF;
                RETURN QUERY
                    SELECT v.token::text, v.ciphertext, e.id, coalesce(k.sealed_key, o.wrapped_key), k.recipient::text
                    FROM public.pii_vault v
                    CROSS JOIN LATERAL (SELECT pg_catalog.split_part(v.ciphertext, ':', 1) AS id) e
                    LEFT JOIN public.vault_data_keys k ON e.id LIKE 's%' AND k.key_id = e.id
                    LEFT JOIN public.vault_keys o ON e.id LIKE 'v%' AND 'v' || o.version::text = e.id
                    WHERE v.field = r.field AND v.token = ANY (r.tokens);
            END $f$;

        -- Step 3: one outcome per token of the caller's own request, from a fixed list.
        CREATE OR REPLACE FUNCTION public.etl_reveal_outcome(p_request bigint, p_token text, p_outcome text)
                RETURNS void
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
            DECLARE r public.pii_reveal_requests;
            BEGIN
                SELECT * INTO r FROM public.pii_reveal_requests q WHERE q.id = p_request;
                IF NOT FOUND OR r.actor <> session_user OR NOT (p_token = ANY (r.tokens))
                        OR p_outcome NOT IN ('revealed', 'not found', 'failed', 'refused: no private key') THEN
                    RAISE EXCEPTION 'not an outcome of one of this user''s requests'
                        USING ERRCODE = 'insufficient_privilege';
                END IF;
                INSERT INTO public.pii_reveal_outcomes (request_id, token) VALUES (p_request, p_token);
                PERFORM public.etl_audit('reveal', r.field, p_token, 'request ' || p_request, r.reason, p_outcome);
            END $f$;

        -- Erasure, whole and atomic: the user's unshared vault entries, tokens and rejected bodies.
        -- The lock waits for chunks being written and holds new ones back until the commit, so a
        -- token another user gets meanwhile is never taken for unshared.
        -- Dropped first: a later migration (finality) widens its result, and a re-run of this one
        -- over that (adopting a database whose bookkeeping was reset) cannot change a return type.
        DROP FUNCTION IF EXISTS public.etl_erase(text, text);
        CREATE FUNCTION public.etl_erase(p_user_id text, p_reason text)
                RETURNS TABLE (tokens bigint, kept_shared bigint, erased bigint, rejected bigint, rows bigint)
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
            DECLARE n_tokens bigint; n_shared bigint; n_erased bigint; n_rejected bigint; n_rows bigint;
            BEGIN
                IF NOT pg_catalog.pg_has_role(session_user, 'pii_officer', 'MEMBER') THEN
                    PERFORM public.etl_audit('erase', NULL, NULL, p_user_id, p_reason, 'refused: not a pii_officer');
                    RETURN;
                END IF;
                LOCK TABLE public.pii_vault IN SHARE ROW EXCLUSIVE MODE;
                WITH mine AS (
                    SELECT m.field, m.token, EXISTS (
                        SELECT 1 FROM public.user_logins l
                        WHERE l.user_id IS DISTINCT FROM p_user_id
                          AND ((m.field = 'ip' AND l.masked_ip = m.token)
                               OR (m.field = 'device_id' AND l.masked_device_id = m.token))) AS shared
                    FROM (SELECT 'ip' AS field, u.masked_ip AS token FROM public.user_logins u
                          WHERE u.user_id = p_user_id
                          UNION SELECT 'device_id', u.masked_device_id FROM public.user_logins u
                          WHERE u.user_id = p_user_id) m
                    WHERE m.token NOT LIKE 'erased:%'),
                gone AS (
                    DELETE FROM public.pii_vault v USING mine m
                    WHERE v.field = m.field AND v.token = m.token AND NOT m.shared RETURNING 1)
                SELECT (SELECT count(*) FROM mine), (SELECT count(*) FROM mine WHERE shared),
                       (SELECT count(*) FROM gone)
                INTO n_tokens, n_shared, n_erased;
                -- random stand-ins, unrelated to the values: nothing left to brute-force
                UPDATE public.user_logins u
                    SET masked_ip = 'erased:' || pg_catalog.gen_random_uuid(),
                        masked_device_id = 'erased:' || pg_catalog.gen_random_uuid()
                    WHERE u.user_id = p_user_id AND u.masked_ip NOT LIKE 'erased:%';
                GET DIAGNOSTICS n_rows = ROW_COUNT;
                DELETE FROM public.rejected_replays p USING public.rejected_messages j
                    WHERE p.message_id = j.message_id AND j.user_id = p_user_id;
                DELETE FROM public.rejected_messages j WHERE j.user_id = p_user_id;
                GET DIAGNOSTICS n_rejected = ROW_COUNT;
                PERFORM public.etl_audit('erase', NULL, NULL, p_user_id, p_reason,
                    pg_catalog.format('erased %s vault entries, %s rows re-tokenized, %s rejected bodies deleted',
                                      n_erased, n_rows, n_rejected));
                RETURN QUERY SELECT n_tokens, n_shared, n_erased, n_rejected, n_rows;
            END $f$;

        CREATE OR REPLACE FUNCTION public.etl_audit_append_only() RETURNS trigger
            LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $f$
            BEGIN RAISE EXCEPTION 'pii_audit is append-only'; END $f$;
        DROP TRIGGER IF EXISTS pii_audit_no_truncate ON public.pii_audit;
        CREATE TRIGGER pii_audit_no_truncate BEFORE TRUNCATE ON public.pii_audit
            FOR EACH STATEMENT EXECUTE FUNCTION public.etl_audit_append_only();

        -- Everything PII belongs to a NOLOGIN role that is not a superuser; logins get functions.
        GRANT USAGE ON SCHEMA public TO etl_owner;
        ALTER TABLE public.pii_vault OWNER TO etl_owner;
        ALTER TABLE public.vault_keys OWNER TO etl_owner;
        ALTER TABLE public.vault_data_keys OWNER TO etl_owner;
        ALTER TABLE public.pii_audit OWNER TO etl_owner;
        ALTER TABLE public.pii_reveal_requests OWNER TO etl_owner;
        ALTER TABLE public.pii_reveal_outcomes OWNER TO etl_owner;
        GRANT SELECT, UPDATE ON public.user_logins TO etl_owner;
        GRANT SELECT, DELETE ON public.rejected_messages, public.rejected_replays TO etl_owner;
        ALTER FUNCTION public.etl_audit(text, text, text, text, text, text) OWNER TO etl_owner;
        ALTER FUNCTION public.etl_reveal_request(text, text[], text) OWNER TO etl_owner;
        ALTER FUNCTION public.etl_reveal_release(bigint) OWNER TO etl_owner;
        ALTER FUNCTION public.etl_reveal_outcome(bigint, text, text) OWNER TO etl_owner;
        ALTER FUNCTION public.etl_erase(text, text) OWNER TO etl_owner;
        REVOKE ALL ON public.pii_audit, public.pii_vault, public.vault_keys, public.vault_data_keys,
            public.pii_reveal_requests, public.pii_reveal_outcomes FROM PUBLIC;
        REVOKE ALL ON FUNCTION public.etl_audit(text, text, text, text, text, text),
            public.etl_reveal_request(text, text[], text), public.etl_reveal_release(bigint),
            public.etl_reveal_outcome(bigint, text, text), public.etl_erase(text, text) FROM PUBLIC;
        """,
    ),
]
