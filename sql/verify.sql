-- pg_migrate: helpers of migrate.verify.

-- How many rows break a CHECK or FOREIGN KEY constraint (MATCH SIMPLE: a key with a NULL
-- passes), whether or not it is validated; NULL for other kinds. Read-only: it takes only
-- ACCESS SHARE locks, unlike VALIDATE CONSTRAINT, which it predicts.
CREATE FUNCTION migrate.constraint_violations(con oid)
RETURNS bigint
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c pg_constraint;
    n bigint;
BEGIN
    SELECT * INTO c FROM pg_constraint WHERE oid = con;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF c.contype = 'c' THEN
        EXECUTE format('SELECT count(*) FROM %s WHERE NOT (%s)',
                       c.conrelid::regclass, pg_get_expr(c.conbin, c.conrelid))
            INTO n;
    ELSIF c.contype = 'f' THEN
        EXECUTE format('SELECT count(*) FROM %s AS fk WHERE %s AND NOT EXISTS '
                       '(SELECT FROM %s AS pk WHERE %s)',
                       c.conrelid::regclass,
                       (SELECT string_agg(format('fk.%I IS NOT NULL', a.attname), ' AND ')
                        FROM unnest(c.conkey) k
                        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k),
                       c.confrelid::regclass,
                       (SELECT string_agg(format('pk.%I = fk.%I', pa.attname, fa.attname), ' AND ')
                        FROM unnest(c.confkey, c.conkey) AS u(pk, fk)
                        JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attnum = u.pk
                        JOIN pg_attribute fa ON fa.attrelid = c.conrelid AND fa.attnum = u.fk))
            INTO n;
    END IF;
    RETURN n;
END
$$;
