//! What `ALTER COLUMN ... TYPE` still reads the whole table for when it keeps the rows:
//! the indexes it builds again and the CHECK constraints it checks again.
//!
//! tablecmds.c re-creates every index that depends on the column and keeps the old one only
//! when indexcmds.c's `CheckIndexCompatible` allows: no expression and no predicate, valid,
//! and, for every key column, the same operator class and collation once the index is
//! re-created for the new type. A binary-coercible change (varchar(20) to varchar(40)) keeps
//! a plain index on the column; a new collation, or any expression or partial index on it,
//! is a full build under the statement's ACCESS EXCLUSIVE lock.

use super::catalog::{members, relation_name, type_and_mod};
use super::describe::{index, with_syscache};
use super::subxact;
use super::touched::indexes_of;
use pgrx::pg_sys;
use std::ffi::{c_char, c_int, CString};

/// The indexes of `relid`, by name, that changing `column` as `def` says rebuilds, for a
/// change that does not rewrite the table. `None` when it could not be worked out (an
/// unknown column, type or collation: the statement itself then fails).
///
/// # Safety
/// `def` is the ColumnDef of a valid raw ALTER COLUMN ... TYPE subcommand.
pub unsafe fn indexes_rebuilt(
    relid: pg_sys::Oid,
    column: &str,
    def: *mut pg_sys::ColumnDef,
) -> Option<Vec<String>> {
    let column = CString::new(column).ok()?;
    subxact::run(|| unsafe {
        let (target, _) = type_and_mod((*def).typeName);
        let new_collation = pg_sys::GetColumnDefCollation(std::ptr::null_mut(), def, target);
        let mut rebuilt = Vec::new();
        // The change reaches every partition and inheritance child, each with its own
        // indexes; the column's number may differ from table to table.
        for table in std::iter::once(relid).chain(members(relid)) {
            let attnum = pg_sys::get_attnum(table, column.as_ptr());
            if attnum == pg_sys::InvalidAttrNumber as i16 {
                continue;
            }
            let (mut typ, mut typmod, mut collation) = (pg_sys::InvalidOid, 0, pg_sys::InvalidOid);
            pg_sys::get_atttypetypmodcoll(table, attnum, &mut typ, &mut typmod, &mut collation);
            let change = Change {
                attnum,
                old_type: typ,
                old_collation: collation,
                new_type: target,
                new_collation,
            };
            rebuilt.extend(
                indexes_of(table)
                    .into_iter()
                    .filter(|i| change.rebuilds(*i))
                    .filter_map(relation_name),
            );
        }
        Some(rebuilt)
    })
    .ok()
    .flatten()
}

struct Change {
    attnum: i16,
    old_type: pg_sys::Oid,
    old_collation: pg_sys::Oid,
    new_type: pg_sys::Oid,
    new_collation: pg_sys::Oid,
}

impl Change {
    fn rebuilds(&self, indexrelid: pg_sys::Oid) -> bool {
        let Some(found) = index(indexrelid) else {
            return false;
        };
        let (expressions, mentioned) = self.in_expressions(indexrelid);
        if !found.columns.contains(&self.attnum) && !mentioned {
            return false; // does not depend on the column: left alone
        }
        if expressions || !found.valid {
            return true;
        }
        let Some(method) = access_method(indexrelid) else {
            return true;
        };
        let keys = found.columns.iter().take(found.key_count).enumerate();
        keys.filter(|(_, attnum)| **attnum == self.attnum)
            .any(|(i, _)| {
                let (Some(&class), Some(&collation)) =
                    (found.classes.get(i), found.collations.get(i))
                else {
                    return true;
                };
                self.key_changes(method, class, collation)
                    || self.stored_type_differs(indexrelid, i, class)
            })
    }

    /// CheckIndexCompatible's last test: under a class over a polymorphic type (array_ops,
    /// enum_ops, range_ops, ...), the index is kept only if the type it stores is the new
    /// column type; GIN's array_ops stores the element type, so it is always built again.
    fn stored_type_differs(&self, indexrelid: pg_sys::Oid, key: usize, class: pg_sys::Oid) -> bool {
        // SAFETY: catalog lookups by OID.
        unsafe {
            let polymorphic = pg_sys::get_typtype(pg_sys::get_opclass_input_type(class))
                == pg_sys::TYPTYPE_PSEUDO as c_char;
            polymorphic && pg_sys::get_atttype(indexrelid, key as i16 + 1) != self.new_type
        }
    }

    /// Whether a key column's operator class or collation differs once the index is printed
    /// (pg_get_indexdef) and created again for the new type: a class or collation written
    /// out (not the old type's default) is kept, a default one follows the new type.
    fn key_changes(&self, method: pg_sys::Oid, class: pg_sys::Oid, collation: pg_sys::Oid) -> bool {
        // SAFETY: catalog lookups by OID.
        unsafe {
            let new_class = if pg_sys::GetDefaultOpClass(self.old_type, method) == class {
                pg_sys::GetDefaultOpClass(self.new_type, method)
            } else {
                class
            };
            let new_collation = if collation == self.old_collation {
                self.new_collation
            } else {
                collation
            };
            new_class != class || new_collation != collation
        }
    }

    /// Whether the index has expressions or a predicate, and whether they read the column.
    fn in_expressions(&self, indexrelid: pg_sys::Oid) -> (bool, bool) {
        const INDEXRELID: c_int = pg_sys::SysCacheIdentifier::INDEXRELID as c_int;
        with_syscache(INDEXRELID, indexrelid, |tuple| {
            let mut any = false;
            let mut mentioned = false;
            for attr in [
                pg_sys::Anum_pg_index_indexprs,
                pg_sys::Anum_pg_index_indpred,
            ] {
                let mut isnull = false;
                // SAFETY: a pg_index row; the pg_node_tree is read as the server stored it,
                // and its Vars (varno 1) are the table's columns.
                unsafe {
                    let datum = pg_sys::SysCacheGetAttr(INDEXRELID, tuple, attr as _, &mut isnull);
                    if isnull {
                        continue;
                    }
                    any = true;
                    let text = pg_sys::text_to_cstring(datum.cast_mut_ptr());
                    let node = pg_sys::stringToNode(text).cast::<pg_sys::Node>();
                    let mut columns: *mut pg_sys::Bitmapset = std::ptr::null_mut();
                    pg_sys::pull_varattnos(node, 1, &mut columns);
                    mentioned |= pg_sys::bms_is_member(
                        self.attnum as i32 - pg_sys::FirstLowInvalidHeapAttributeNumber,
                        columns,
                    );
                }
            }
            (any, mentioned)
        })
        .unwrap_or((false, false))
    }
}

fn access_method(indexrelid: pg_sys::Oid) -> Option<pg_sys::Oid> {
    const RELOID: c_int = pg_sys::SysCacheIdentifier::RELOID as c_int;
    with_syscache(RELOID, indexrelid, |tuple| {
        // SAFETY: a pg_class row.
        unsafe { (*pg_sys::GETSTRUCT(tuple).cast::<pg_sys::FormData_pg_class>()).relam }
    })
}

/// The validated CHECK constraints on `column` of `relid` and of its partitions and children,
/// as `(table, constraint)`, quoted: tablecmds.c adds them again after the change and checks
/// every row against them (a NOT VALID one is added back NOT VALID, unchecked). Inherited
/// ones are left out: they come back with their parent's.
pub fn checks_revalidated(relid: pg_sys::Oid, column: &str) -> Vec<(String, String)> {
    let tables: Vec<pg_sys::Oid> = std::iter::once(relid).chain(members(relid)).collect();
    crate::pg::spi::pinned_pairs(
        "SELECT c.conrelid::regclass::text, quote_ident(c.conname) \
           FROM pg_catalog.pg_constraint c \
           JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey) \
          WHERE c.conrelid = ANY ($1) AND c.contype = 'c' AND c.convalidated AND c.conislocal \
            AND a.attname = $2 \
          ORDER BY c.conrelid = $3 DESC, 1, 2",
        &[tables.into(), column.into(), relid.into()],
    )
    .unwrap_or_default()
}
