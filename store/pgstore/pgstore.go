package pgstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkey/idempotency"
)

// The statements, with the table's name in place of TABLE. Every time is
// the database's clock_timestamp(): the moment the statement reads it, not
// the start of its transaction (now()), which matters for the record that
// is written at the end of a handler's long transaction. Durations travel
// as whole microseconds; NULL for an expiry means never.
const (
	// claimSQL claims a key that holds nothing live, or that holds the
	// same token's live claim, and otherwise reads what it holds. It reads
	// first: when the statement's snapshot shows a live record or another
	// token's live claim, it answers from there and writes nothing, so a
	// replay or a duplicate costs no write, no lock and no commit to disk.
	// Otherwise the INSERT ... ON CONFLICT decides. Its answer can miss a
	// row that another claim committed after the snapshot was taken (the
	// INSERT sees it, the read does not); it then returns no row, or an
	// expired one, and the caller sends it again.
	claimSQL = `WITH current AS (
	SELECT token, record, expires_at FROM TABLE
	WHERE key = $1 AND (expires_at IS NULL OR expires_at > clock_timestamp())
), claimed AS (
	INSERT INTO TABLE AS r (key, token, expires_at)
	SELECT $1, $2, clock_timestamp() + $3::bigint * interval '1 microsecond'
	WHERE NOT EXISTS (SELECT FROM current WHERE token IS DISTINCT FROM $2)
	ON CONFLICT (key) DO UPDATE
	SET token = excluded.token, record = NULL, expires_at = excluded.expires_at, waiting = false
	WHERE r.expires_at <= clock_timestamp() OR r.token = excluded.token
	RETURNING 1
)
SELECT true, NULL::bytea, NULL::bigint FROM claimed
UNION ALL
SELECT false, record, (extract(epoch FROM expires_at - clock_timestamp()) * 1000000)::bigint
FROM current
WHERE NOT EXISTS (SELECT FROM claimed) AND token IS DISTINCT FROM $2`

	// live is the condition of a token's live claim; $1 is the key and $2
	// the token.
	live = `key = $1 AND token = $2 AND expires_at > clock_timestamp()`

	// completeSQL and releaseSQL end a live claim and, if a waiter marked
	// it, notify the key on the table's channel. They answer how many rows
	// they changed (zero or one) and how many notifications they sent.
	completeSQL = `WITH done AS (
	UPDATE TABLE
	SET token = NULL, record = $3, expires_at = clock_timestamp() + $4::bigint * interval '1 microsecond'
	WHERE ` + live + `
	RETURNING waiting
)
SELECT count(*), count(pg_notify(CHANNEL, $1)) FILTER (WHERE waiting) FROM done`

	releaseSQL = `WITH done AS (
	DELETE FROM TABLE WHERE ` + live + `
	RETURNING waiting
)
SELECT count(*), count(pg_notify(CHANNEL, $1)) FILTER (WHERE waiting) FROM done`

	renewSQL = `UPDATE TABLE
SET expires_at = clock_timestamp() + $3::bigint * interval '1 microsecond'
WHERE ` + live

	// markSQL marks the key's live claim as waited for, and reads its
	// lease left.
	markSQL = `UPDATE TABLE SET waiting = true
WHERE key = $1 AND token IS NOT NULL AND expires_at > clock_timestamp()
RETURNING (extract(epoch FROM expires_at - clock_timestamp()) * 1000000)::bigint`

	inspectSQL = `SELECT token IS NOT NULL, record,
	(extract(epoch FROM expires_at - clock_timestamp()) * 1000000)::bigint
FROM TABLE WHERE key = $1 AND (expires_at IS NULL OR expires_at > clock_timestamp())`

	forgetSQL = `DELETE FROM TABLE WHERE key = $1
RETURNING expires_at IS NULL OR expires_at > clock_timestamp()`

	countSQL = `SELECT count(*) FILTER (WHERE token IS NOT NULL), count(*) FILTER (WHERE token IS NULL)
FROM TABLE WHERE expires_at IS NULL OR expires_at > clock_timestamp()`

	// sweepSQL deletes up to $1 expired rows, skipping those that another
	// transaction holds (a sweep elsewhere, or a claim taking the key
	// over), and checks the expiry again on the row it deletes.
	sweepSQL = `DELETE FROM TABLE WHERE key = ANY(ARRAY(
	SELECT key FROM TABLE WHERE expires_at <= clock_timestamp()
	LIMIT $1 FOR UPDATE SKIP LOCKED
)) AND expires_at <= clock_timestamp()`
)

// maxMicros caps a lease or an expiry: a hundred years is "very long" and
// keeps every timestamp far inside PostgreSQL's range.
const maxMicros = 100 * 366 * 24 * int64(time.Hour/time.Microsecond)

// micros converts d to whole microseconds, rounded up so that a short
// lease never becomes zero, and saturated at maxMicros.
func micros(d time.Duration) int64 {
	us := int64(d / time.Microsecond)
	if d%time.Microsecond > 0 {
		us++
	}
	return min(max(us, 0), maxMicros)
}

// expiryMicros is micros for a record's expiry, nil for zero (never).
func expiryMicros(d time.Duration) any {
	if d == 0 {
		return nil
	}
	return micros(d)
}

// claimAttempts bounds how often Claim sends its statement: a second
// attempt is needed only when a concurrent claim committed between the
// statement's snapshot and its insert, and a third almost never.
const claimAttempts = 5

// errUnsettled is returned when Claim found the key changing under it on
// every attempt.
var errUnsettled = errors.New("pgstore: the key changed during every attempt to claim it")

// queries are the statements with the store's table in place.
type queries struct {
	claim, complete, release, renew, mark, inspect, forget, count, sweep string
}

// Store is an [idempotency.Store] on a PostgreSQL table, through a
// [pgxpool.Pool]. It also implements [idempotency.Waiter],
// [idempotency.TxBinder] (see [Tx]), [idempotency.Inspector],
// [idempotency.Forgetter] and [idempotency.Counter]. It is safe for
// concurrent use, and any number of stores, in any number of processes, may
// share one table.
type Store struct {
	pool      *pgxpool.Pool
	table     string
	logger    *slog.Logger
	batch     int
	poll      time.Duration
	txOptions pgx.TxOptions
	q         queries

	channel  string // the notification channel of the table
	listener listener

	closeOnce  sync.Once
	stop       chan struct{}  // closed by Close
	background sync.WaitGroup // the sweep and the listener
}

var (
	_ idempotency.Store     = (*Store)(nil)
	_ idempotency.Waiter    = (*Store)(nil)
	_ idempotency.TxBinder  = (*Store)(nil)
	_ idempotency.Inspector = (*Store)(nil)
	_ idempotency.Forgetter = (*Store)(nil)
	_ idempotency.Counter   = (*Store)(nil)
)

// New returns a store on pool's database, in the table that [Migrate]
// creates (see [WithTable]). Unless [WithSweepInterval] turns it off, it
// starts a background sweep of expired rows; [Store.Close] stops it. The
// store does not own pool: Close leaves it open, and the caller closes it
// after the store. New panics if pool is nil.
func New(pool *pgxpool.Pool, opts ...Option) *Store {
	if pool == nil {
		panic("pgstore: New: nil pool")
	}
	cfg := newConfig(opts)
	channel := channelOf(cfg.table)
	sql := func(s string) string {
		return strings.NewReplacer("TABLE", cfg.table, "CHANNEL", "'"+channel+"'").Replace(s)
	}
	s := &Store{
		pool:      pool,
		table:     cfg.table,
		logger:    cfg.logger,
		batch:     cfg.sweepBatch,
		poll:      cfg.poll,
		txOptions: cfg.txOptions,
		q: queries{
			claim:    sql(claimSQL),
			complete: sql(completeSQL),
			release:  sql(releaseSQL),
			renew:    sql(renewSQL),
			mark:     sql(markSQL),
			inspect:  sql(inspectSQL),
			forget:   sql(forgetSQL),
			count:    sql(countSQL),
			sweep:    sql(sweepSQL),
		},
		channel: channel,
		stop:    make(chan struct{}),
	}
	if cfg.sweepEvery > 0 {
		s.background.Add(1)
		go s.sweepEvery(cfg.sweepEvery)
	}
	return s
}

// Close stops the background sweep and closes the connection that
// listens for notifications (see [Store.Wait]), and waits for them to end.
// It does not close the pool, which belongs to the caller. Calling it again
// does nothing.
func (s *Store) Close() error {
	s.closeOnce.Do(func() { close(s.stop) })
	s.background.Wait()
	return nil
}

// Claim implements [idempotency.Store] in one statement: an INSERT ... ON
// CONFLICT DO UPDATE that takes a free or expired key (or renews the same
// token's claim), and otherwise reads what the key holds. In the rare case
// that a concurrent claim committed while the statement ran, it is sent
// again.
func (s *Store) Claim(ctx context.Context, key, token string, lease time.Duration) (idempotency.ClaimResult, error) {
	us := micros(lease)
	for range claimAttempts {
		var (
			claimed bool
			record  []byte
			left    *int64
		)
		err := s.pool.QueryRow(ctx, s.q.claim, key, token, us).Scan(&claimed, &record, &left)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			continue // a row committed after the statement's snapshot
		case err != nil:
			return idempotency.ClaimResult{}, fmt.Errorf("pgstore: claim: %w", err)
		case claimed:
			return idempotency.ClaimResult{State: idempotency.StateClaimed}, nil
		case left != nil && *left <= 0:
			continue // expired in the snapshot, taken over since
		case record != nil:
			return idempotency.ClaimResult{State: idempotency.StateCompleted, Record: record}, nil
		default:
			return idempotency.ClaimResult{State: idempotency.StateInFlight, LeaseLeft: durationOf(left)}, nil
		}
	}
	return idempotency.ClaimResult{}, errUnsettled
}

// Complete implements [idempotency.Store] in one statement, an UPDATE that
// compares and sets on the token and the live lease (and notifies the
// key's waiters, if any).
func (s *Store) Complete(ctx context.Context, key, token string, record []byte, expiry time.Duration) error {
	return ended("complete", s.pool.QueryRow(ctx, s.q.complete, key, token, record, expiryMicros(expiry)))
}

// Release implements [idempotency.Store] in one statement, a DELETE that
// compares on the token and the live lease (and notifies the key's
// waiters, if any).
func (s *Store) Release(ctx context.Context, key, token string) error {
	return ended("release", s.pool.QueryRow(ctx, s.q.release, key, token))
}

// Renew implements [idempotency.Store] in one statement, an UPDATE that
// compares and sets on the token and the live lease.
func (s *Store) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	tag, err := s.pool.Exec(ctx, s.q.renew, key, token, micros(lease))
	if err != nil {
		return fmt.Errorf("pgstore: renew: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return idempotency.ErrNotHeld
	}
	return nil
}

// ended reads the answer of a statement that ends a claim: no row changed
// means the token holds no live claim.
func ended(op string, row pgx.Row) error {
	var changed, notified int64
	if err := row.Scan(&changed, &notified); err != nil {
		return fmt.Errorf("pgstore: %s: %w", op, err)
	}
	if changed == 0 {
		return idempotency.ErrNotHeld
	}
	return nil
}

// Inspect implements [idempotency.Inspector] in one statement.
func (s *Store) Inspect(ctx context.Context, key string) (idempotency.Entry, error) {
	var (
		claim  bool
		record []byte
		left   *int64
	)
	err := s.pool.QueryRow(ctx, s.q.inspect, key).Scan(&claim, &record, &left)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return idempotency.Entry{}, nil
	case err != nil:
		return idempotency.Entry{}, fmt.Errorf("pgstore: inspect: %w", err)
	case claim:
		return idempotency.Entry{State: idempotency.StateInFlight, TTL: durationOf(left)}, nil
	default:
		return idempotency.Entry{State: idempotency.StateCompleted, TTL: durationOf(left), Record: record}, nil
	}
}

// Forget implements [idempotency.Forgetter] in one statement. A holder
// whose claim it deleted can no longer complete it: the holder's writes in
// [Tx] roll back, and its client is told to retry.
func (s *Store) Forget(ctx context.Context, key string) (bool, error) {
	var wasLive bool
	err := s.pool.QueryRow(ctx, s.q.forget, key).Scan(&wasLive)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("pgstore: forget: %w", err)
	}
	return wasLive, nil
}

// Count implements [idempotency.Counter] in one statement, which reads the
// whole table (an index-only scan where the visibility map allows it).
func (s *Store) Count(ctx context.Context) (idempotency.Counts, error) {
	var c idempotency.Counts
	if err := s.pool.QueryRow(ctx, s.q.count).Scan(&c.Claims, &c.Records); err != nil {
		return idempotency.Counts{}, fmt.Errorf("pgstore: count: %w", err)
	}
	return c, nil
}

// Sweep deletes the expired claims and records, in statements of at most
// [WithSweepBatch] rows each, until one deletes fewer than that, and
// returns how many rows it deleted. Each statement locks only the rows it
// deletes and skips rows that another transaction holds, so sweeps on
// several instances and the store's other statements do not wait for each
// other. Expired rows already count as absent; sweeping only reclaims their
// space.
func (s *Store) Sweep(ctx context.Context) (int, error) {
	total := 0
	for {
		tag, err := s.pool.Exec(ctx, s.q.sweep, s.batch)
		if err != nil {
			return total, fmt.Errorf("pgstore: sweep: %w", err)
		}
		n := int(tag.RowsAffected())
		total += n
		if n < s.batch {
			return total, nil
		}
	}
}

func (s *Store) sweepEvery(d time.Duration) {
	defer s.background.Done()
	ticker := time.NewTicker(d)
	defer ticker.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-ticker.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), d)
		go func() {
			// Close must not wait for a sweep on a slow database.
			select {
			case <-s.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		if _, err := s.Sweep(ctx); err != nil && ctx.Err() == nil {
			s.logger.LogAttrs(ctx, slog.LevelWarn, "pgstore: sweeping expired rows failed",
				slog.String("table", s.table), slog.Any("error", err))
		}
		cancel()
	}
}

// durationOf converts microseconds left to a duration, zero for none or
// for a null (never).
func durationOf(us *int64) time.Duration {
	if us == nil || *us <= 0 {
		return 0
	}
	if *us > math.MaxInt64/int64(time.Microsecond) {
		return math.MaxInt64
	}
	return time.Duration(*us) * time.Microsecond
}
