package loadtest

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/internal/redistest"
	"github.com/idemkey/idempotency/store/redisstore"
)

// Expiry is the records' expiry on Redis, on the guarded and the baseline
// paths alike: short, so that Redis lets go of them soon after a run.
const Expiry = time.Minute

// localCacheEntries bounds the local cache of ReplayLocalCache, which
// holds the hot keys many times over.
const localCacheEntries = 1000

// Redis is the benchmarks' Redis, the one that package redistest finds or
// starts, seen through a client of its own. It is safe for concurrent use.
type Redis struct {
	// Client is the client of the stores and of the baseline alike, so
	// that both have the same pool and options.
	Client *redis.Client
}

// NewRedis returns a client of the benchmarks' Redis with poolSize
// connections at most and ContextTimeoutEnabled, closed when b ends.
func NewRedis(b *testing.B, poolSize int) *Redis {
	b.Helper()
	return &Redis{Client: redistest.NewClient(b, &redis.Options{Addr: redistest.Addr(b), PoolSize: poolSize})}
}

// Store returns a redisstore configured by opts, under a key prefix of its
// own whose keys are deleted when b ends, and closed then.
func (r *Redis) Store(b *testing.B, opts ...redisstore.Option) *redisstore.Store {
	b.Helper()
	s, _ := r.store(b, opts...)
	return s
}

func (r *Redis) store(b *testing.B, opts ...redisstore.Option) (*redisstore.Store, string) {
	b.Helper()
	prefix := redistest.Prefix(b, r.Client)
	s := redisstore.New(r.Client, append([]redisstore.Option{redisstore.WithPrefix(prefix)}, opts...)...)
	b.Cleanup(func() { _ = s.Close() })
	return s, prefix
}

// Options returns the library's options for a store on Redis.
func (r *Redis) Options() []idempotency.Option {
	// A long store timeout lets an overloaded machine slow a run down
	// rather than fail it with 503s: the baseline has no timeout either.
	return []idempotency.Option{quiet, idempotency.WithExpiry(Expiry), idempotency.WithStoreTimeout(time.Minute)}
}

// Backend returns the backend of redisstore on r, whose parallel families
// send requests from clients goroutines, with a Baseline and a
// ReplayLocalCache.
func (r *Redis) Backend(clients int) Backend {
	return Backend{
		NewStore:   func(b *testing.B) idempotency.Store { return r.Store(b) },
		Options:    r.Options(),
		Baseline:   r.Baseline,
		LocalCache: func(b *testing.B) idempotency.Store { return r.Store(b, redisstore.WithLocalCache(localCacheEntries)) },
		Clients:    clients,
	}
}

// Baseline returns two plain round trips with the sizes of w's first
// execution on redisstore: a GET of the key, as a claim finds it free, and
// a SET of a record-sized value with [Expiry], as a completion stores it.
// The keys are under a prefix of their own, deleted when b ends. A fresh
// key is the only one it accepts.
func (r *Redis) Baseline(b *testing.B, w *Workload) RoundTrips {
	b.Helper()
	keyLen, valueLen := r.recordShape(b, w)
	prefix := redistest.Prefix(b, r.Client)
	pad := strings.Repeat("x", keyLen)
	value := bytes.Repeat([]byte{'d'}, valueLen)
	c := r.Client
	return func(ctx context.Context, key string) error {
		if n := len(prefix) + len(key); n < keyLen {
			key = prefix + key + pad[:keyLen-n]
		} else {
			key = prefix + key
		}
		switch err := c.Get(ctx, key).Err(); {
		case err == nil:
			return errors.New("loadtest: the baseline's GET found a value under a fresh key")
		case !errors.Is(err, redis.Nil):
			return err
		}
		return c.Set(ctx, key, value, Expiry).Err()
	}
}

// recordShape runs one first execution of w on redisstore and returns the
// length of the Redis key and of the value it stored.
func (r *Redis) recordShape(b *testing.B, w *Workload) (keyLen, valueLen int) {
	b.Helper()
	s, prefix := r.store(b)
	var buf []byte
	if err := w.Serve(b.Context(), w.Guard(s, r.Options()...), w.key(&buf, 0), false); err != nil {
		b.Fatal(err)
	}
	ctx := b.Context()
	found, err := r.Client.Keys(ctx, prefix+"*").Result()
	if err != nil || len(found) != 1 {
		b.Fatalf("loadtest: the record's key: %v %v", found, err)
	}
	n, err := r.Client.StrLen(ctx, found[0]).Result()
	if err != nil {
		b.Fatal(err)
	}
	return len(found[0]), int(n)
}
