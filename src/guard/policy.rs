//! From findings to what happens: refuse, warn, or let an override through (and record it).

use crate::errors::Problem;
use crate::guard::rule::Family;
use crate::guard::rule::Finding;
use crate::gucs::GuardMode;
use pgrx::PgSqlErrorCode;

/// Everything about the session that decides what a finding leads to.
#[derive(Debug, Clone)]
pub struct Context {
    pub mode: GuardMode,
    /// Rule ids overridden for this command: `SET LOCAL migrate.allow` and the `allow`
    /// argument of the running `migrate.apply`.
    pub allow: Vec<String>,
    /// Ids from a migrate.allow set in an earlier transaction, which do not count.
    pub stale_allow: Vec<String>,
    /// Ids from a migrate.allow set by another role (the second field), which may not
    /// override for the current one.
    pub foreign_allow: Option<(Vec<String>, String)>,
    /// The current role may override (member of migrate_admin, or superuser).
    pub is_admin: bool,
    pub role: String,
    /// Running inside `migrate.apply` for a migration that declares a rollback script: the
    /// only place data-loss rules may be overridden.
    pub apply_with_rollback: bool,
    /// A superuser session with check_function_bodies off, as pg_dump's output sets it.
    pub looks_like_restore: bool,
}

#[derive(Debug, Default)]
pub struct Decision {
    pub refusal: Option<Problem>,
    pub warnings: Vec<Problem>,
    /// Findings let through by an override, to be recorded with who used it.
    pub overridden: Vec<Finding>,
    /// Findings let through because the guard only warns, to be recorded as well.
    pub warned: Vec<Finding>,
}

pub fn decide(findings: Vec<Finding>, ctx: &Context) -> Decision {
    let mut decision = Decision::default();
    if ctx.mode == GuardMode::Off {
        return decision;
    }
    if !ctx.stale_allow.is_empty() && !findings.is_empty() {
        decision.warnings.push(Problem::new(
            PgSqlErrorCode::ERRCODE_WARNING,
            format!(
                "migrate.allow = '{}' was set in an earlier transaction and is ignored",
                ctx.stale_allow.join(",")
            ),
            "An override lasts for one transaction, so that it cannot outlive the change it \
             was meant for.",
            "Use SET LOCAL migrate.allow = '...' inside the transaction that runs the command.",
        ));
    }
    if let Some((ids, setter)) = ctx.foreign_allow.as_ref().filter(|_| !findings.is_empty()) {
        decision.warnings.push(Problem::new(
            PgSqlErrorCode::ERRCODE_WARNING,
            format!(
                "migrate.allow = '{}' was set by role \"{setter}\" and is ignored for role \"{}\"",
                ids.join(","),
                ctx.role
            ),
            "An override belongs to the role that set it: it counts only for a member of \
             migrate_admin running its own statements (or those of a role it has the \
             privileges of), not inside a function that runs as another role.",
            "Let the role that runs the statement set migrate.allow itself (SET LOCAL inside \
             the function, or in its own transaction).",
        ));
    }
    let mut blocking = Vec::new();
    for finding in findings {
        if !ctx.allow.iter().any(|id| id == finding.rule.id) {
            blocking.push(finding);
        } else if !ctx.is_admin {
            decision
                .refusal
                .get_or_insert_with(|| not_admin(&finding, ctx));
        } else if finding.rule.family == Family::DataLoss && !ctx.apply_with_rollback {
            decision
                .refusal
                .get_or_insert_with(|| data_loss_needs_rollback(&finding));
        } else {
            decision.overridden.push(finding);
        }
    }
    if decision.refusal.is_some() {
        return decision;
    }
    match ctx.mode {
        GuardMode::Enforce if !blocking.is_empty() => {
            let mut p = refusal(&blocking);
            if ctx.looks_like_restore {
                p.hint.push_str(
                    "\nRestoring a dump? Run the restore with PGOPTIONS='-c migrate.guard=off'.",
                );
            }
            decision.refusal = Some(p);
        }
        GuardMode::Warn => {
            for finding in blocking {
                let mut warning = problem(&finding);
                warning.code = PgSqlErrorCode::ERRCODE_WARNING;
                warning.hint = format!("{} (Allowed because migrate.guard = warn.)", warning.hint);
                decision.warnings.push(warning);
                decision.warned.push(finding);
            }
        }
        _ => {}
    }
    decision
}

/// The refusal for the first blocking finding; the others are named in the DETAIL.
fn refusal(blocking: &[Finding]) -> Problem {
    let mut p = problem(&blocking[0]);
    let others: Vec<&str> = blocking[1..].iter().map(|f| f.rule.id).collect();
    if !others.is_empty() {
        p.detail.push_str(&format!(
            " The statement also breaks: {}.",
            others.join(", ")
        ));
    }
    p
}

/// A finding as an error: message naming the rule, DETAIL saying what would happen, HINT
/// giving the safe way and how an override is made.
pub fn problem(finding: &Finding) -> Problem {
    let id = finding.rule.id;
    let override_hint = if finding.rule.family == Family::DataLoss {
        format!(
            "If the data really must go, do it through migrate.apply(version, script, rollback \
             => '<how to undo it>', allow => ARRAY['{id}'])."
        )
    } else {
        format!(
            "To accept it for one transaction, a member of migrate_admin can SET LOCAL \
             migrate.allow = '{id}'."
        )
    };
    Problem::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("{id}: {}", finding.message),
        finding.detail.clone(),
        format!("{}\n{override_hint}", finding.hint),
    )
}

fn not_admin(finding: &Finding, ctx: &Context) -> Problem {
    Problem::new(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!(
            "{}: role \"{}\" may not override the guard (migrate.allow)",
            finding.rule.id, ctx.role
        ),
        format!(
            "Only members of migrate_admin may override guard rules. Without the override: {}",
            finding.detail
        ),
        format!(
            "{}\nOr ask an administrator to GRANT migrate_admin TO \"{}\";",
            finding.hint, ctx.role
        ),
    )
}

fn data_loss_needs_rollback(finding: &Finding) -> Problem {
    let id = finding.rule.id;
    Problem::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!(
            "{id}: {}; data-loss rules can be overridden only inside migrate.apply",
            finding.message
        ),
        format!(
            "{} No destructive change without a declared way back: the override counts only \
             for a migration that declares a rollback script.",
            finding.detail
        ),
        format!(
            "SELECT migrate.apply('<version>', $$ <the statement> $$, rollback => $$ <how to \
             undo it> $$, allow => ARRAY['{id}']);"
        ),
    )
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::guard::command::Command;
    use crate::guard::findings;
    use crate::guard::rule::test_support::*;

    fn ctx(mode: GuardMode) -> Context {
        Context {
            mode,
            allow: vec![],
            stale_allow: vec![],
            foreign_allow: None,
            is_admin: true,
            role: "deployer".into(),
            apply_with_rollback: false,
            looks_like_restore: false,
        }
    }

    fn drop_and_reindex() -> Vec<Finding> {
        let t = table("public.orders", BIG);
        let mut f = findings(
            &Command::DropTable {
                tables: vec![t.clone()],
            },
            SMALL,
        );
        f.extend(findings(
            &Command::Reindex {
                target: "TABLE public.orders".into(),
                table: Some(t),
                concurrent: false,
            },
            SMALL,
        ));
        f
    }

    #[test]
    fn enforce_refuses_the_first_finding_and_names_the_rest() {
        let d = decide(drop_and_reindex(), &ctx(GuardMode::Enforce));
        let p = d.refusal.unwrap();
        assert_eq!(
            p.code,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
        );
        assert!(p
            .full_message()
            .starts_with("pg_migrate: drop-table: DROP TABLE public.orders"));
        assert!(p
            .detail
            .ends_with("The statement also breaks: reindex-blocking."));
        assert!(p.hint.contains("allow => ARRAY['drop-table']"));
    }

    #[test]
    fn warn_lets_everything_through_with_warnings_and_records_it() {
        let d = decide(drop_and_reindex(), &ctx(GuardMode::Warn));
        assert!(d.refusal.is_none());
        assert_eq!(d.warnings.len(), 2);
        assert_eq!(d.warned.len(), 2);
        assert!(d.warnings[1]
            .hint
            .ends_with("(Allowed because migrate.guard = warn.)"));
    }

    #[test]
    fn off_decides_nothing() {
        let d = decide(drop_and_reindex(), &ctx(GuardMode::Off));
        assert!(d.refusal.is_none() && d.warnings.is_empty() && d.warned.is_empty());
    }

    #[test]
    fn admins_override_lock_rules_for_the_transaction() {
        let mut c = ctx(GuardMode::Enforce);
        c.allow = vec!["reindex-blocking".into()];
        let only_reindex = drop_and_reindex().split_off(1);
        let d = decide(only_reindex, &c);
        assert!(d.refusal.is_none());
        assert_eq!(d.overridden[0].rule.id, "reindex-blocking");
    }

    #[test]
    fn non_admins_cannot_override() {
        let mut c = ctx(GuardMode::Enforce);
        c.allow = vec!["reindex-blocking".into()];
        c.is_admin = false;
        let p = decide(drop_and_reindex().split_off(1), &c).refusal.unwrap();
        assert_eq!(p.code, PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE);
        assert!(p.message.contains("role \"deployer\" may not override"));
    }

    #[test]
    fn data_loss_overrides_need_apply_with_a_rollback_script() {
        let mut c = ctx(GuardMode::Enforce);
        c.allow = vec!["drop-table".into()];
        let only_drop = || drop_and_reindex().into_iter().take(1).collect::<Vec<_>>();
        let p = decide(only_drop(), &c).refusal.unwrap();
        assert!(p
            .message
            .contains("can be overridden only inside migrate.apply"));
        c.apply_with_rollback = true;
        let d = decide(only_drop(), &c);
        assert!(d.refusal.is_none());
        assert_eq!(d.overridden.len(), 1);
    }

    #[test]
    fn refusals_in_what_looks_like_a_restore_say_how_to_restore() {
        let mut c = ctx(GuardMode::Enforce);
        let hint = |c: &Context| decide(drop_and_reindex(), c).refusal.unwrap().hint;
        assert!(!hint(&c).contains("Restoring a dump?"));
        c.looks_like_restore = true;
        assert!(hint(&c)
            .ends_with("Restoring a dump? Run the restore with PGOPTIONS='-c migrate.guard=off'."));
    }

    #[test]
    fn stale_overrides_are_ignored_with_a_warning() {
        let mut c = ctx(GuardMode::Enforce);
        c.stale_allow = vec!["reindex-blocking".into()];
        let d = decide(drop_and_reindex().split_off(1), &c);
        assert!(d.refusal.is_some());
        assert!(d.warnings[0]
            .message
            .contains("set in an earlier transaction and is ignored"));
    }

    #[test]
    fn another_roles_overrides_are_ignored_with_a_warning() {
        let mut c = ctx(GuardMode::Enforce);
        c.foreign_allow = Some((vec!["reindex-blocking".into()], "intruder".into()));
        let d = decide(drop_and_reindex().split_off(1), &c);
        assert!(d.refusal.is_some());
        assert!(d.overridden.is_empty());
        assert!(
            d.warnings[0]
                .message
                .contains("was set by role \"intruder\" and is ignored"),
            "{}",
            d.warnings[0].message
        );
    }
}
