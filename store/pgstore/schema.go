package pgstore

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
)

// schemaSQL creates the table and its index. %[1]s is the table, %[2]s the
// index's name.
//
// A row is a claim (token set, record null, expires_at the end of the
// lease) or a completed record (token null, record set, expires_at its
// expiry or null for never). waiting marks a claim that a duplicate waits
// for: ending it notifies. A row whose expires_at has passed counts as
// absent, whether or not the sweep has deleted it yet.
const schemaSQL = `CREATE TABLE IF NOT EXISTS %[1]s (
	key        text COLLATE "C" PRIMARY KEY,
	token      text,
	record     bytea,
	expires_at timestamptz,
	waiting    boolean NOT NULL DEFAULT false,
	CHECK ((token IS NULL) <> (record IS NULL)),
	CHECK (token IS NULL OR expires_at IS NOT NULL)
);
CREATE INDEX IF NOT EXISTS %[2]s ON %[1]s (expires_at) WHERE expires_at IS NOT NULL;
`

// Schema returns the SQL that creates the store's table (by default
// "idempotency"; see [WithTable]) and its index, for teams that run their
// own migrations. Running it again changes nothing. Only the options that
// name the table matter here.
func Schema(opts ...Option) string {
	cfg := newConfig(opts)
	index := cfg.table + "_expires_at"
	if i := strings.IndexByte(cfg.table, '.'); i >= 0 {
		// An index lives in its table's schema; its name takes none.
		index = cfg.table[i+1:] + "_expires_at"
	}
	return fmt.Sprintf(schemaSQL, cfg.table, index)
}

// Migrate creates the store's table and its index if they do not exist
// (see [Schema]), in one transaction that holds an advisory lock on the
// table's name, so that several instances starting at once can all call it.
// Only the options that name the table matter here.
func Migrate(ctx context.Context, pool *pgxpool.Pool, opts ...Option) error {
	cfg := newConfig(opts)
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("pgstore: migrate: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	// CREATE ... IF NOT EXISTS alone races: two sessions can both find the
	// table missing, and one fails on the catalog's unique index.
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtextextended('pgstore:' || $1, 0))", cfg.table); err != nil {
		return fmt.Errorf("pgstore: migrate: %w", err)
	}
	if _, err := tx.Exec(ctx, Schema(opts...)); err != nil {
		return fmt.Errorf("pgstore: migrate: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("pgstore: migrate: %w", err)
	}
	return nil
}
