//! Several projection-function calls sent as one statement, so a transaction's writes
//! cost one round trip instead of one per table. On a busy host every round trip waits
//! for the database backend to be scheduled; with a dozen per deciding transaction those
//! waits, not the work, made up most of its time (docs/benchmarks.md, issue 15).
//!
//! The calls run in the order they were added: each is nested as the inner subquery of
//! the next (`OFFSET 0` keeps the planner from flattening them), and the executor
//! produces an inner row, running its call, before it projects the outer one. The
//! functions are volatile, so each sees what the calls before it wrote: the same
//! visibility as separate statements in the transaction.

use sqlx::postgres::PgArguments;
use sqlx::{Arguments, PgConnection, Postgres};

/// Most calls one statement carries: a transaction writes at most one call per kind of
/// projection, plus one per policy, configuration, kill-switch or rate change.
pub const MAX_CALLS: usize = 64;

#[derive(Default)]
pub struct Calls {
    /// `function($1::type, ...)`, in order.
    calls: Vec<String>,
    /// A data-modifying `WITH` part (an `INSERT` nothing else in the statement reads).
    with: Option<String>,
    args: PgArguments,
    params: usize,
}

impl Calls {
    /// Adds `function(...)` with one placeholder per type in `types`; the caller binds
    /// that many values next, in order.
    pub fn call(&mut self, function: &str, types: &[&str]) -> &mut Self {
        assert!(
            self.calls.len() < MAX_CALLS,
            "more than {MAX_CALLS} projection calls in one statement"
        );
        let placeholders = self.placeholders(types);
        self.calls.push(format!("{function}({placeholders})"));
        self
    }

    /// Sets the statement's `WITH` part: `sql` with `{}` replaced by the placeholders of
    /// `types` (an insert into a table no call reads, e.g. the outbox).
    pub fn with_insert(&mut self, sql: &str, types: &[&str]) -> &mut Self {
        assert!(self.with.is_none(), "one WITH insert per statement");
        let placeholders = self.placeholders(types);
        self.with = Some(sql.replace("{}", &placeholders));
        self
    }

    pub fn bind<'q, T>(&mut self, value: T) -> sqlx::Result<&mut Self>
    where
        T: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>,
    {
        self.args.add(value).map_err(sqlx::Error::Encode)?;
        Ok(self)
    }

    fn placeholders(&mut self, types: &[&str]) -> String {
        let mut out = String::new();
        for t in types {
            self.params += 1;
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(&format!("${}::{t}", self.params));
        }
        out
    }

    /// The statement text, or `None` when there is nothing to write.
    pub fn sql(&self) -> Option<String> {
        if self.calls.is_empty() && self.with.is_none() {
            return None;
        }
        let mut nested = String::from("SELECT 1 AS done");
        for (i, call) in self.calls.iter().enumerate() {
            nested = if i == 0 {
                format!("SELECT {call} AS done OFFSET 0")
            } else {
                format!("SELECT {call} AS done FROM ({nested}) c{i} OFFSET 0")
            };
        }
        let with = self
            .with
            .as_deref()
            .map(|w| format!("WITH written AS ({w}) "))
            .unwrap_or_default();
        Some(format!("{with}SELECT count(*) FROM ({nested}) calls"))
    }

    /// Runs every call (and the `WITH` insert) in one round trip.
    pub async fn execute(self, conn: &mut PgConnection) -> sqlx::Result<()> {
        let Some(sql) = self.sql() else {
            return Ok(());
        };
        // Every call made the one row it was given; a missing row would mean a call
        // was skipped.
        let calls = self.calls.len();
        let done: i64 = sqlx::query_scalar_with(sqlx::AssertSqlSafe(sql), self.args)
            .fetch_one(conn)
            .await?;
        if done != 1 {
            return Err(sqlx::Error::Protocol(format!(
                "{calls} chained projection calls returned {done} rows instead of 1"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_nest_in_the_order_added_with_numbered_placeholders() {
        let mut c = Calls::default();
        c.call("f", &["text[]", "bigint[]"]).call("g", &["int"]);
        c.with_insert("INSERT INTO t SELECT * FROM unnest({})", &["text[]"]);
        assert_eq!(
            c.sql().unwrap(),
            "WITH written AS (INSERT INTO t SELECT * FROM unnest($4::text[])) \
             SELECT count(*) FROM (SELECT g($3::int) AS done FROM \
             (SELECT f($1::text[], $2::bigint[]) AS done OFFSET 0) c1 OFFSET 0) calls"
        );
        assert_eq!(Calls::default().sql(), None);
        let mut only_with = Calls::default();
        only_with.with_insert("INSERT INTO t VALUES ({})", &["int"]);
        assert_eq!(
            only_with.sql().unwrap(),
            "WITH written AS (INSERT INTO t VALUES ($1::int)) SELECT count(*) FROM (SELECT 1 AS done) calls"
        );
    }
}
