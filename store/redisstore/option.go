package redisstore

import (
	"log/slog"
	"time"
)

const (
	// DefaultPrefix is the key prefix used without [WithPrefix].
	DefaultPrefix = "idempotency:"
	// DefaultPollInterval is the fallback poll used without [WithPollInterval].
	DefaultPollInterval = 5 * time.Second
)

// An Option configures a [Store].
type Option interface {
	apply(*config)
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

type config struct {
	prefix string
	logger *slog.Logger
	poll   time.Duration
}

// WithPrefix sets the string put before every storage key to form the Redis
// key. The empty prefix is allowed: the storage keys are then used as they
// are. A prefix with a hash tag ("{idem}:") puts every key in one Cluster
// slot, and so on one node; without one, keys spread over the slots. Stores
// that share a Redis share their claims and records exactly when their
// prefixes are equal.
//
// By default, the prefix is "idempotency:".
func WithPrefix(prefix string) Option {
	return optionFunc(func(c *config) { c.prefix = prefix })
}

// WithLogger sets the logger for the store's own events: the client's
// ContextTimeoutEnabled being off, and the wake-up subscription being lost
// or restored. It never logs keys. It panics if logger is nil.
//
// By default, the store logs to [slog.Default].
func WithLogger(logger *slog.Logger) Option {
	if logger == nil {
		panic("redisstore: WithLogger: nil logger")
	}
	return optionFunc(func(c *config) { c.logger = logger })
}

// WithPollInterval sets the longest time [Store.Wait] waits for a wake-up
// message before it returns anyway, so that its caller looks at the key
// again. It only matters when a message is lost, or never sent: with a
// [redis.Ring], whose shards do not share messages, or while the
// subscription is down. A waiting duplicate sends two commands per interval
// at most, so a long interval keeps waiting cheap. It panics if d is not
// positive.
//
// By default, the interval is [DefaultPollInterval], 5 s.
func WithPollInterval(d time.Duration) Option {
	if d <= 0 {
		panic("redisstore: WithPollInterval: interval must be positive, got " + d.String())
	}
	return optionFunc(func(c *config) { c.poll = d })
}
