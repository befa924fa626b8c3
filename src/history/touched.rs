//! Which recorded objects a migration's DDL made stale, from what the DDL log's triggers
//! queued: the objects themselves; what PostgreSQL did to them unreported (a table's
//! partitions and children, what it cloned onto partitions, partitions a DETACH left); and,
//! when something was renamed or moved, everything that depends on it, since those print its
//! name. Then which descriptions stand for them: a table touched directly is re-described
//! with its indexes, constraints, triggers and policies (ALTER TABLE rebuilds indexes under
//! new OIDs without reporting them); a default, rule or dependent object, by its table alone.

use crate::pg::touched::{self as catalog, Object, Relation};
use pgrx::pg_sys::{self, Oid};
use std::collections::{HashMap, HashSet};

/// One queued object, its queue rows merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Queued {
    /// A command renamed or moved it: what depends on it prints its name.
    pub renamed: bool,
    /// A command may have done to its partitions and children what it did to it.
    pub recurses: bool,
    /// For a dropped object, its type and identity as the drop reported them: its recorded
    /// row is found by them even where its OID is not the recorded one.
    pub object_type: Option<String>,
    pub object_identity: Option<String>,
}

impl Queued {
    /// Adds another queue row of the same object.
    pub fn merge(&mut self, other: Queued) {
        self.renamed |= other.renamed;
        self.recurses |= other.recurses;
        self.object_type = self.object_type.take().max(other.object_type);
        self.object_identity = self.object_identity.take().max(other.object_identity);
    }
}

/// What the bookkeeping asks of the catalogs (`Live` reads them; the unit tests give a few
/// rows of their own).
pub trait Catalog {
    fn dependents(&self, of: Object) -> Vec<(Object, u8)>;
    fn inheritors(&self, parent: Oid) -> Vec<Oid>;
    fn relation(&self, oid: Oid) -> Option<Relation>;
    fn default_owner(&self, oid: Oid) -> Option<Oid>;
    fn rule_owner(&self, oid: Oid) -> Option<Oid>;
    fn constraint_owner(&self, oid: Oid) -> Option<(Oid, Oid)>;
    fn trigger_is_internal(&self, oid: Oid) -> Option<bool>;
    fn indexes_of(&self, table: Oid) -> Vec<Oid>;
    fn constraints_of(&self, table: Oid) -> Vec<Oid>;
    fn user_triggers_of(&self, table: Oid) -> Vec<Oid>;
    fn policies_of(&self, table: Oid) -> Vec<Oid>;
    fn constraints_on(&self, table: Oid) -> Vec<Oid>;
    /// Called for every object visited: a rename of a schema reaches all of its objects.
    fn tick(&self) {}
}

/// The catalogs of this database, as of now.
pub struct Live;

impl Catalog for Live {
    fn dependents(&self, of: Object) -> Vec<(Object, u8)> {
        catalog::dependents(of)
    }
    fn inheritors(&self, parent: Oid) -> Vec<Oid> {
        catalog::inheritors(parent)
    }
    fn relation(&self, oid: Oid) -> Option<Relation> {
        catalog::relation(oid)
    }
    fn default_owner(&self, oid: Oid) -> Option<Oid> {
        catalog::default_owner(oid)
    }
    fn rule_owner(&self, oid: Oid) -> Option<Oid> {
        catalog::rule_owner(oid)
    }
    fn constraint_owner(&self, oid: Oid) -> Option<(Oid, Oid)> {
        catalog::constraint_owner(oid)
    }
    fn trigger_is_internal(&self, oid: Oid) -> Option<bool> {
        catalog::trigger_is_internal(oid)
    }
    fn indexes_of(&self, table: Oid) -> Vec<Oid> {
        catalog::indexes_of(table)
    }
    fn constraints_of(&self, table: Oid) -> Vec<Oid> {
        catalog::constraints_of(table)
    }
    fn user_triggers_of(&self, table: Oid) -> Vec<Oid> {
        catalog::user_triggers_of(table)
    }
    fn policies_of(&self, table: Oid) -> Vec<Oid> {
        catalog::policies_of(table)
    }
    fn constraints_on(&self, table: Oid) -> Vec<Oid> {
        catalog::constraints_on(table)
    }
    fn tick(&self) {
        pgrx::check_for_interrupts!();
    }
}

/// Every object reachable from `start` by `next`, `start` included.
fn reachable(
    start: impl IntoIterator<Item = Object>,
    catalog: &impl Catalog,
    mut next: impl FnMut(Object) -> Vec<Object>,
) -> HashSet<Object> {
    let mut seen = HashSet::new();
    let mut todo: Vec<Object> = start.into_iter().collect();
    while let Some(object) = todo.pop() {
        if seen.insert(object) {
            catalog.tick();
            todo.extend(next(object).into_iter().filter(|o| !seen.contains(o)));
        }
    }
    seen
}

/// The objects whose descriptions may have changed, each with whether DDL touched it
/// (`true`) or it only depends on something renamed (`false`). `detached` are the
/// partitions recorded under a queued table: DETACH PARTITION reports the parent alone, and
/// the catalogs no longer link the two.
pub fn stale(
    queued: &HashMap<Object, Queued>,
    detached: &[Oid],
    catalog: &impl Catalog,
) -> HashMap<Object, bool> {
    let class = pg_sys::RelationRelationId;
    let mut touched: HashMap<Object, bool> = queued.keys().map(|&o| (o, true)).collect();
    // A table's or index's partitions and inheritance children, at every level: what is
    // done to the parent (a column, a constraint, an index) is done to them, unreported.
    let families = queued
        .iter()
        .filter(|((classid, _), q)| *classid == class && q.recurses)
        .map(|(&o, _)| o);
    let families = reachable(families, catalog, |(_, oid)| {
        catalog
            .inheritors(oid)
            .into_iter()
            .map(|child| (class, child))
            .collect()
    });
    // What PostgreSQL cloned from a touched object onto partitions (triggers, indexes,
    // foreign keys): the clones depend on it as partition dependencies. A relation has such
    // dependents only when it is partitioned or a partition: a plain table that 10,000
    // foreign keys reference is not read through all of them while its lock is held.
    let clones = reachable(queued.keys().copied(), catalog, |object| {
        if object.0 == class
            && !catalog
                .relation(object.1)
                .is_some_and(|r| r.is_partition || matches!(r.kind, b'p' | b'I'))
        {
            return vec![];
        }
        catalog
            .dependents(object)
            .into_iter()
            .filter(|(_, kind)| matches!(kind, b'P' | b'S'))
            .map(|(o, _)| o)
            .collect()
    });
    for object in families
        .into_iter()
        .chain(clones)
        .chain(detached.iter().map(|&oid| (class, oid)))
    {
        touched.insert(object, true);
    }
    // What depends on something renamed or moved, transitively: a schema's tables, their
    // indexes, the columns of other tables of a type in it.
    let renamed = queued.iter().filter(|(_, q)| q.renamed).map(|(&o, _)| o);
    let dependents = reachable(renamed, catalog, |object| {
        catalog
            .dependents(object)
            .into_iter()
            .map(|(o, _)| o)
            .collect()
    });
    for object in dependents {
        touched.entry(object).or_insert(false);
    }
    touched
}

/// The objects to describe again, by the kind `migrate.describe_objects` takes them as,
/// each once.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ToDescribe {
    /// Tables touched directly: described with their indexes, constraints, triggers and
    /// policies, and the recorded rows of those replaced.
    pub whole: HashSet<Oid>,
    /// Relations (the whole ones among them).
    pub relations: HashSet<Oid>,
    pub indexes: HashSet<Oid>,
    pub constraints: HashSet<Oid>,
    pub triggers: HashSet<Oid>,
    pub policies: HashSet<Oid>,
    pub types: HashSet<Oid>,
    pub functions: HashSet<Oid>,
    pub schemas: HashSet<Oid>,
    pub extensions: HashSet<Oid>,
}

/// Which descriptions stand for the `stale` objects.
pub fn to_describe(stale: &HashMap<Object, bool>, catalog: &impl Catalog) -> ToDescribe {
    let mut d = ToDescribe::default();
    for (&(classid, oid), &direct) in stale {
        catalog.tick();
        match classid {
            c if c == pg_sys::RelationRelationId => match catalog.relation(oid) {
                Some(r) if matches!(r.kind, b'i' | b'I') => {
                    d.indexes.insert(oid);
                }
                Some(r) if r.kind == b'c' => {
                    d.types.insert(r.row_type);
                }
                Some(r) if matches!(r.kind, b'r' | b'p' | b'f' | b'v' | b'm' | b'S') => {
                    d.relations.insert(oid);
                    if direct {
                        d.whole.insert(oid);
                    }
                }
                _ => {}
            },
            c if c == catalog::DEFAULTS => {
                d.relations.extend(catalog.default_owner(oid));
            }
            c if c == catalog::RULES => {
                d.relations.extend(catalog.rule_owner(oid));
            }
            c if c == catalog::CONSTRAINTS => match catalog.constraint_owner(oid) {
                Some((table, _)) if table != pg_sys::InvalidOid => {
                    d.constraints.insert(oid);
                }
                Some((_, domain)) => {
                    d.types.insert(domain);
                }
                None => {}
            },
            // Not internal triggers (foreign keys' own): they are not described.
            c if c == pg_sys::TriggerRelationId
                && catalog.trigger_is_internal(oid) == Some(false) =>
            {
                d.triggers.insert(oid);
            }
            c if c == catalog::POLICIES => {
                d.policies.insert(oid);
            }
            c if c == pg_sys::TypeRelationId => {
                d.types.insert(oid);
            }
            c if c == pg_sys::ProcedureRelationId => {
                d.functions.insert(oid);
            }
            c if c == pg_sys::NamespaceRelationId => {
                d.schemas.insert(oid);
            }
            c if c == pg_sys::ExtensionRelationId => {
                d.extensions.insert(oid);
            }
            _ => {}
        }
    }
    for &table in &d.whole {
        catalog.tick();
        d.indexes.extend(catalog.indexes_of(table));
        d.constraints.extend(catalog.constraints_of(table));
        d.triggers.extend(catalog.user_triggers_of(table));
        d.policies.extend(catalog.policies_of(table));
        // A partition of a table that foreign keys reference gets a clone of each, on the
        // referencing table.
        if catalog.relation(table).is_some_and(|r| r.is_partition) {
            d.constraints.extend(catalog.constraints_on(table));
        }
    }
    d
}

/// The recorded kind of a dropped object, from the type its drop reported.
pub fn recorded_kind(object_type: &str) -> Option<&'static str> {
    Some(match object_type {
        "table" | "foreign table" => "tables",
        "view" => "views",
        "materialized view" => "materialized_views",
        "sequence" => "sequences",
        "index" => "indexes",
        "table constraint" => "constraints",
        "trigger" => "triggers",
        "policy" => "policies",
        "type" | "domain" | "composite type" | "enum" => "types",
        "function" | "procedure" | "aggregate" => "functions",
        "schema" => "schemas",
        "extension" => "extensions",
        _ => return None,
    })
}

#[cfg(test)]
mod unit {
    use super::*;

    fn oid(n: u32) -> Oid {
        Oid::from(n)
    }

    /// A few catalog rows: enough to follow the rules above.
    #[derive(Default)]
    struct Rows {
        depend: Vec<(Object, Object, u8)>,
        inherits: Vec<(Oid, Oid)>,
        relations: HashMap<Oid, Relation>,
        indexes: Vec<(Oid, Oid)>,
        constraints: HashMap<Oid, (Oid, Oid)>,
        triggers: HashMap<Oid, (Oid, bool)>,
    }

    impl Catalog for Rows {
        fn dependents(&self, of: Object) -> Vec<(Object, u8)> {
            self.depend
                .iter()
                .filter(|(_, r, _)| *r == of)
                .map(|(o, _, k)| (*o, *k))
                .collect()
        }
        fn inheritors(&self, parent: Oid) -> Vec<Oid> {
            self.inherits
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c)
                .collect()
        }
        fn relation(&self, oid: Oid) -> Option<Relation> {
            self.relations.get(&oid).copied()
        }
        fn default_owner(&self, _: Oid) -> Option<Oid> {
            None
        }
        fn rule_owner(&self, _: Oid) -> Option<Oid> {
            None
        }
        fn constraint_owner(&self, oid: Oid) -> Option<(Oid, Oid)> {
            self.constraints.get(&oid).copied()
        }
        fn trigger_is_internal(&self, oid: Oid) -> Option<bool> {
            self.triggers.get(&oid).map(|(_, internal)| *internal)
        }
        fn indexes_of(&self, table: Oid) -> Vec<Oid> {
            self.indexes
                .iter()
                .filter(|(_, t)| *t == table)
                .map(|(i, _)| *i)
                .collect()
        }
        fn constraints_of(&self, table: Oid) -> Vec<Oid> {
            self.constraints
                .iter()
                .filter(|(_, (t, _))| *t == table)
                .map(|(c, _)| *c)
                .collect()
        }
        fn user_triggers_of(&self, table: Oid) -> Vec<Oid> {
            self.triggers
                .iter()
                .filter(|(_, (t, internal))| *t == table && !internal)
                .map(|(g, _)| *g)
                .collect()
        }
        fn policies_of(&self, _: Oid) -> Vec<Oid> {
            vec![]
        }
        fn constraints_on(&self, table: Oid) -> Vec<Oid> {
            self.dependents((pg_sys::RelationRelationId, table))
                .into_iter()
                .filter(|((c, _), _)| *c == catalog::CONSTRAINTS)
                .map(|((_, o), _)| o)
                .collect()
        }
    }

    fn table(kind: u8) -> Relation {
        Relation {
            kind,
            row_type: oid(0),
            is_partition: false,
        }
    }

    fn rel(n: u32) -> Object {
        (pg_sys::RelationRelationId, oid(n))
    }

    fn queue(objects: &[(Object, Queued)]) -> HashMap<Object, Queued> {
        objects.iter().cloned().collect()
    }

    #[test]
    fn a_table_touched_is_described_whole_with_its_indexes_constraints_and_triggers() {
        let mut rows = Rows::default();
        rows.relations.insert(oid(10), table(b'r'));
        rows.relations.insert(oid(11), table(b'i'));
        rows.indexes.push((oid(11), oid(10)));
        rows.constraints.insert(oid(12), (oid(10), oid(0)));
        rows.triggers.insert(oid(13), (oid(10), false));
        rows.triggers.insert(oid(14), (oid(10), true));
        let queued = queue(&[(rel(10), Queued::default())]);
        let d = to_describe(&stale(&queued, &[], &rows), &rows);
        assert_eq!(d.whole, HashSet::from([oid(10)]));
        assert_eq!(d.relations, HashSet::from([oid(10)]));
        assert_eq!(d.indexes, HashSet::from([oid(11)]));
        assert_eq!(d.constraints, HashSet::from([oid(12)]));
        assert_eq!(
            d.triggers,
            HashSet::from([oid(13)]),
            "internal triggers are not described"
        );
    }

    #[test]
    fn what_depends_on_a_renamed_object_is_described_alone() {
        let mut rows = Rows::default();
        let schema = (pg_sys::NamespaceRelationId, oid(1));
        rows.relations.insert(oid(10), table(b'r'));
        rows.relations.insert(oid(11), table(b'i'));
        rows.indexes.push((oid(11), oid(10)));
        rows.depend.push((rel(10), schema, b'n'));
        rows.depend.push((rel(11), rel(10), b'a'));
        let queued = queue(&[(
            schema,
            Queued {
                renamed: true,
                ..Queued::default()
            },
        )]);
        let s = stale(&queued, &[], &rows);
        assert_eq!(s.get(&schema), Some(&true));
        assert_eq!(s.get(&rel(10)), Some(&false));
        assert_eq!(s.get(&rel(11)), Some(&false), "transitively");
        let d = to_describe(&s, &rows);
        assert_eq!(d.schemas, HashSet::from([oid(1)]));
        assert!(d.whole.is_empty(), "not described whole: {d:?}");
        assert_eq!(d.relations, HashSet::from([oid(10)]));
        assert_eq!(d.indexes, HashSet::from([oid(11)]));
    }

    #[test]
    fn partitions_and_clones_of_a_touched_table_are_touched_too() {
        let mut rows = Rows::default();
        for n in [10, 20, 21] {
            rows.relations.insert(oid(n), table(b'p'));
        }
        rows.inherits.push((oid(20), oid(10)));
        rows.inherits.push((oid(21), oid(20)));
        let trigger = (pg_sys::TriggerRelationId, oid(30));
        let clone = (pg_sys::TriggerRelationId, oid(31));
        rows.triggers.insert(oid(30), (oid(10), false));
        rows.triggers.insert(oid(31), (oid(20), false));
        rows.depend.push((clone, trigger, b'P'));
        rows.depend.push((rel(99), trigger, b'n'));
        let queued = queue(&[
            (
                rel(10),
                Queued {
                    recurses: true,
                    ..Queued::default()
                },
            ),
            (trigger, Queued::default()),
        ]);
        let s = stale(&queued, &[oid(40)], &rows);
        for o in [rel(10), rel(20), rel(21), trigger, clone, rel(40)] {
            assert_eq!(s.get(&o), Some(&true), "{o:?} in {s:?}");
        }
        assert!(
            !s.contains_key(&rel(99)),
            "only partition dependencies are clones"
        );
        // ATTACH and DETACH do not recurse.
        let queued = queue(&[(rel(10), Queued::default())]);
        assert!(!stale(&queued, &[], &rows).contains_key(&rel(20)));
        // A plain table has no partition dependents: its dependents are not read.
        rows.relations.insert(oid(50), table(b'r'));
        rows.depend.push((rel(51), rel(50), b'S'));
        let queued = queue(&[(rel(50), Queued::default())]);
        assert!(!stale(&queued, &[], &rows).contains_key(&rel(51)));
    }

    #[test]
    fn a_domain_constraint_describes_its_type_and_a_composite_type_its_row_type() {
        let mut rows = Rows::default();
        rows.constraints.insert(oid(50), (oid(0), oid(60)));
        rows.relations.insert(
            oid(70),
            Relation {
                kind: b'c',
                row_type: oid(71),
                is_partition: false,
            },
        );
        let queued = queue(&[
            ((catalog::CONSTRAINTS, oid(50)), Queued::default()),
            (rel(70), Queued::default()),
        ]);
        let d = to_describe(&stale(&queued, &[], &rows), &rows);
        assert_eq!(d.types, HashSet::from([oid(60), oid(71)]));
        assert!(d.constraints.is_empty() && d.relations.is_empty());
    }

    #[test]
    fn queue_rows_of_one_object_merge() {
        let mut q = Queued::default();
        q.merge(Queued {
            renamed: true,
            recurses: false,
            object_type: Some("table".into()),
            object_identity: Some("public.t".into()),
        });
        q.merge(Queued::default());
        assert!(q.renamed && !q.recurses);
        assert_eq!(q.object_identity.as_deref(), Some("public.t"));
    }

    #[test]
    fn dropped_objects_are_found_under_their_recorded_kind() {
        assert_eq!(recorded_kind("foreign table"), Some("tables"));
        assert_eq!(recorded_kind("table constraint"), Some("constraints"));
        assert_eq!(recorded_kind("enum"), Some("types"));
        assert_eq!(recorded_kind("aggregate"), Some("functions"));
        assert_eq!(recorded_kind("default value"), None);
    }
}
