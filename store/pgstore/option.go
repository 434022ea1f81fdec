package pgstore

import (
	"log/slog"
	"regexp"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	// DefaultTable is the table used without [WithTable].
	DefaultTable = "idempotency"
	// DefaultSweepInterval is how often the store deletes expired rows
	// without [WithSweepInterval].
	DefaultSweepInterval = time.Minute
	// DefaultSweepBatch is how many rows one sweep statement deletes at
	// most without [WithSweepBatch].
	DefaultSweepBatch = 1000
	// DefaultPollInterval is the longest a waiting duplicate waits for a
	// notification without [WithPollInterval].
	DefaultPollInterval = time.Second
)

// An Option configures a [Store], and [Migrate] and [Schema] for the options
// that name the table.
type Option interface {
	apply(*config)
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

type config struct {
	table      string
	logger     *slog.Logger
	sweepEvery time.Duration
	sweepBatch int
	poll       time.Duration
	txOptions  pgx.TxOptions
}

func newConfig(opts []Option) config {
	c := config{
		table:      DefaultTable,
		logger:     slog.Default(),
		sweepEvery: DefaultSweepInterval,
		sweepBatch: DefaultSweepBatch,
		poll:       DefaultPollInterval,
	}
	for _, opt := range opts {
		opt.apply(&c)
	}
	return c
}

// identifier is a table name that needs no quoting: lower case letters,
// digits and underscores, with an optional schema before a dot.
var identifier = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}(\.[a-z_][a-z0-9_]{0,62})?$`)

// WithTable sets the table that holds the claims and records, optionally
// qualified by its schema ("app.idempotency"). Stores that share a database
// share their claims and records exactly when their tables are the same.
// Pass the same option to [Migrate] or [Schema]. It panics if name is not a
// lower-case SQL identifier (letters, digits and underscores, at most 63
// bytes, not starting with a digit), optionally preceded by one.
//
// By default, the table is "idempotency", in the connection's search path.
func WithTable(name string) Option {
	if !identifier.MatchString(name) {
		panic("pgstore: WithTable: " + strconv.Quote(name) + " is not a lower-case SQL identifier " +
			"(letters a-z, digits, underscores; at most 63 bytes; optionally schema.table)")
	}
	return optionFunc(func(c *config) { c.table = name })
}

// WithLogger sets the logger for the store's own events: a background sweep
// that failed. It never logs keys. It panics if logger is nil.
//
// By default, the store logs to [slog.Default].
func WithLogger(logger *slog.Logger) Option {
	if logger == nil {
		panic("pgstore: WithLogger: nil logger")
	}
	return optionFunc(func(c *config) { c.logger = logger })
}

// WithSweepInterval sets how often the store deletes expired claims and
// records in the background, in batches (see [Store.Sweep]); zero turns the
// background sweep off, for applications that call [Store.Sweep]
// themselves. Every store sweeps, and several stores on one table sweep
// without waiting for each other. [Store.Close] stops the sweep. It panics
// if d is negative.
//
// By default, the interval is [DefaultSweepInterval], one minute.
func WithSweepInterval(d time.Duration) Option {
	if d < 0 {
		panic("pgstore: WithSweepInterval: interval must not be negative, got " + d.String())
	}
	return optionFunc(func(c *config) { c.sweepEvery = d })
}

// WithSweepBatch sets how many expired rows one statement of
// [Store.Sweep] deletes at most, which bounds how long it holds their row
// locks. It panics if n is not positive.
//
// By default, a batch is [DefaultSweepBatch], 1000 rows.
func WithSweepBatch(n int) Option {
	if n <= 0 {
		panic("pgstore: WithSweepBatch: batch size must be positive, got " + strconv.Itoa(n))
	}
	return optionFunc(func(c *config) { c.sweepBatch = n })
}

// WithPollInterval sets the longest time [Store.Wait] waits for a
// notification before it returns anyway, so that its caller looks at the
// key again. It only matters when a notification is lost, or while the
// listening connection is down. A waiting duplicate sends two statements
// per interval at most (the engine's claim and the next Wait's mark). It
// panics if d is not positive.
//
// By default, the interval is [DefaultPollInterval], 1 s.
func WithPollInterval(d time.Duration) Option {
	if d <= 0 {
		panic("pgstore: WithPollInterval: interval must be positive, got " + d.String())
	}
	return optionFunc(func(c *config) { c.poll = d })
}

// WithTxOptions sets the options of the transactions that [Tx] begins for
// handlers, such as their isolation level. Under REPEATABLE READ or
// SERIALIZABLE, a conflict with another transaction can make the final
// write of the record fail: the transaction then rolls back and the client
// is told to retry, as for any failed commit.
//
// By default, transactions have the server's default options (READ
// COMMITTED, unless the server is configured otherwise).
func WithTxOptions(opts pgx.TxOptions) Option {
	return optionFunc(func(c *config) { c.txOptions = opts })
}
