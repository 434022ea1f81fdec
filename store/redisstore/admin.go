package redisstore

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemkey/idempotency"
)

// scanCount is the COUNT hint of each SCAN that [Store.Count] sends: how
// many keys Redis looks at per call, so that no call holds Redis for long.
const scanCount = 1000

var (
	//go:embed inspect.lua
	inspectLua    string
	inspectScript = redis.NewScript(inspectLua)

	//go:embed forget.lua
	forgetLua    string
	forgetScript = redis.NewScript(forgetLua)
)

var (
	_ idempotency.Inspector = (*Store)(nil)
	_ idempotency.Forgetter = (*Store)(nil)
	_ idempotency.Counter   = (*Store)(nil)
)

// Inspect reports what key holds, read from Redis in one round trip
// (never from the local cache): a live claim with its lease left, a record
// with its time left (zero when it has no expiry) and its bytes, or
// nothing. It changes nothing. A key that holds a value this package did not
// write is an error.
func (s *Store) Inspect(ctx context.Context, key string) (idempotency.Entry, error) {
	reply, err := inspectScript.Run(ctx, s.client, []string{s.prefix + key}).Result()
	if err != nil {
		return idempotency.Entry{}, fmt.Errorf("redisstore: inspect: %w", err)
	}
	e, err := decodeInspect(reply)
	if err != nil {
		return idempotency.Entry{}, fmt.Errorf("redisstore: inspect: %w", err)
	}
	return e, nil
}

// decodeInspect reads the answer of the inspect script: {} for nothing,
// {value, pttl} otherwise.
func decodeInspect(reply any) (idempotency.Entry, error) {
	values, ok := reply.([]any)
	if !ok {
		return idempotency.Entry{}, errBadReply
	}
	if len(values) == 0 {
		return idempotency.Entry{}, nil
	}
	if len(values) != 2 {
		return idempotency.Entry{}, errBadReply
	}
	v, _ := values[0].(string)
	pttl, ok := values[1].(int64)
	if v == "" || !ok || pttl < -1 {
		return idempotency.Entry{}, errBadReply
	}
	// No TTL (-1) is a record that never expires, or a claim that this
	// package did not write, whose lease left is unknown: zero for both.
	// Centuries saturate rather than overflow.
	ttl := time.Duration(min(max(pttl, 0), math.MaxInt64/int64(time.Millisecond))) * time.Millisecond
	switch v[0] {
	case tagClaim, tagMarked:
		return idempotency.Entry{State: idempotency.StateInFlight, TTL: ttl}, nil
	case tagRecord:
		return idempotency.Entry{State: idempotency.StateCompleted, TTL: ttl, Record: []byte(v[1:])}, nil
	}
	return idempotency.Entry{}, fmt.Errorf("%w: the key holds neither a claim nor a record", errBadReply)
}

// Forget deletes key's claim or record in one round trip, and reports
// whether there was one. A waiter on a forgotten claim is woken, and the
// claim's former holder can no longer complete, release or renew it. With
// [WithLocalCache], this store drops the key from its own cache; other
// stores' caches keep replaying a forgotten record until their entry ends
// (see [WithLocalCache]).
func (s *Store) Forget(ctx context.Context, key string) (bool, error) {
	if s.cache != nil {
		// Before and after Redis: a claim that read the record just
		// before it was deleted may have cached it meanwhile.
		s.cache.drop(key)
	}
	n, err := forgetScript.Run(ctx, s.client, []string{s.prefix + key}, s.channel).Int64()
	if err != nil {
		return false, fmt.Errorf("redisstore: forget: %w", err)
	}
	if s.cache != nil {
		s.cache.drop(key)
	}
	return n == 1, nil
}

// Count returns how many claims and records the store's prefix holds. It
// walks the keys with SCAN, MATCH the prefix and COUNT 1000, and reads each
// key's one-byte tag, pipelined per SCAN batch; on a Cluster it walks every
// master, on a Ring every shard. It never blocks Redis for long, but on a
// large keyspace it takes many round trips, and like SCAN it counts a key
// that appears or disappears meanwhile, or that Redis moves while rehashing,
// zero times, once or (rarely) twice. Keys under the prefix that hold
// values this package did not write are not counted. With the empty
// prefix, every key of the database is looked at.
func (s *Store) Count(ctx context.Context) (idempotency.Counts, error) {
	var (
		mu    sync.Mutex
		total idempotency.Counts
	)
	count := func(ctx context.Context, node redis.Cmdable) error {
		c, err := s.countNode(ctx, node)
		mu.Lock()
		total.Claims += c.Claims
		total.Records += c.Records
		mu.Unlock()
		return err
	}
	var err error
	switch c := s.client.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			return count(ctx, node)
		})
	case *redis.Ring:
		err = c.ForEachShard(ctx, func(ctx context.Context, node *redis.Client) error {
			return count(ctx, node)
		})
	default:
		err = count(ctx, s.client)
	}
	if err != nil {
		return idempotency.Counts{}, fmt.Errorf("redisstore: count: %w", err)
	}
	return total, nil
}

// countNode counts the claims and records under the prefix on one server.
func (s *Store) countNode(ctx context.Context, node redis.Cmdable) (idempotency.Counts, error) {
	var c idempotency.Counts
	pattern := escapeGlob(s.prefix) + "*"
	var cursor uint64
	for {
		keys, next, err := node.Scan(ctx, cursor, pattern, scanCount).Result()
		if err != nil {
			return c, err
		}
		if len(keys) > 0 {
			cmds, _ := node.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, k := range keys {
					p.GetRange(ctx, k, 0, 0)
				}
				return nil
			})
			for _, cmd := range cmds {
				tag, err := cmd.(*redis.StringCmd).Result()
				var rerr redis.Error
				switch {
				case errors.As(err, &rerr):
					continue // not a string: someone else's key
				case err != nil:
					return c, err
				case tag == "":
					continue // expired since SCAN saw it
				}
				switch tag[0] {
				case tagClaim, tagMarked:
					c.Claims++
				case tagRecord:
					c.Records++
				}
			}
		}
		if next == 0 {
			return c, nil
		}
		cursor = next
	}
}

// escapeGlob escapes the characters that SCAN's MATCH reads as a pattern,
// so that the prefix matches only itself.
func escapeGlob(s string) string {
	if !strings.ContainsAny(s, `*?[]\`) {
		return s
	}
	var b strings.Builder
	for i := range len(s) {
		if strings.IndexByte(`*?[]\`, s[i]) >= 0 {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// drop removes key's entry, if any.
func (c *localCache) drop(key string) {
	s := c.shard(key)
	s.mu.Lock()
	delete(s.entries, key)
	s.mu.Unlock()
}
