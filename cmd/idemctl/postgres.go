package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkey/idempotency/store/pgstore"
)

// openPostgres opens the PostgreSQL store at url (postgres://... or a
// key=value connection string), in table.
func openPostgres(ctx context.Context, url, table string, stderr io.Writer) (*backend, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, usagef("-postgres: %v", err)
	}
	tableOpt, err := tableOption(table)
	if err != nil {
		return nil, err
	}
	// One command is a statement or two: one connection is enough.
	cfg.MaxConns = 1
	name := fmt.Sprintf("PostgreSQL at %s:%d, database %q, table %q", cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, table)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// No background sweep: an admin command reads and deletes only what it
	// is asked to.
	store := pgstore.New(pool, tableOpt, pgstore.WithLogger(logger), pgstore.WithSweepInterval(0))
	return &backend{
		store: store,
		name:  name,
		close: func() {
			_ = store.Close()
			pool.Close()
		},
	}, nil
}

// tableOption returns the option that names table, or a usage error if
// pgstore.WithTable refuses the name.
func tableOption(table string) (opt pgstore.Option, err error) {
	defer func() {
		if r := recover(); r != nil {
			opt, err = nil, usagef("-table: %v", r)
		}
	}()
	return pgstore.WithTable(table), nil
}
