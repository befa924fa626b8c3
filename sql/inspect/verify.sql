-- pg_migrate: helpers of migrate.verify.

-- The query that counts the rows breaking a CHECK or FOREIGN KEY constraint (MATCH SIMPLE: a
-- key with a NULL passes), whether or not it is validated; NULL for other kinds. It only
-- builds text from the catalogs: migrate.verify runs it as the table's owner (the author of
-- the constraint's expression), never with the rights of whoever calls verify. Names are
-- qualified, and operators named with their schema, so the text means the same under the
-- pinned search_path it runs with. Read-only: it takes only ACCESS SHARE locks, unlike
-- VALIDATE CONSTRAINT, which it predicts.
CREATE FUNCTION migrate.constraint_violations_query(con oid)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c pg_constraint;
BEGIN
    SELECT * INTO c FROM pg_constraint WHERE oid = con;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF c.contype = 'c' THEN
        RETURN format('SELECT pg_catalog.count(*) FROM %s WHERE NOT (%s)',
                      c.conrelid::regclass, pg_get_expr(c.conbin, c.conrelid));
    ELSIF c.contype = 'f' THEN
        RETURN format('SELECT pg_catalog.count(*) FROM %s AS fk WHERE %s AND NOT EXISTS '
                      '(SELECT FROM %s AS pk WHERE %s)',
                      c.conrelid::regclass,
                      (SELECT string_agg(format('fk.%I IS NOT NULL', a.attname), ' AND ')
                       FROM unnest(c.conkey) k
                       JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k),
                      c.confrelid::regclass,
                      (SELECT string_agg(format('pk.%I OPERATOR(%I.%s) fk.%I', pa.attname,
                                                n.nspname, o.oprname, fa.attname), ' AND ')
                       FROM unnest(c.confkey, c.conkey, c.conpfeqop) AS u(pk, fk, op)
                       JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attnum = u.pk
                       JOIN pg_attribute fa ON fa.attrelid = c.conrelid AND fa.attnum = u.fk
                       JOIN pg_operator o ON o.oid = u.op
                       JOIN pg_namespace n ON n.oid = o.oprnamespace));
    END IF;
    RETURN NULL;
END
$$;
