"""Migration 10: reveals released only after their request committed, outcomes the database
decides, bounded reasons, and erasures that stay erased (tombstones the chunk writes honour)."""

# A reason an officer gives: 1 to REASON_MAX characters, no control characters. The CLI checks
# it before any SQL (a statement that fails is logged by PostgreSQL with its values); the
# functions check it again for callers that bypass the CLI.
REASON_MAX = 200
# What a reason may not hold (a PostgreSQL regular expression): controls, and the format and
# separator characters that reorder or hide text on a screen (bidi overrides, zero-width, U+2028).
_INVISIBLE = (
    "[[:cntrl:]\\u00ad\\u061c\\u180e\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u2064\\u2066-\\u206f\\ufeff\\ufff9-\\ufffb]"
)

# Append-only: a migration, once released, is never edited; add a new one instead.
FINALITY: list[tuple[int, str, str]] = [
    (
        10,
        "PII round two: release only for a request an earlier transaction committed, not-found decided"
        " by the database, no caller text kept on refusal, bounded reasons, erasure tombstones",
        f"""
        -- The transaction that made a request, and the tokens that had a vault entry then.
        ALTER TABLE public.pii_reveal_requests ADD COLUMN IF NOT EXISTS xact xid8;
        ALTER TABLE public.pii_reveal_requests ADD COLUMN IF NOT EXISTS found text[];

        -- One row per erased user: messages of that user sent up to erased_at are stored without
        -- their tokens, vault entries or bodies, whenever and however often they arrive later.
        CREATE TABLE IF NOT EXISTS public.pii_erasures(
            user_id varchar(128) PRIMARY KEY,
            erased_at timestamptz NOT NULL);
        COMMENT ON TABLE public.pii_erasures IS
            'erased users: their messages sent up to erased_at never bring a token, vault entry or body back';
        ALTER TABLE public.pii_erasures OWNER TO etl_owner;
        REVOKE ALL ON public.pii_erasures FROM PUBLIC;

        -- The audit chain's head, one row: etl_audit locks it by updating it, so appends queue up
        -- in READ COMMITTED (the update re-reads the newest head after waiting) and fail with a
        -- serialization error under REPEATABLE READ or SERIALIZABLE, never fork the chain from a
        -- stale snapshot. Only etl_owner can touch it (an advisory lock any login could hold).
        CREATE TABLE IF NOT EXISTS public.pii_audit_head(
            one boolean PRIMARY KEY DEFAULT true CHECK (one),
            hash text NOT NULL);
        INSERT INTO public.pii_audit_head (one, hash)
            SELECT true, coalesce((SELECT a.hash FROM public.pii_audit a ORDER BY a.id DESC LIMIT 1),
                                  pg_catalog.repeat('0', 64))
            ON CONFLICT DO NOTHING;
        ALTER TABLE public.pii_audit_head OWNER TO etl_owner;
        REVOKE ALL ON public.pii_audit_head FROM PUBLIC;

        CREATE OR REPLACE FUNCTION public.etl_reason_ok(p_reason text) RETURNS boolean
            LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $f$
            SELECT p_reason IS NOT NULL AND pg_catalog.length(p_reason) BETWEEN 1 AND {REASON_MAX}
                   AND pg_catalog.btrim(p_reason) <> '' AND p_reason !~ '{_INVISIBLE}' $f$;

        CREATE OR REPLACE FUNCTION public.etl_audit(p_action text, p_field text, p_token text,
                p_subject text, p_reason text, p_outcome text) RETURNS bigint
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
            DECLARE prev text; ts timestamptz; new_id bigint; h text;
            BEGIN
                IF NOT public.etl_reason_ok(p_reason) THEN
                    RAISE EXCEPTION 'an audited reason is 1 to {REASON_MAX} printable characters'
                        USING ERRCODE = 'invalid_parameter_value';
                END IF;
                UPDATE public.pii_audit_head SET hash = hash WHERE one RETURNING hash INTO prev;
                ts := pg_catalog.date_trunc('microseconds', pg_catalog.clock_timestamp());
                h := public.etl_audit_hash_v2(prev, ts, session_user, p_action, p_field, p_token, p_subject,
                                              p_reason, p_outcome);
                INSERT INTO public.pii_audit (at, actor, action, field, token, subject, reason, outcome,
                                              prev_hash, hash, scheme)
                VALUES (ts, session_user, p_action, p_field, p_token, p_subject, p_reason, p_outcome, prev, h, 2)
                RETURNING id INTO new_id;
                UPDATE public.pii_audit_head SET hash = h WHERE one;
                RETURN new_id;
            END $f$;

        -- The erasure lock (etl_erase, etl_erasures_for) only works when each statement sees what
        -- committed before it: READ COMMITTED (etl.store.connect sets it for every session).
        CREATE OR REPLACE FUNCTION public.etl_require_read_committed() RETURNS void
            LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $f$
            BEGIN
                IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
                    RAISE EXCEPTION 'erasures and chunk writes run in READ COMMITTED (this transaction: %)',
                        pg_catalog.current_setting('transaction_isolation')
                        USING ERRCODE = 'invalid_transaction_state';
                END IF;
            END $f$;

        -- Step 1 of a reveal. A refusal keeps no text of the caller's (counts only). For an
        -- officer, the request, its transaction and, per token, 'released' (it has a vault entry:
        -- count it as revealed) or 'not found' commit together, before anything can leave.
        CREATE OR REPLACE FUNCTION public.etl_reveal_request(p_field text, p_tokens text[], p_reason text)
                RETURNS bigint
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
            DECLARE t text; request bigint; hits text[]; n integer := coalesce(pg_catalog.cardinality(p_tokens), 0);
            BEGIN
                IF NOT pg_catalog.pg_has_role(session_user, 'pii_officer', 'MEMBER') THEN
                    PERFORM public.etl_audit('reveal', NULL, NULL, pg_catalog.format('%s tokens', n),
                                             '(not kept: refused caller)', 'refused: not a pii_officer');
                    RETURN NULL;
                END IF;
                IF p_field NOT IN ('ip', 'device_id') OR n > 10000 OR NOT public.etl_reason_ok(p_reason)
                        OR EXISTS (SELECT 1 FROM pg_catalog.unnest(p_tokens) AS u(x)
                                   WHERE u.x IS NULL OR u.x !~ '^k[0-9]+:[0-9a-f]{{64}}$') THEN
                    RAISE EXCEPTION 'a reveal names a field (ip, device_id), at most 10000 tokens k<n>:<64 hex>'
                        ' and a reason of 1 to {REASON_MAX} printable characters'
                        USING ERRCODE = 'invalid_parameter_value';
                END IF;
                SELECT coalesce(pg_catalog.array_agg(v.token::text), '{{}}') INTO hits
                    FROM public.pii_vault v WHERE v.field = p_field AND v.token = ANY (p_tokens);
                -- the request commits durably even where the login's default is asynchronous commit
                -- (a crash must not lose audit rows whose ciphertexts already left)
                PERFORM pg_catalog.set_config('synchronous_commit', 'on', true);
                INSERT INTO public.pii_reveal_requests (actor, field, tokens, reason, xact, found)
                VALUES (session_user, p_field, coalesce(p_tokens, '{{}}'), p_reason, pg_catalog.pg_current_xact_id(),
                        hits)
                RETURNING id INTO request;
                FOREACH t IN ARRAY coalesce(p_tokens, '{{}}') LOOP
                    PERFORM public.etl_audit('reveal', p_field, t, 'request ' || request, p_reason,
                                             CASE WHEN t = ANY (hits) THEN 'released' ELSE 'not found' END);
                END LOOP;
                IF n = 0 THEN
                    PERFORM public.etl_audit('reveal', p_field, NULL, 'request ' || request, p_reason,
                                             'requested: no tokens selected');
                END IF;
                RETURN request;
            END $f$;

        -- Step 2: the ciphertexts of the tokens step 1 found, to the requester, only once the
        -- transaction that made the request has committed (never inside it, nor a savepoint of it).
        CREATE OR REPLACE FUNCTION public.etl_reveal_release(p_request bigint)
                RETURNS TABLE (token text, ciphertext text, key_id text, key_material bytea, recipient text)
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
            DECLARE r public.pii_reveal_requests;
            BEGIN
                SELECT * INTO r FROM public.pii_reveal_requests q WHERE q.id = p_request;
                IF NOT FOUND OR r.actor <> session_user OR r.xact IS NULL
                        OR pg_catalog.pg_xact_status(r.xact) IS DISTINCT FROM 'committed'
                        OR r.at < pg_catalog.clock_timestamp() - interval '10 minutes' THEN
                    RAISE EXCEPTION 'no committed reveal request of this user by that number (or it expired)'
                        USING ERRCODE = 'insufficient_privilege';
                END IF;
                RETURN QUERY
                    SELECT v.token::text, v.ciphertext, e.id, coalesce(k.sealed_key, o.wrapped_key), k.recipient::text
                    FROM public.pii_vault v
                    CROSS JOIN LATERAL (SELECT pg_catalog.split_part(v.ciphertext, ':', 1) AS id) e
                    LEFT JOIN public.vault_data_keys k ON e.id LIKE 's%' AND k.key_id = e.id
                    LEFT JOIN public.vault_keys o ON e.id LIKE 'v%' AND 'v' || o.version::text = e.id
                    WHERE v.field = r.field AND v.token = ANY (r.found);
            END $f$;

        -- Step 3: what the officer's tool made of a released token: opened or not. It adds to the
        -- 'released' row, never replaces it; 'not found' is the database's word alone.
        CREATE OR REPLACE FUNCTION public.etl_reveal_outcome(p_request bigint, p_token text, p_outcome text)
                RETURNS void
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
            DECLARE r public.pii_reveal_requests;
            BEGIN
                SELECT * INTO r FROM public.pii_reveal_requests q WHERE q.id = p_request;
                IF NOT FOUND OR r.actor <> session_user OR NOT (p_token = ANY (r.found))
                        OR p_outcome NOT IN ('revealed', 'failed') THEN
                    RAISE EXCEPTION 'not an outcome of a released token of this user''s requests'
                        USING ERRCODE = 'insufficient_privilege';
                END IF;
                INSERT INTO public.pii_reveal_outcomes (request_id, token) VALUES (p_request, p_token);
                PERFORM public.etl_audit('reveal', r.field, p_token, 'request ' || p_request, r.reason, p_outcome);
            END $f$;

        -- For a chunk's transaction (workers): lock out a concurrent erasure until this chunk
        -- commits (an erasure waits for chunks in flight; later chunks wait for it), then name the
        -- erased users among p_users. Taken before the chunk touches pii_vault, as etl_erase does.
        CREATE OR REPLACE FUNCTION public.etl_erasures_for(p_users text[])
                RETURNS TABLE (user_id text, erased_at timestamptz)
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
            BEGIN
                PERFORM public.etl_require_read_committed();
                LOCK TABLE public.pii_erasures IN SHARE MODE;
                RETURN QUERY SELECT e.user_id::text, e.erased_at FROM public.pii_erasures e
                    WHERE e.user_id = ANY (p_users);
            END $f$;

        -- Erasure: a tombstone first (before pii_vault, the order chunk writes lock in), then the
        -- user's unshared vault entries, tokens and rejected bodies, all in one transaction.
        -- Returns also when the user was erased before (NULL: never) so a caller can tell a
        -- mistyped id from a user with nothing left.
        DROP FUNCTION IF EXISTS public.etl_erase(text, text);
        CREATE FUNCTION public.etl_erase(p_user_id text, p_reason text)
                RETURNS TABLE (tokens bigint, kept_shared bigint, erased bigint, rejected bigint, rows bigint,
                               erased_before timestamptz)
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
            DECLARE n_tokens bigint; n_shared bigint; n_erased bigint; n_rejected bigint; n_rows bigint;
                    prior timestamptz;
            BEGIN
                IF NOT pg_catalog.pg_has_role(session_user, 'pii_officer', 'MEMBER') THEN
                    PERFORM public.etl_audit('erase', NULL, NULL, NULL, '(not kept: refused caller)',
                                             'refused: not a pii_officer');
                    RETURN;
                END IF;
                IF p_user_id IS NULL OR pg_catalog.length(p_user_id) NOT BETWEEN 1 AND 128
                        OR NOT public.etl_reason_ok(p_reason) THEN
                    RAISE EXCEPTION 'an erasure names a user id of 1 to 128 characters'
                        ' and a reason of 1 to {REASON_MAX} printable characters'
                        USING ERRCODE = 'invalid_parameter_value';
                END IF;
                PERFORM public.etl_require_read_committed();
                SELECT e.erased_at INTO prior FROM public.pii_erasures e WHERE e.user_id = p_user_id;
                INSERT INTO public.pii_erasures (user_id, erased_at) VALUES (p_user_id, pg_catalog.clock_timestamp())
                    ON CONFLICT ON CONSTRAINT pii_erasures_pkey DO UPDATE SET erased_at = EXCLUDED.erased_at;
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
                RETURN QUERY SELECT n_tokens, n_shared, n_erased, n_rejected, n_rows, prior;
            END $f$;

        ALTER FUNCTION public.etl_reason_ok(text) OWNER TO etl_owner;
        ALTER FUNCTION public.etl_audit(text, text, text, text, text, text) OWNER TO etl_owner;
        ALTER FUNCTION public.etl_require_read_committed() OWNER TO etl_owner;
        ALTER FUNCTION public.etl_reveal_request(text, text[], text) OWNER TO etl_owner;
        ALTER FUNCTION public.etl_reveal_release(bigint) OWNER TO etl_owner;
        ALTER FUNCTION public.etl_reveal_outcome(bigint, text, text) OWNER TO etl_owner;
        ALTER FUNCTION public.etl_erasures_for(text[]) OWNER TO etl_owner;
        ALTER FUNCTION public.etl_erase(text, text) OWNER TO etl_owner;
        REVOKE ALL ON FUNCTION public.etl_erasures_for(text[]), public.etl_erase(text, text) FROM PUBLIC;
        -- etl_erase was re-created (its result grew a column): its grant comes back with it.
        -- (anyone may call it: it refuses non-officers and audits the attempt, as a reveal does)
        GRANT EXECUTE ON FUNCTION public.etl_erase(text, text) TO pii_officer;
        DO $$ BEGIN
            IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'etl_writer') THEN
                GRANT EXECUTE ON FUNCTION public.etl_erasures_for(text[]) TO etl_writer;
                GRANT EXECUTE ON FUNCTION public.etl_erase(text, text) TO etl_writer;
            END IF;
            IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'analyst') THEN
                GRANT EXECUTE ON FUNCTION public.etl_erase(text, text) TO analyst;
            END IF;
        END $$;
        """,
    ),
]
