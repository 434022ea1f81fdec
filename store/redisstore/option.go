package redisstore

import (
	"log/slog"
	"strconv"
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
	prefix       string
	logger       *slog.Logger
	poll         time.Duration
	cacheEntries int
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

// WithLocalCache keeps up to maxEntries completed records in the process, so
// that a replay of a key whose record the store has in its cache costs no
// round trip to Redis at all. A completed record cannot change until it
// expires, so the cache needs no invalidation: the store adds a record when
// [Store.Complete] stores it or when [Store.Claim] finds it, and [Store.Claim]
// answers from the cache while the entry lasts. Records larger than 64 KiB
// are not cached, so the cache holds at most maxEntries times 64 KiB of
// records. When it is full, a new record takes the place of one of a few
// sampled at random: an ended one, or else the least recently used. It
// panics if maxEntries is not positive.
//
// An entry ends no later than its record does in Redis: its time to live,
// which Redis reports, is counted on the local monotonic clock from when
// the request that learned it was sent, before Redis began to count. Redis's
// clock decides when a record expires; the cache can only let an entry end
// earlier, by up to a round trip (or more if the two clocks run at different
// rates), after which the next claim asks Redis again.
//
// The trade-off: a record that leaves Redis before its expiry (deleted by
// hand, evicted under maxmemory, lost in a failover) is still replayed from
// the cache of every store that holds it, until its expiry, even if another
// request has since run under the key again.
//
// By default, there is no local cache: every claim is a round trip.
func WithLocalCache(maxEntries int) Option {
	if maxEntries <= 0 {
		panic("redisstore: WithLocalCache: maxEntries must be positive, got " + strconv.Itoa(maxEntries))
	}
	return optionFunc(func(c *config) { c.cacheEntries = maxEntries })
}
