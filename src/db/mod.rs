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
//!
//! An OBuilder store's database (OBuilder's one `builds` table: id, created, used, rc,
//! parent; no `user_version`, no `meta`) is adopted on first open: backed up to
//! `db.sqlite.obuilder-backup` (a private, consistent copy, made before anything changes),
//! then migrated in place in one transaction (ids, parents and times kept; sizes 0, ops
//! unknown; the id scheme recorded as `obuilder`). See [`Db::open_with`].

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
    /// An OBuilder database opened with `--id-scheme v1`: its items have OBuilder ids.
    #[error(
        "database {path} is OBuilder's: its items have OBuilder ids, so strata can only adopt this \
         store with --id-scheme obuilder (or with no --id-scheme, which records obuilder); \
         nothing was changed"
    )]
    ObuilderNeedsScheme { path: PathBuf },
    /// A database strata cannot adopt (unknown schema, items missing from the store).
    #[error("database {path}: {reason}; nothing was changed")]
    Unadoptable { path: PathBuf, reason: String },
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

/// What opening did to an OBuilder store's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adoption {
    /// OBuilder's database as it was (a private copy).
    pub backup: PathBuf,
    /// Rows migrated.
    pub rows: u64,
}

/// The columns of OBuilder's `builds` table (`lib/dao.ml`), in its order.
const OBUILDER_COLUMNS: [&str; 5] = ["id", "created", "used", "rc", "parent"];

/// The name of the backup of an adopted OBuilder database, beside it.
pub const OBUILDER_BACKUP: &str = "db.sqlite.obuilder-backup";

/// What a database that is not (yet) strata's holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Foreign {
    /// OBuilder's schema, exactly.
    Obuilder,
    /// Something else: why it cannot be adopted and what to do.
    Unknown(String),
}

/// OBuilder's `DATETIME` text (`YYYY-MM-DD HH:MM:SS`, UTC) in ms since the epoch, in SQL
/// (a number is taken as seconds; what does not parse becomes `?1`, now).
fn obuilder_time_ms(column: &str) -> String {
    format!(
        "COALESCE(CASE WHEN typeof({column}) IN ('integer', 'real') THEN CAST({column} * 1000 AS INTEGER)
                  ELSE CAST(strftime('%s', {column}) AS INTEGER) * 1000 END, ?1)"
    )
}

#[cfg(test)]
thread_local! {
    /// Makes the next adoption on this thread fail after copying the rows, before commit
    /// (a crash mid-migration, for tests).
    static FAIL_MID_ADOPTION: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Db {
    /// Opens (creating and migrating) `<state_dir>/db/db.sqlite`; an OBuilder database is
    /// adopted as [`Db::open_with`] does, with no scheme requested and no check of its items.
    pub fn open(state_dir: &Path) -> Result<Db, DbError> {
        Self::open_with(state_dir, None, &|_: &[String]| Ok(())).map(|(db, _)| db)
    }

    /// Opens (creating and migrating) `<state_dir>/db/db.sqlite`. An OBuilder database is
    /// adopted: refused with [`DbError::ObuilderNeedsScheme`] when `requested` is v1, and
    /// with [`DbError::Unadoptable`] when `check_items` (given the ids of its rows) says the
    /// store does not hold them; else backed up, then migrated in one transaction, with the
    /// id scheme `obuilder` recorded. A crash at any point leaves OBuilder's database as it
    /// was (and the backup). Returns what the adoption did, if there was one.
    pub fn open_with(
        state_dir: &Path,
        requested: Option<IdScheme>,
        check_items: &dyn Fn(&[String]) -> Result<(), String>,
    ) -> Result<(Db, Option<Adoption>), DbError> {
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
        let mut db = Db { conn, path };
        // Before anything else touches the file (even the journal mode): OBuilder's?
        let adoption = db.adopt_foreign(requested, check_items)?;
        // Switching an old WAL database fails while another process has it open: then it
        // stays in WAL until a later open finds it alone.
        if let Err(e) = db.conn.pragma_update(None, "journal_mode", "TRUNCATE") {
            tracing::debug!("{}: journal mode left as it is: {e}", db.path.display());
        }
        db.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| db.err(e))?;
        db.migrate()?;
        Ok((db, adoption))
    }

    /// Whether the database is someone else's: `None` for strata's (or an empty one).
    fn foreign(conn: &Connection) -> rusqlite::Result<Option<Foreign>> {
        let mut stmt = conn.prepare(
            "SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name",
        )?;
        let objects = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let tables: Vec<&str> = objects
            .iter()
            .filter(|(kind, _, _)| kind == "table")
            .map(|(_, name, _)| name.as_str())
            .collect();
        if tables.is_empty() || tables.contains(&"meta") {
            return Ok(None);
        }
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let listed = tables.join(", ");
        const WHAT_TO_DO: &str = "strata adopts only its own databases and OBuilder's (one `builds` table \
             of id, created, used, rc, parent); point --store at another store, or move the file \
             aside to start the store's database afresh";
        if !tables.contains(&"builds") || version != 0 {
            return Ok(Some(Foreign::Unknown(format!(
                "neither strata's nor OBuilder's (tables {listed}, schema version {version}); {WHAT_TO_DO}"
            ))));
        }
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('builds')")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let extra: Vec<&str> = columns
            .iter()
            .map(String::as_str)
            .filter(|c| !OBUILDER_COLUMNS.contains(c))
            .collect();
        let missing: Vec<&str> = OBUILDER_COLUMNS
            .iter()
            .copied()
            .filter(|c| !columns.iter().any(|have| have == c))
            .collect();
        let other_tables: Vec<&str> = tables.iter().copied().filter(|t| *t != "builds").collect();
        if !missing.is_empty() {
            return Ok(Some(Foreign::Unknown(format!(
                "its `builds` table lacks OBuilder's columns {} (it has {}): not an OBuilder database \
                 strata knows; {WHAT_TO_DO}",
                missing.join(", "),
                columns.join(", ")
            ))));
        }
        if !extra.is_empty() || !other_tables.is_empty() {
            let mut unknown: Vec<String> = extra.iter().map(|c| format!("column builds.{c}")).collect();
            unknown.extend(other_tables.iter().map(|t| format!("table {t}")));
            return Ok(Some(Foreign::Unknown(format!(
                "an OBuilder database with {} strata does not know (a newer OBuilder?): strata \
                 adopts OBuilder's schema of id, created, used, rc, parent only and will not \
                 guess what the rest means; use a fresh store for strata (a new --store path), \
                 or keep this one for OBuilder",
                unknown.join(", ")
            ))));
        }
        Ok(Some(Foreign::Obuilder))
    }

    /// Adopts an OBuilder database (see [`Db::open_with`]); `None` when the database is
    /// strata's already.
    fn adopt_foreign(
        &mut self,
        requested: Option<IdScheme>,
        check_items: &dyn Fn(&[String]) -> Result<(), String>,
    ) -> Result<Option<Adoption>, DbError> {
        let unadoptable = |reason: String| DbError::Unadoptable {
            path: self.path.clone(),
            reason,
        };
        match Self::foreign(&self.conn).map_err(|e| self.err(e))? {
            None => return Ok(None),
            Some(Foreign::Unknown(reason)) => return Err(unadoptable(reason)),
            Some(Foreign::Obuilder) => {}
        }
        if requested == Some(IdScheme::V1) {
            return Err(DbError::ObuilderNeedsScheme {
                path: self.path.clone(),
            });
        }
        let ids: Vec<String> = self
            .conn
            .prepare("SELECT id FROM builds ORDER BY id")
            .and_then(|mut stmt| stmt.query_map([], |r| r.get(0))?.collect())
            .map_err(|e| self.err(e))?;
        check_items(&ids).map_err(unadoptable)?;
        let backup = self.backup()?;
        // OBuilder declares `parent REFERENCES builds(id)`, and this SQLite enforces foreign
        // keys: dropping its table would check every parent (and fail on rc drift). strata's
        // schema has none; the setting is put back after (it is a no-op in a transaction).
        let enforced: bool = self
            .conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        self.conn
            .pragma_update(None, "foreign_keys", false)
            .map_err(|e| self.err(e))?;
        let migrated = self.migrate_obuilder(&backup);
        if let Err(e) = self.conn.pragma_update(None, "foreign_keys", enforced) {
            tracing::debug!("{}: foreign keys left off: {e}", self.path.display());
        }
        match migrated {
            Ok(Some(rows)) => Ok(Some(Adoption { backup, rows })),
            // Another process adopted it meanwhile: this copy is not needed.
            Ok(None) => {
                let _ = std::fs::remove_file(&backup);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// A consistent, private copy of the database (WAL content included) in a new file
    /// beside it: `db.sqlite.obuilder-backup`, or `.1`, `.2`... when that exists (an earlier
    /// backup is never overwritten). Synced before it is returned.
    fn backup(&self) -> Result<PathBuf, DbError> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let io_err = |path: &Path, what: &str, e: std::io::Error| DbError::Unadoptable {
            path: self.path.clone(),
            reason: format!("cannot back it up to {}: {what}: {e}", path.display()),
        };
        let mut n = 0u32;
        let (backup, file) = loop {
            let name = if n == 0 {
                OBUILDER_BACKUP.to_owned()
            } else {
                format!("{OBUILDER_BACKUP}.{n}")
            };
            let candidate = dir.join(name);
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(strata_stores::layout::PRIVATE_FILE_MODE)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&candidate)
            {
                Ok(file) => break (candidate, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(io_err(&candidate, "creating it", e)),
            }
        };
        // VACUUM INTO writes into an existing file only when it is empty, as this one is.
        let target = backup.to_str().ok_or_else(|| DbError::Unadoptable {
            path: self.path.clone(),
            reason: format!("the backup path {} is not UTF-8", backup.display()),
        })?;
        if let Err(e) = self.conn.execute("VACUUM INTO ?1", [target]) {
            let _ = std::fs::remove_file(&backup);
            return Err(DbError::Unadoptable {
                path: self.path.clone(),
                reason: format!("cannot back it up to {}: {e}", backup.display()),
            });
        }
        // SQLite does not sync what VACUUM INTO wrote.
        file.sync_all().map_err(|e| io_err(&backup, "syncing it", e))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(dir, "syncing its directory", e))?;
        Ok(backup)
    }

    /// Migrates OBuilder's `builds` into strata's schema (version 1) in one transaction,
    /// recording the scheme and the backup. `None` when the database turned out to be
    /// strata's already (another process adopted it first).
    fn migrate_obuilder(&mut self, backup: &Path) -> Result<Option<u64>, DbError> {
        let path = self.path.clone();
        let err = |source| DbError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        if Self::foreign(&tx).map_err(err)? != Some(Foreign::Obuilder) {
            return Ok(None);
        }
        tx.execute_batch("ALTER TABLE builds RENAME TO obuilder_builds; DROP INDEX IF EXISTS lru;")
            .map_err(err)?;
        tx.execute_batch(MIGRATIONS[0]).map_err(err)?;
        let rows = tx
            .execute(
                &format!(
                    "INSERT INTO builds (id, parent, created, used, size, duration_ms, op, base_digest)
                     SELECT id, parent, {}, {}, 0, 0, '', NULL FROM obuilder_builds WHERE id IS NOT NULL",
                    obuilder_time_ms("created"),
                    obuilder_time_ms("used")
                ),
                [now_ms()],
            )
            .map_err(err)?;
        #[cfg(test)]
        if FAIL_MID_ADOPTION.with(|f| f.replace(false)) {
            return Err(err(rusqlite::Error::InvalidQuery));
        }
        tx.execute_batch("DROP TABLE obuilder_builds").map_err(err)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('id_scheme', ?1), ('adopted_from', 'obuilder'),
               ('adopted_at', ?2), ('obuilder_backup', ?3)",
            params![
                IdScheme::Obuilder.to_string(),
                now_ms().to_string(),
                backup.display().to_string()
            ],
        )
        .map_err(err)?;
        tx.pragma_update(None, "user_version", 1).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Some(rows as u64))
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

    /// A database as OBuilder's `lib/dao.ml` makes it (WAL, its one table and index), with
    /// a base, a child and a grandchild.
    fn obuilder_db(state: &Path) -> PathBuf {
        let dir = state.join("db");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("db.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE builds (
               id       TEXT PRIMARY KEY,
               created  DATETIME NOT NULL,
               used     DATETIME NOT NULL,
               rc       INTEGER NOT NULL,
               parent   TEXT,
               FOREIGN KEY (parent) REFERENCES builds (id) ON DELETE RESTRICT
             );
             CREATE INDEX IF NOT EXISTS lru ON builds (rc, used);
             INSERT INTO builds VALUES ('{a}', '2024-03-01 10:00:00', '2024-03-02 11:30:15', 1, NULL);
             INSERT INTO builds VALUES ('{b}', '2024-03-01 10:00:05', '2024-03-01 10:00:05', 1, '{a}');
             INSERT INTO builds VALUES ('{c}', '2024-03-01 10:00:09', '2024-03-03 00:00:00', 0, '{b}');",
            a = id(1),
            b = id(2),
            c = id(3)
        ))
        .unwrap();
        path
    }

    fn no_check(_: &[String]) -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn obuilder_database_is_adopted_with_its_rows() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        obuilder_db(dir.path());
        let (db, adoption) = Db::open_with(dir.path(), None, &no_check).unwrap();
        let adoption = adoption.expect("adopted");
        assert_eq!(adoption.rows, 3);
        assert_eq!(adoption.backup, dir.path().join("db").join(OBUILDER_BACKUP));
        let mode = std::fs::metadata(&adoption.backup).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the backup is private");
        // The backup is OBuilder's database as it was, WAL content included.
        let old = Connection::open(&adoption.backup).unwrap();
        let n: i64 = old.query_row("SELECT COUNT(*) FROM builds", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 3);
        let rc: i64 = old
            .query_row("SELECT rc FROM builds WHERE id = ?1", [id(1).as_str()], |r| r.get(0))
            .unwrap();
        assert_eq!(rc, 1);
        // Ids, parents and times kept; the scheme is OBuilder's.
        let rows = db.list().unwrap();
        assert_eq!(rows.len(), 3);
        let base = db.get(&id(1)).unwrap().unwrap();
        assert_eq!((base.parent.clone(), base.children), (None, 1));
        assert_eq!(base.created, 1_709_287_200_000, "2024-03-01 10:00:00 UTC");
        assert_eq!(base.used, 1_709_379_015_000, "2024-03-02 11:30:15 UTC");
        assert_eq!((base.size, base.op.as_str()), (0, ""));
        assert_eq!(db.get(&id(3)).unwrap().unwrap().parent, Some(id(2)));
        assert_eq!(db.id_scheme(None).unwrap(), IdScheme::Obuilder);
        assert!(db.quick_check().unwrap().is_empty());
        // It works as any strata database.
        add(&db, 4, Some(3));
        assert_eq!(db.lru_leaves(now_ms() + 60_000, 10).unwrap()[0].id, id(4));
        drop(db);
        // A second open is a no-op: no new backup, same rows.
        let (db, again) = Db::open_with(dir.path(), Some(IdScheme::Obuilder), &no_check).unwrap();
        assert_eq!(again, None);
        assert_eq!(db.count().unwrap(), 4);
        assert!(!dir.path().join("db").join(format!("{OBUILDER_BACKUP}.1")).exists());
    }

    #[test]
    fn obuilder_database_under_v1_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = obuilder_db(dir.path());
        let err = Db::open_with(dir.path(), Some(IdScheme::V1), &no_check).err().unwrap();
        assert!(matches!(err, DbError::ObuilderNeedsScheme { .. }), "{err}");
        assert!(err.to_string().contains("--id-scheme obuilder"), "{err}");
        assert!(!dir.path().join("db").join(OBUILDER_BACKUP).exists());
        let conn = Connection::open(&path).unwrap();
        let rc: i64 = conn.query_row("SELECT SUM(rc) FROM builds", [], |r| r.get(0)).unwrap();
        assert_eq!(rc, 2, "still OBuilder's table");
    }

    #[test]
    fn obuilder_database_refused_when_the_store_lacks_its_items() {
        let dir = tempfile::tempdir().unwrap();
        obuilder_db(dir.path());
        let check = |ids: &[String]| -> Result<(), String> {
            assert_eq!(ids.len(), 3);
            Err("none of them is in the store".to_owned())
        };
        let err = Db::open_with(dir.path(), None, &check).err().unwrap();
        assert!(matches!(err, DbError::Unadoptable { .. }), "{err}");
        assert!(
            err.to_string()
                .ends_with("none of them is in the store; nothing was changed"),
            "{err}"
        );
        assert!(!dir.path().join("db").join(OBUILDER_BACKUP).exists());
    }

    #[test]
    fn unknown_schemas_are_refused_with_what_to_do() {
        for (schema, says) in [
            (
                "CREATE TABLE builds (id TEXT PRIMARY KEY, created DATETIME, used DATETIME, rc INTEGER, \
                 parent TEXT, platform TEXT)",
                "column builds.platform",
            ),
            (
                "CREATE TABLE builds (id TEXT PRIMARY KEY, created DATETIME, used DATETIME, rc INTEGER, \
                 parent TEXT); CREATE TABLE tags (name TEXT)",
                "table tags",
            ),
            (
                "CREATE TABLE builds (id TEXT PRIMARY KEY, when_made TEXT)",
                "lacks OBuilder's columns",
            ),
            ("CREATE TABLE things (x)", "neither strata's nor OBuilder's"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("db")).unwrap();
            Connection::open(dir.path().join("db/db.sqlite"))
                .unwrap()
                .execute_batch(schema)
                .unwrap();
            let err = Db::open(dir.path()).err().expect(schema);
            let text = err.to_string();
            assert!(matches!(err, DbError::Unadoptable { .. }), "{text}");
            assert!(text.contains(says) && text.contains("nothing was changed"), "{text}");
            assert!(!dir.path().join("db").join(OBUILDER_BACKUP).exists(), "{schema}");
        }
    }

    #[test]
    fn adoption_cut_short_leaves_obuilder_database_usable() {
        let dir = tempfile::tempdir().unwrap();
        let path = obuilder_db(dir.path());
        FAIL_MID_ADOPTION.with(|f| f.set(true));
        assert!(Db::open_with(dir.path(), None, &no_check).is_err());
        // The backup was made first; the database is OBuilder's, whole.
        assert!(dir.path().join("db").join(OBUILDER_BACKUP).exists());
        let conn = Connection::open(&path).unwrap();
        let cols: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('builds')")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(cols, OBUILDER_COLUMNS);
        let n: i64 = conn.query_row("SELECT COUNT(*) FROM builds", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 3);
        drop(conn);
        // The next open adopts it, beside the first backup.
        let (db, adoption) = Db::open_with(dir.path(), None, &no_check).unwrap();
        assert_eq!(
            adoption.unwrap().backup,
            dir.path().join("db").join(format!("{OBUILDER_BACKUP}.1"))
        );
        assert_eq!(db.count().unwrap(), 3);
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
