//! The statement that lists tasks matching a [`TaskFilter`], newest first: one shape for
//! every store, each writing its own placeholders (`?1` in SQLite, `$1` in PostgreSQL).

use super::task::TaskFilter;

/// How many tasks a listing returns when the filter sets no limit.
pub(super) const DEFAULT_LIST_LIMIT: usize = 1000;

/// One argument of the statement, in the order of its placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ListArg {
    Text(String),
    Int(i64),
}

/// `select` (the columns, `FROM` the tasks table, aliased so that `prefix` names its
/// columns) with the conditions of `filter`, newest first, limited; `placeholder(n)` writes
/// the n-th argument's placeholder (from 1).
pub(super) fn list_statement(
    filter: &TaskFilter,
    select: &str,
    prefix: &str,
    placeholder: fn(usize) -> String,
) -> (String, Vec<ListArg>) {
    let mut sql = select.to_owned();
    let mut args = Vec::new();
    let mut conditions = Vec::new();
    let mut condition = |column: &str, op: &str, arg: ListArg| {
        args.push(arg);
        conditions.push(format!("{prefix}{column} {op} {}", placeholder(args.len())));
    };
    let big = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    if let Some(status) = filter.status {
        condition("status", "=", ListArg::Text(status.as_str().to_owned()));
    }
    if let Some(plugin) = &filter.plugin {
        condition("plugin", "=", ListArg::Text(plugin.clone()));
    }
    if let Some(since) = filter.since_unix_ms {
        condition("created", ">=", ListArg::Int(big(since)));
    }
    if let Some(before) = filter.before {
        condition("id", "<", ListArg::Int(before));
    }
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    let limit = match filter.limit {
        0 => DEFAULT_LIST_LIMIT,
        n => n,
    };
    args.push(ListArg::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
    sql.push_str(&format!(
        " ORDER BY {prefix}id DESC LIMIT {}",
        placeholder(args.len())
    ));
    (sql, args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::tasks::task::TaskStatus;

    #[test]
    fn each_condition_takes_the_next_placeholder_and_the_limit_comes_last() {
        let filter = TaskFilter {
            status: Some(TaskStatus::Queued),
            before: Some(42),
            ..TaskFilter::default()
        };
        let (sql, args) =
            list_statement(&filter, "SELECT id FROM tasks t", "t.", |n| format!("${n}"));
        assert_eq!(
            sql,
            "SELECT id FROM tasks t WHERE t.status = $1 AND t.id < $2 ORDER BY t.id DESC LIMIT $3"
        );
        assert_eq!(
            args,
            [
                ListArg::Text("queued".to_owned()),
                ListArg::Int(42),
                ListArg::Int(1000)
            ]
        );
        let (sql, args) = list_statement(&TaskFilter::default(), "SELECT id FROM tasks", "", |n| {
            format!("?{n}")
        });
        assert_eq!(sql, "SELECT id FROM tasks ORDER BY id DESC LIMIT ?1");
        assert_eq!(args, [ListArg::Int(1000)]);
    }
}
