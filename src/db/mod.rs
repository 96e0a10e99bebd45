//! The SQLite database: schema, migrations and every query strata runs.
//!
//! One row per committed item (`builds`), keyed by step id, with OBuilder's meaning
//! (created, last used, parent) plus what strata needs (size, duration, the op that made it,
//! the digest a base image resolved to). Times are milliseconds since the Unix epoch.
//! A parent's child count is derived by query (never stored), so it cannot drift.
//!
//! A rollback journal (`journal_mode=TRUNCATE`) and a long busy timeout: several strata
//! processes share one store, and a database locked by another process is waited for, not
//! an error. Not WAL, on purpose: WAL's index (`-shm`) is a memory-mapped file, and on a
//! full copy-on-write filesystem (btrfs, ZFS) a write into that mapping cannot get a block
//! and kills the process with SIGBUS: exactly when `strata prune` is needed most. A rollback
//! journal uses plain writes, so a full disk is an SQLITE_FULL error. Our transactions are
//! few and small (a row per committed step, a `used` bump per cached one), so WAL's
//! concurrency is not needed; a store created with WAL is switched over when no other
//! process has it open.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use crate::key::IdScheme;
use strata_stores::StepId;

/// Schema versions, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE builds (
        id TEXT PRIMARY KEY,
        parent TEXT,
        created INTEGER NOT NULL,
        used INTEGER NOT NULL,
        size INTEGER NOT NULL DEFAULT 0,
        duration_ms INTEGER NOT NULL DEFAULT 0,
        op TEXT NOT NULL DEFAULT '',
        base_digest TEXT
     );
     CREATE INDEX builds_parent ON builds(parent);
     CREATE INDEX builds_used ON builds(used);
     CREATE TABLE caches (name TEXT PRIMARY KEY, created INTEGER NOT NULL, used INTEGER NOT NULL);",
];

const BUSY_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database {path} was created by a newer strata (schema {found}, this one knows {known})")]
    TooNew { path: PathBuf, found: i64, known: i64 },
    #[error("store uses the {found} id scheme, not {requested} (chosen when the store was created)")]
    SchemeMismatch { found: String, requested: String },
    #[error("database {path}: unknown id scheme {value:?}")]
    BadScheme { path: PathBuf, value: String },
}

impl DbError {
    /// SQLite could not write because the filesystem is full (SQLITE_FULL).
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            DbError::Sqlite {
                source: rusqlite::Error::SqliteFailure(e, _),
                ..
            } if e.code == rusqlite::ErrorCode::DiskFull
        )
    }
}

/// One committed item. Ids are parsed once, here: a row whose id or parent is not a step id
/// (a database edited by hand) is never returned as a `BuildRow`; [`Db::invalid_rows`] lists
/// those for `verify`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BuildRow {
    pub id: StepId,
    pub parent: Option<StepId>,
    pub created: i64,
    pub used: i64,
    pub size: u64,
    pub duration_ms: u64,
    pub op: String,
    pub base_digest: Option<String>,
    /// Number of items whose parent this is.
    pub children: u64,
}

/// A child row of an item: most have a step id; one edited by hand may not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Child {
    Valid(StepId),
    Invalid(String),
}

/// What to record when an item is committed.
#[derive(Debug, Clone)]
pub struct NewBuild<'a> {
    pub id: &'a StepId,
    pub parent: Option<&'a StepId>,
    pub size: u64,
    pub duration_ms: u64,
    pub op: &'a str,
    pub base_digest: Option<&'a str>,
}

/// Makes `dir` a private directory and `path` in it a private file (created empty if missing,
/// as SQLite expects of a new database; an older strata's 0644 file is tightened).
fn private_file(dir: &Path, path: &Path) -> Result<(), String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    strata_stores::layout::private_dir(dir).map_err(|e| e.to_string())?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(strata_stores::layout::PRIVATE_FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let mode = file.metadata().map_err(|e| e.to_string())?.permissions().mode() & 0o7777;
    if mode != strata_stores::layout::PRIVATE_FILE_MODE {
        file.set_permissions(std::fs::Permissions::from_mode(
            strata_stores::layout::PRIVATE_FILE_MODE,
        ))
        .map_err(|e| format!("making {} private: {e}", path.display()))?;
    }
    Ok(())
}

pub struct Db {
    conn: Connection,
    path: PathBuf,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Db {
    /// Opens (creating and migrating) `<state_dir>/db/db.sqlite`.
    pub fn open(state_dir: &Path) -> Result<Db, DbError> {
        let dir = state_dir.join("db");
        let path = dir.join("db.sqlite");
        let sqlite = |source| DbError::Sqlite {
            path: path.clone(),
            source,
        };
        // Private: 0700 directory, 0600 file (SQLite gives its journal the database's mode).
        if let Err(e) = private_file(&dir, &path) {
            return Err(sqlite(rusqlite::Error::InvalidPath(PathBuf::from(format!(
                "{}: {e}",
                dir.display()
            )))));
        }
        let conn = Connection::open(&path).map_err(sqlite)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite)?;
        // Switching an old WAL database fails while another process has it open: then it
        // stays in WAL until a later open finds it alone.
        if let Err(e) = conn.pragma_update(None, "journal_mode", "TRUNCATE") {
            tracing::debug!("{}: journal mode left as it is: {e}", path.display());
        }
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(sqlite)?;
        let mut db = Db { conn, path };
        db.migrate()?;
        Ok(db)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> DbError {
        DbError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn migrate(&mut self) -> Result<(), DbError> {
        let known = MIGRATIONS.len() as i64;
        // An immediate transaction serialises concurrent first opens of a new store.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| DbError::Sqlite {
                path: self.path.clone(),
                source: e,
            })?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| DbError::Sqlite {
                path: self.path.clone(),
                source: e,
            })?;
        if version > known {
            return Err(DbError::TooNew {
                path: self.path.clone(),
                found: version,
                known,
            });
        }
        for sql in &MIGRATIONS[version as usize..] {
            tx.execute_batch(sql).map_err(|e| DbError::Sqlite {
                path: self.path.clone(),
                source: e,
            })?;
        }
        tx.pragma_update(None, "user_version", known)
            .map_err(|e| DbError::Sqlite {
                path: self.path.clone(),
                source: e,
            })?;
        tx.commit().map_err(|e| DbError::Sqlite {
            path: self.path.clone(),
            source: e,
        })
    }

    /// The store's id scheme: recorded on first use (`requested`, or v1), checked afterwards.
    pub fn id_scheme(&self, requested: Option<IdScheme>) -> Result<IdScheme, DbError> {
        let found: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'id_scheme'", [], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))?;
        match found {
            Some(value) => {
                let scheme: IdScheme = value.parse().map_err(|_| DbError::BadScheme {
                    path: self.path.clone(),
                    value: value.clone(),
                })?;
                if let Some(req) = requested {
                    if req != scheme {
                        return Err(DbError::SchemeMismatch {
                            found: scheme.to_string(),
                            requested: req.to_string(),
                        });
                    }
                }
                Ok(scheme)
            }
            None => {
                let scheme = requested.unwrap_or_default();
                self.conn
                    .execute(
                        "INSERT OR IGNORE INTO meta (key, value) VALUES ('id_scheme', ?1)",
                        params![scheme.to_string()],
                    )
                    .map_err(|e| self.err(e))?;
                // Another process may have won the race: read back what is recorded.
                self.id_scheme(requested)
            }
        }
    }

    /// Records a committed item (replacing a stale row of the same id).
    pub fn insert_build(&self, b: &NewBuild<'_>) -> Result<(), DbError> {
        let now = now_ms();
        self.conn
            .execute(
                "INSERT INTO builds (id, parent, created, used, size, duration_ms, op, base_digest)
                 VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(id) DO UPDATE SET parent = excluded.parent, used = excluded.used,
                   size = excluded.size, duration_ms = excluded.duration_ms, op = excluded.op,
                   base_digest = excluded.base_digest",
                params![
                    b.id.as_str(),
                    b.parent.map(|p| p.as_str()),
                    now,
                    b.size as i64,
                    b.duration_ms as i64,
                    b.op,
                    b.base_digest
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Marks an item as used now.
    pub fn touch(&self, id: &StepId) -> Result<(), DbError> {
        self.conn
            .execute(
                "UPDATE builds SET used = MAX(used, ?2) WHERE id = ?1",
                params![id.as_str(), now_ms()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn exists(&self, id: &StepId) -> Result<bool, DbError> {
        self.conn
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM builds WHERE id = ?1)",
                [id.as_str()],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    fn step_id(r: &rusqlite::Row<'_>, column: usize) -> rusqlite::Result<StepId> {
        let text: String = r.get(column)?;
        text.parse()
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(e)))
    }

    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BuildRow> {
        let parent: Option<String> = r.get(1)?;
        Ok(BuildRow {
            id: Self::step_id(r, 0)?,
            parent: match parent {
                Some(_) => Some(Self::step_id(r, 1)?),
                None => None,
            },
            created: r.get(2)?,
            used: r.get(3)?,
            size: r.get::<_, i64>(4)? as u64,
            duration_ms: r.get::<_, i64>(5)? as u64,
            op: r.get(6)?,
            base_digest: r.get(7)?,
            children: r.get::<_, i64>(8)? as u64,
        })
    }

    /// SQL for "this column holds a step id" (64 lowercase hex digits, as [`StepId`]).
    const VALID_ID: &'static str = "length({c}) = 64 AND {c} NOT GLOB '*[^0-9a-f]*'";

    fn valid(column: &str) -> String {
        Self::VALID_ID.replace("{c}", column)
    }

    /// The rows a query may return: valid id, and a valid parent or none.
    fn select(condition: &str) -> String {
        format!(
            "SELECT b.id, b.parent, b.created, b.used, b.size, b.duration_ms, b.op, b.base_digest,
               (SELECT COUNT(*) FROM builds c WHERE c.parent = b.id) FROM builds b
             WHERE {} AND (b.parent IS NULL OR {}) AND ({condition})",
            Self::valid("b.id"),
            Self::valid("b.parent")
        )
    }

    pub fn get(&self, id: &StepId) -> Result<Option<BuildRow>, DbError> {
        let sql = Self::select("b.id = ?1");
        self.conn
            .query_row(&sql, [id.as_str()], Self::row)
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Every item, least recently used first.
    pub fn list(&self) -> Result<Vec<BuildRow>, DbError> {
        let sql = format!("{} ORDER BY b.used ASC, b.id ASC", Self::select("1"));
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], Self::row)
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// The ids recorded with `id` as their parent (every such row: one with an invalid own
    /// id is returned as [`Child::Invalid`], so that deleting a tree removes it too).
    pub fn children(&self, id: &StepId) -> Result<Vec<Child>, DbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM builds WHERE parent = ?1 ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([id.as_str()], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows
            .into_iter()
            .map(|text| match text.parse() {
                Ok(id) => Child::Valid(id),
                Err(_) => Child::Invalid(text),
            })
            .collect())
    }

    /// Rows whose id, or parent, is not a step id (a database edited by hand): their raw ids.
    pub fn invalid_rows(&self) -> Result<Vec<String>, DbError> {
        let sql = format!(
            "SELECT id FROM builds b WHERE NOT ({}) OR (b.parent IS NOT NULL AND NOT ({})) ORDER BY id",
            Self::valid("b.id"),
            Self::valid("b.parent")
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| r.get(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Inserts a row whatever its id says (as a hand edit would), for tests.
    #[cfg(test)]
    pub(crate) fn insert_raw_for_tests(&self, id: &str, parent: Option<&str>) -> Result<(), DbError> {
        self.conn
            .execute(
                "INSERT INTO builds (id, parent, created, used) VALUES (?1, ?2, 0, 0)",
                params![id, parent],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Deletes a row by its raw id: for [`Db::invalid_rows`] only.
    pub fn delete_invalid(&self, raw_id: &str) -> Result<(), DbError> {
        self.conn
            .execute("DELETE FROM builds WHERE id = ?1", [raw_id])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Leaves (items without children) last used before `before_ms`, oldest first.
    pub fn lru_leaves(&self, before_ms: i64, limit: usize) -> Result<Vec<BuildRow>, DbError> {
        let sql = format!(
            "{} ORDER BY b.used ASC, b.id ASC LIMIT ?2",
            Self::select("b.used < ?1 AND NOT EXISTS (SELECT 1 FROM builds c WHERE c.parent = b.id)")
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![before_ms, limit as i64], Self::row)
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    pub fn delete(&self, id: &StepId) -> Result<(), DbError> {
        self.conn
            .execute("DELETE FROM builds WHERE id = ?1", [id.as_str()])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Deletes the rows of `ids` in one transaction: one set of journal syncs for the lot.
    pub fn delete_many(&self, ids: &[&StepId]) -> Result<(), DbError> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        {
            let mut stmt = tx
                .prepare_cached("DELETE FROM builds WHERE id = ?1")
                .map_err(|e| self.err(e))?;
            for id in ids {
                stmt.execute([id.as_str()]).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    pub fn count(&self) -> Result<u64, DbError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM builds", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    /// Rows whose parent has no row (a store damaged outside strata).
    pub fn orphans(&self) -> Result<Vec<StepId>, DbError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT b.id FROM builds b WHERE b.parent IS NOT NULL
                 AND NOT EXISTS (SELECT 1 FROM builds p WHERE p.id = b.parent)
                 AND length(b.id) = 64 AND b.id NOT GLOB '*[^0-9a-f]*' ORDER BY b.id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Self::step_id(r, 0))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<StepId>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Checks SQLite's own consistency (`PRAGMA quick_check`).
    pub fn quick_check(&self) -> Result<Vec<String>, DbError> {
        let mut stmt = self.conn.prepare("PRAGMA quick_check").map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows.into_iter().filter(|r| r != "ok").collect())
    }

    pub fn touch_cache(&self, name: &str) -> Result<(), DbError> {
        let now = now_ms();
        self.conn
            .execute(
                "INSERT INTO caches (name, created, used) VALUES (?1, ?2, ?2)
                 ON CONFLICT(name) DO UPDATE SET used = excluded.used",
                params![name, now],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn delete_cache(&self, name: &str) -> Result<(), DbError> {
        self.conn
            .execute("DELETE FROM caches WHERE name = ?1", [name])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Caches with their last use, oldest first.
    pub fn caches(&self) -> Result<Vec<(String, i64, i64)>, DbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, created, used FROM caches ORDER BY used ASC")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> StepId {
        StepId::from_digest(&[n; 32])
    }

    fn add(db: &Db, n: u8, parent: Option<u8>) {
        let parent = parent.map(id);
        db.insert_build(&NewBuild {
            id: &id(n),
            parent: parent.as_ref(),
            size: 10,
            duration_ms: 1,
            op: "(run (shell x))",
            base_digest: None,
        })
        .unwrap();
    }

    #[test]
    fn leaves_first_and_children_derived() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        add(&db, 1, None);
        add(&db, 2, Some(1));
        add(&db, 3, Some(2));
        let far_future = now_ms() + 60_000;
        let leaves: Vec<_> = db
            .lru_leaves(far_future, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(leaves, vec![id(3)]);
        assert_eq!(db.get(&id(1)).unwrap().unwrap().children, 1);
        db.delete(&id(3)).unwrap();
        let leaves: Vec<_> = db
            .lru_leaves(far_future, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(leaves, vec![id(2)]);
        assert!(
            db.lru_leaves(0, 10).unwrap().is_empty(),
            "nothing used before the epoch"
        );
        assert_eq!(db.count().unwrap(), 2);
    }

    #[test]
    fn rows_with_invalid_ids_are_listed_apart() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        add(&db, 1, None);
        add(&db, 2, Some(1));
        db.conn
            .execute_batch(&format!(
                "INSERT INTO builds (id, parent, created, used) VALUES ('../x', NULL, 0, 0);
                 INSERT INTO builds (id, parent, created, used) VALUES ('{}', 'BAD', 0, 0);
                 INSERT INTO builds (id, parent, created, used) VALUES ('short', '{}', 0, 0);",
                id(3),
                id(2)
            ))
            .unwrap();
        let listed: Vec<StepId> = db.list().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(listed.len(), 2, "only the valid rows: {listed:?}");
        let mut invalid = db.invalid_rows().unwrap();
        invalid.sort();
        assert_eq!(invalid, vec!["../x".to_owned(), id(3).to_string(), "short".to_owned()]);
        assert_eq!(db.children(&id(2)).unwrap(), vec![Child::Invalid("short".into())]);
        db.delete_invalid("short").unwrap();
        assert!(db.children(&id(2)).unwrap().is_empty());
    }

    #[test]
    fn database_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        drop(Db::open(dir.path()).unwrap());
        let file = dir.path().join("db/db.sqlite");
        assert_eq!((mode(&dir.path().join("db")), mode(&file)), (0o700, 0o600));
        // An older strata's database is tightened on open, and keeps its rows.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(dir.path().join("db"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let db = Db::open(dir.path()).unwrap();
        add(&db, 1, None);
        assert_eq!((mode(&dir.path().join("db")), mode(&file)), (0o700, 0o600));
    }

    #[test]
    fn scheme_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(db.id_scheme(Some(IdScheme::Obuilder)).unwrap(), IdScheme::Obuilder);
        assert_eq!(db.id_scheme(None).unwrap(), IdScheme::Obuilder);
        assert!(matches!(
            db.id_scheme(Some(IdScheme::V1)),
            Err(DbError::SchemeMismatch { .. })
        ));
        drop(db);
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(db.id_scheme(None).unwrap(), IdScheme::Obuilder);
    }

    #[test]
    fn reopen_keeps_rows_and_orphans_found() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open(dir.path()).unwrap();
            add(&db, 1, None);
            add(&db, 2, Some(9));
        }
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(db.count().unwrap(), 2);
        assert_eq!(db.orphans().unwrap(), vec![id(2)]);
        assert!(db.quick_check().unwrap().is_empty());
    }
}
